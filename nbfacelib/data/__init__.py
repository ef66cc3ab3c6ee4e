"""Data: synthetic faces, image folders, RecordIO, verification pair sets, manifests.

Every reader yields ``(uint8 tensor (3, H, W) RGB, int label)``; ``open_dataset(uri)`` picks
the reader from a URI (``folder:``, ``rec:``, ``synthetic:``, a manifest name or a path).
The names below are re-exported lazily (PEP 562), so ``import nbfacelib.data`` and the
manifest tools do not import torch or PIL until a reader is used.

A corrupt or damaged file fails with its reader's error, whose message names the file (and
the byte offset, line or record where there is one): :class:`RecordIOError`,
:class:`PairSetError`, :class:`ImageError` (undecodable image), :class:`ManifestError`; all
are ``ValueError``. A data set that is absent or altered raises ``DatasetNotFoundError`` /
``DatasetIntegrityError``. ``tests/test_fuzz_readers.py`` holds every reader to this.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "open_dataset": "datasets",
    "convert_dataset": "datasets",
    "describe": "datasets",
    "FolderDataset": "folder",
    "ImageError": "folder",
    "fit_square": "folder",
    "write_image_folder": "folder",
    "DatasetIntegrityError": "manifest",
    "DatasetNotFoundError": "manifest",
    "ManifestError": "manifest",
    "list_manifests": "manifest",
    "load_manifest": "manifest",
    "verify": "manifest",
    "IRHeader": "recordio",
    "RecDataset": "recordio",
    "RecordIOError": "recordio",
    "RecordIOReader": "recordio",
    "RecordIOWriter": "recordio",
    "pack": "recordio",
    "unpack": "recordio",
    "write_image_rec": "recordio",
    "data_root": "root",
    # other helpers' modules, re-exported here so that users find one entry point
    "SyntheticFaces": "synthetic",
    "PairSet": "pairs",
    "PairSetError": "pairs",
    "load_pairs": "pairs",
    "save_pairs": "pairs",
    "make_pair_set": "pairs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

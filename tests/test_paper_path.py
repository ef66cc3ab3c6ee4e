"""The paper preset's code path, tested small.

The paper preset trains on MS1MV2 (InsightFace RecordIO) and validates on LFW / CFP-FP /
AgeDB-30 ``.bin`` files, none of which can be fetched here. So a miniature data root is built
with the package's own writers, laid out where the manifests expect the real files
(``faces_emore/train.rec`` + ``train.idx``, ``faces_emore/lfw.bin``, ...): 50 synthetic
identities as an InsightFace ``.rec`` and three small pair sets of other identities. Notebook 01
then runs at ``--preset paper`` through ``nbface run`` with tiny overrides. A researcher who
copies the real files into place runs the same code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from nbfacelib.cli import main

REPO = Path(__file__).resolve().parents[1]
PAIR_SETS = ("lfw", "cfp_fp", "agedb_30")


def make_paper_root(root: Path, ids: int = 50, per_id: int = 4, pair_ids: int = 20, pairs: int = 40) -> Path:
    """A data root with ``ms1mv2`` (``ids`` x ``per_id`` synthetic faces as an InsightFace
    ``.rec``) and ``lfw`` / ``cfp_fp`` / ``agedb_30`` (``pairs`` pairs of ``pair_ids`` other
    identities each), where their manifests look for them."""
    from nbfacelib.data import convert_dataset
    from nbfacelib.data.manifest import load_manifest
    from nbfacelib.data.pairs import make_pair_set, save_pairs
    from nbfacelib.data.synthetic import SyntheticFaces

    train = f"synthetic:ids={ids},per_id={per_id},seed=0"
    convert_dataset(train, root / load_manifest("ms1mv2").location / "train.rec")
    start = SyntheticFaces(ids, per_id).heldout(pair_ids).identity_offset
    for k, name in enumerate(PAIR_SETS):
        faces = SyntheticFaces(pair_ids, per_id, identity_offset=start + k * pair_ids, difficulty="easy")
        ps = make_pair_set(faces, pairs, seed=k)
        m = load_manifest(name)  # a protocol manifest (lfw, cfp_fp) takes a ready .bin as an alternative
        save_pairs(
            root / (m.location if m.format == "pairs-bin" else m.alternatives[0]), ps.images, ps.issame
        )
    return root


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory) -> Path:
    return make_paper_root(tmp_path_factory.mktemp("paper_root"))


def test_miniature_root_is_where_the_manifests_look(paper_root, monkeypatch):
    from nbfacelib.data import open_dataset
    from nbfacelib.data.manifest import verify
    from nbfacelib.data.pairs import load_pairs
    from nbfacelib.data.recordio import RecDataset

    monkeypatch.setenv("NBFACELIB_DATA", str(paper_root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real sets' counts differ: warnings, not failures
        for name in ("ms1mv2", *PAIR_SETS):
            report = verify(name, deep=True)
            assert report.ok and report.path is not None, str(report)
    rec = open_dataset("ms1mv2")
    assert isinstance(rec, RecDataset) and rec.kind == "insightface"  # header record 0
    assert rec.num_classes == 50 and len(rec) == 200 and rec[0][0].shape == (3, 112, 112)
    assert all(len(load_pairs(paper_root / "faces_emore" / f"{n}.bin")) == 40 for n in PAIR_SETS)


# slow: about 2 CPU-minutes (kernel start, four 2-step trainings, every figure and the HTML
# report), measured 126 s user+sys for this file on a loaded 2-core machine; `pytest -m slow`.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_01_runs_at_the_paper_preset(paper_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NBFACELIB_DATA", str(paper_root))
    tiny = {
        "c13_vectors": "2000",
        "backbone": "ir_tiny",
        "small_backbone": "mbf_tiny",
        "steps": "2",
        "batch_size": "16",
        "input_size": "32",
        "embedding_size": "32",
        "eval_ids": "20",
        "eval_per_id": "4",
        "eval_pairs": "40",
        "orl_pairs": "40",
        "embedding_map": "pca",
        "torch_threads": "1",
        "device": "cpu",
    }
    argv = ["run", str(REPO / "notebooks" / "01_arcface_margins.ipynb"), "--preset", "paper"]
    argv += ["--out", str(tmp_path)]
    for name, value in tiny.items():
        argv += ["-p", name, value]
    rc = main(argv)
    entry = json.loads((tmp_path / "paper" / "metrics.json").read_text())["01_arcface_margins"]
    assert rc == 0 and entry["status"] == "ok", entry.get("error")
    assert entry["parameters"]["train_data"] == "ms1mv2"  # the preset's data, not overridden
    assert entry["parameters"]["val_bins"] == list(PAIR_SETS)
    page = (tmp_path / "paper" / "01_arcface_margins.html").read_text()
    assert all(f"<b>{name}</b>" in page for name in PAIR_SETS)  # each .bin was evaluated

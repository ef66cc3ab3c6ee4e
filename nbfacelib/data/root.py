"""Where data sets live: the data root, and the copies shipped with the package.

``NBFACELIB_DATA`` names the data root; without it, ``~/.nbfacelib/data``. Data sets small
enough to ship (the ORL faces) also live inside the package (:func:`bundled_root`), so a
checkout or a wheel needs nothing beside it; a copy under the data root takes precedence.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "NBFACELIB_DATA"
DEFAULT_ROOT = Path("~/.nbfacelib/data")


def data_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env or DEFAULT_ROOT).expanduser()


def bundled_root() -> Path:
    """The folder of data sets shipped inside the package (``nbfacelib/data/bundled``)."""
    return Path(__file__).resolve().parent / "bundled"

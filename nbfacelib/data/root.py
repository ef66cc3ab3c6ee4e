"""Where data sets live: the data root.

``NBFACELIB_DATA`` names it. Without it we look for ``../shared/data`` beside the checkout
(how CI and the developers' machines are laid out), then ``~/.nbfacelib/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "NBFACELIB_DATA"


def data_root() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    beside = repo.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    return Path.home() / ".nbfacelib" / "data"

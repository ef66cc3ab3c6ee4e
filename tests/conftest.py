import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Tests find the ORL faces through the data root, as users do.
    os.environ.setdefault("NBFACELIB_DATA", str(REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def orl_root() -> Path:
    from nbfacelib.data.root import data_root

    root = data_root() / "orl_faces"
    if not root.is_dir():
        pytest.fail(f"ORL faces not found at {root}; set NBFACELIB_DATA")
    return root

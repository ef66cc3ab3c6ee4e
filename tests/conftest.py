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
        # the marker, not `"gpu" in item.keywords`: keywords also hold the names of the folders
        # above the test (a checkout in a folder named gpu skipped every test)
        if item.get_closest_marker("gpu") is not None and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def orl_root() -> Path:
    from nbfacelib.data.root import data_root

    root = data_root() / "orl_faces"
    if not root.is_dir():
        pytest.fail(f"ORL faces not found at {root}; set NBFACELIB_DATA")
    return root


@pytest.fixture(scope="session")
def selftest_reports(tmp_path_factory) -> tuple[Path, int]:
    """(reports/<preset> folder, exit code) of ``nbface run`` on the engine self-test notebook,
    run once per session and shared by the report, notebook and browser tests (kernel start-up
    costs seconds)."""
    out = tmp_path_factory.getbasetemp() / "engine_selftest_reports"
    rc_file = out / "rc"
    if not rc_file.exists():
        from nbfacelib.cli import main

        selftest = REPO / "tests" / "data" / "engine_selftest.ipynb"
        rc = main(["run", str(selftest), "--preset", "smoke", "--out", str(out), "-p", "n_vectors", "500"])
        rc_file.write_text(str(rc))
    return out / "smoke", int(rc_file.read_text())

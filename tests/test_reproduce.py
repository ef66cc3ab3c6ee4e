"""``nbface reproduce`` as a user lives it: progress per cell, notebooks chosen by number or
name, parallel jobs with the same verdicts as one job, ``--resume``, provenance in each
report, and a figure returned to ``interactive`` drawn once."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nbfacelib.report.progress import NotebookProgress, tqdm_widget_text
from nbfacelib.report.runner import _job_env, select_notebooks

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ progress
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_log_lines_for_a_file():
    out, clock = io.StringIO(), Clock()
    p = NotebookProgress("nb", out, tty=False, interval=30, clock=clock)
    p.start(3)
    clock.t = 5
    p.cell_start(1, "\n\nimport numpy as np\nx = 1")
    # a text bar on stderr, redrawn with \r: one line, in its final state, when it ends
    p.write("stderr", "train:  10%|#  | 1/10\r")
    clock.t = 20
    p.write("stderr", "train:  50%|#####  | 5/10\r")  # < 30 s since the last shown: not shown
    clock.t = 40
    p.write("stderr", "train:  60%|######  | 6/10\r")  # 35 s since: the running state is shown
    p.write("stderr", "train: 100%|##########| 10/10\n")
    p.write("stdout", "  r18 arcface seed 0: loss 9.1 -> 4.2\n\n")  # a run's summary; blank lines dropped
    p.max_lines_per_cell = 3
    for i in range(5):
        p.write("stdout", f"row {i}\n")  # a long print: capped per cell
    clock.t = 75
    p.cell_start(2, "fit(" + "x" * 80 + ")")
    p.widget("eval 100% 3/3 [00:01<00:00]", done=True)
    p.widget("eval 100% 3/3 [00:01<00:00]", done=True)  # the closing update: not repeated
    p.close("nb: ok in 80 s")
    assert out.getvalue().splitlines() == [
        "    cell 1/3 at 0:05: import numpy as np",
        "    | train:  10%|#  | 1/10",
        "    | train:  60%|######  | 6/10",
        "    | train: 100%|##########| 10/10",
        "    | r18 arcface seed 0: loss 9.1 -> 4.2",
        "    | row 0",
        "    | ... (more output of cell 1 in the report)",
        "    cell 2/3 at 1:15: fit(" + "x" * 53 + "...",
        "    | eval 100% 3/3 [00:01<00:00]",
        "    nb: ok in 80 s",
    ]
    assert "\r" not in out.getvalue()


def test_progress_status_line_on_a_terminal():
    out, clock = io.StringIO(), Clock()
    p = NotebookProgress("nb", out, tty=True, clock=clock)
    p.n_cells = 4  # (start() would also start the 1 s redraw thread)
    clock.t = 125
    p.cell_start(2, "x = 1")
    p.write("stderr", "train:  40%|####  | 4/10\r")
    text = out.getvalue()
    assert text.endswith("\r    cell 2/4  2:05  train:  40%|####  | 4/10")
    assert "\n" not in text  # redrawn in place
    p.close()
    assert out.getvalue().endswith("\r")


def test_tqdm_widget_state_is_read():
    state = {
        "box": {"_model_name": "HBoxModel", "children": ["IPY_MODEL_d", "IPY_MODEL_b", "IPY_MODEL_m"]},
        "d": {"_model_name": "HTMLModel", "value": "train"},
        "b": {"_model_name": "FloatProgressModel", "value": 30, "max": 120, "bar_style": ""},
        "m": {"_model_name": "HTMLModel", "value": "&nbsp;30/120 [00:03&lt;00:09, 9.8step/s]"},
        "other": {"_model_name": "FloatSliderModel", "value": 1},
    }
    assert tqdm_widget_text(state, "b") == ("train 25% 30/120 [00:03<00:09, 9.8step/s]", False)
    state["d"]["value"] = "train: 100%"  # tqdm.notebook: the percentage is in the description
    state["b"].update(value=120, bar_style="success")  # set by close(), after the last text
    assert tqdm_widget_text(state, "m") == ("train: 100% 30/120 [00:03<00:09, 9.8step/s]", True)
    assert tqdm_widget_text(state, "other") is None


# ------------------------------------------------------------------------------ selection
def test_select_notebooks_by_number_and_name(tmp_path):
    nbs = [tmp_path / f"{n}.ipynb" for n in ("01_a", "02_b", "03_c", "10_d", "x_tool")]
    assert select_notebooks(nbs) == nbs
    assert [p.stem for p in select_notebooks(nbs, ["03", "1", "x_tool"])] == ["01_a", "03_c", "x_tool"]
    assert [p.stem for p in select_notebooks(nbs, ["10_d.ipynb"])] == ["10_d"]
    assert [p.stem for p in select_notebooks(nbs, None, ["2", "10"])] == ["01_a", "03_c", "x_tool"]
    assert [p.stem for p in select_notebooks(nbs, ["01", "02"], ["02_b"])] == ["01_a"]
    with pytest.raises(ValueError, match=r"--only: no notebook named or numbered '07' \(have: 01_a, 02_b"):
        select_notebooks(nbs, ["07"])
    with pytest.raises(ValueError, match=r"--skip: no notebook named or numbered 'zz'"):
        select_notebooks(nbs, None, ["zz"])


def test_job_env_pins_gpus_and_divides_threads(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert _job_env(0, 1, None) == {}
    assert _job_env(3, 2, ["0", "1"]) == {
        "CUDA_VISIBLE_DEVICES": "1",
        **dict.fromkeys(
            ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"), "8"
        ),
    }
    assert _job_env(0, 32, None)["OMP_NUM_THREADS"] == "1"


# ------------------------------------------------------------------------------ running
def _notebook(path: Path, *cells: str, params: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), new_code_cell(params)])
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells += [new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Three notebooks: the engine self-test (claim C13), one with text and widget progress
    bars, one whose ``interactive`` function returns a pyplot figure. Run once with one job
    (progress logged as to a file), then with two jobs into another folder."""
    from nbfacelib.report.runner import reproduce

    d = tmp_path_factory.mktemp("nbs")
    shutil.copy(REPO / "tests" / "data" / "engine_selftest.ipynb", d / "01_engine_selftest.ipynb")
    bounds = (
        (REPO / "tests" / "data" / "bounds.yaml")
        .read_text()
        .replace("engine_selftest:", "01_engine_selftest:")
    )
    (d / "bounds.yaml").write_text(bounds + "02_bars:\n  smoke:\n    steps: {min: 1}\n")
    _notebook(
        d / "02_bars.ipynb",
        "import sys, tqdm, tqdm.auto\nfrom nbfacelib.report import record, claim\n"
        "for _ in tqdm.tqdm(range(steps), desc='text bar', file=sys.stderr, mininterval=0): pass\n"
        "for _ in tqdm.auto.tqdm(range(steps), desc='widget bar', mininterval=0): pass\n"
        "record('steps', steps)\n"
        "import os\nrecord('kernel_mmap_threshold', int(os.environ.get('MALLOC_MMAP_THRESHOLD_', 0)))",
        "claim('C13', 'a unit-test claim', {'steps': steps}, steps > 3)",
        params='preset = "smoke"\nseeds = [0, 1]\nsteps = 5',
    )
    _notebook(
        d / "03_explorer.ipynb",
        "import matplotlib.pyplot as plt\nfrom nbfacelib.viz import interactive, setup_notebook\n"
        "setup_notebook()\n"
        "def draw(m=0.5):\n    fig = plt.figure(figsize=(2, 2))\n"
        "    plt.plot([0, 1], [0, m])\n    return fig",
        "interactive(draw, m=(0.0, 1.0, 0.1, 0.5))",
        params='preset = "smoke"',
    )
    presets = d / "presets.yaml"
    presets.write_text("notebooks:\n  01_engine_selftest:\n    smoke: {n_vectors: 300}\n")
    runs = {}
    for jobs in (1, 2):
        out, log, stream = d / f"reports-{jobs}", [], io.StringIO()
        code, results = reproduce(
            "smoke",
            None,
            out,
            jobs=jobs,
            notebooks_dir=d,
            presets_file=presets,
            log=log.append,
            progress=True,
            progress_stream=stream,
        )
        runs[jobs] = {
            "code": code,
            "results": results,
            "out": out / "smoke",
            "log": log,
            "progress": stream.getvalue(),
        }
    return d, presets, runs


def _verdicts(results):
    return {
        name: (e["status"], [(c["id"], c["holds"]) for c in e["claims"]], sorted(e["metrics"]))
        for name, e in results.items()
    }


def test_two_jobs_give_the_verdicts_of_one(suite):
    _, _, runs = suite
    one, two = runs[1], runs[2]
    assert one["code"] == 0 and two["code"] == 0, one["log"] + two["log"]
    assert _verdicts(one["results"]) == _verdicts(two["results"])
    assert _verdicts(one["results"])["02_bars"][1] == [("C13", True)]
    for run in (one, two):  # metrics.json and the index written once, at the end, with every job
        data = json.loads((run["out"] / "metrics.json").read_text())
        assert sorted(data) == ["01_engine_selftest", "02_bars", "03_explorer"]
        index = (run["out"] / "index.html").read_text()
        assert index.count("<tr id=") == 3 and "C13: held" in index
        for name in data:
            assert (run["out"] / f"{name}.html").is_file() and (run["out"] / f"{name}.ipynb").is_file()
    assert any("on GPU" not in line and "02_bars" in line for line in two["log"])


def test_kernels_keep_freed_memory_unless_the_caller_says_otherwise(suite):
    from nbfacelib.machine import KEEP_FREED_BYTES, malloc_set_by_environment

    _, _, runs = suite
    # the caller's own setting is inherited as it is; otherwise the kernel gets ours
    expected = int(
        os.environ.get("MALLOC_MMAP_THRESHOLD_", 0 if malloc_set_by_environment() else KEEP_FREED_BYTES)
    )
    for jobs in (1, 2):
        assert runs[jobs]["results"]["02_bars"]["metrics"]["kernel_mmap_threshold"] == expected


def test_progress_shows_cells_and_the_notebooks_bars(suite):
    _, _, runs = suite
    text = runs[1]["progress"]
    assert "\r" not in text  # not a terminal: plain lines
    lines = text.splitlines()
    assert "    cell 1/3 at " in text and "    cell 3/3 at " in text  # 02_bars has 3 code cells
    assert any(line.startswith("    | text bar: 100%") and "5/5" in line for line in lines), text
    assert any(line.startswith("    | widget bar: 100%") and "5/5" in line for line in lines), text
    # with two jobs each line names its notebook
    assert "    [02_bars] cell 2/3 at " in runs[2]["progress"]


def test_provenance_in_metrics_and_report(suite):
    from nbfacelib.report.provenance import code_version

    _, _, runs = suite
    entry = runs[1]["results"]["02_bars"]
    prov = entry["provenance"]
    assert prov["seeds"] == [0, 1] and prov["preset"] == "smoke" and prov["parameters"]["steps"] == 5
    assert prov["code_version"] == entry["code_version"] == code_version()
    assert prov["package"].startswith("nbfacelib ") and prov["cpu"] and prov["gpu"]
    assert prov["wall_seconds"] == entry["seconds"] > 0
    page = (runs[1]["out"] / "02_bars.html").read_text()
    top = page[page.index("<body") :][:6000]
    for text in (
        "nbfacelib-provenance",
        "seeds",
        "[0, 1]",
        prov["git_commit"],
        prov["code_version"],
        "steps",
    ):
        assert text in top, text


def test_interactive_figure_drawn_once(suite):
    _, _, runs = suite
    nb = nbformat.read(runs[1]["out"] / "03_explorer.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("interactive("))
    images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("data", {}).keys() for o in cell.outputs]
    page = (runs[1]["out"] / "03_explorer.html").read_text()
    assert page.count("<img ") == 1


def test_resume_skips_up_to_date_and_reruns_changed(suite):
    from nbfacelib.report.runner import reproduce

    d, presets, runs = suite
    out = d / "reports-1"
    before = json.loads((runs[1]["out"] / "metrics.json").read_text())
    log: list[str] = []
    code, results = reproduce(
        "smoke", ["1", "02"], out, resume=True, notebooks_dir=d, presets_file=presets, log=log.append
    )
    assert code == 0 and sorted(results) == ["01_engine_selftest", "02_bars"]
    assert (
        sum("up to date (same parameters" in line for line in log) == 2
        and results["02_bars"] == before["02_bars"]
    )
    # a changed notebook file (or parameter, or code version) reruns that notebook only
    nb = nbformat.read(d / "02_bars.ipynb", as_version=4)
    nb.cells[-1].source += "\n# edited"
    nbformat.write(nb, d / "02_bars.ipynb")
    log.clear()
    code, results = reproduce(
        "smoke", ["02"], out, resume=True, notebooks_dir=d, presets_file=presets, log=log.append
    )
    assert not any("up to date (same" in line for line in log) and results["02_bars"]["status"] == "ok"
    data = json.loads((runs[1]["out"] / "metrics.json").read_text())
    assert sorted(data) == ["01_engine_selftest", "02_bars", "03_explorer"]  # the others kept

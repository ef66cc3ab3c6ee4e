"""The notebook engine: record / claim, presets, bounds, the runner and its reports.

Kernel start-up costs seconds, so the engine self-test notebook runs once per session (through
the CLI, ``nbface run``) and the tests below read its reports; the failure / bounds / config
cases share one ``reproduce`` over a small notebooks folder written into tmp_path.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nbfacelib.presets import load_notebook_presets, notebook_parameters, resolve_preset, typed_value
from nbfacelib.report.bounds import check_bounds, load_bounds
from nbfacelib.report.html import external_script_sources

# the module, not the function ``nbfacelib.report.record`` that the package exports
rec = importlib.import_module("nbfacelib.report.record")
REPO = Path(__file__).resolve().parents[1]
SELFTEST = REPO / "tests" / "data" / "engine_selftest.ipynb"


@pytest.fixture
def memory_only(monkeypatch):
    """Interactive mode: no record file, a clean in-memory store."""
    monkeypatch.delenv(rec.RECORD_ENV, raising=False)
    rec.reset()
    yield
    rec.reset()


# --------------------------------------------------------------------------- record
def test_record_converts_numpy_and_keeps_in_memory(memory_only, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rec.record("acc", np.float32(0.75)) is None  # no Out[] line in reports
    rec.record("n", np.int64(7))
    rec.record("curve", np.array([0.5, 0.25]))
    rec.record("flag", np.bool_(True))
    rec.record("loss", float("nan"))
    rec.record("acc", 0.8)  # re-recording replaces
    assert rec.metrics() == {"acc": 0.8, "n": 7, "curve": [0.5, 0.25], "flag": True, "loss": None}
    assert type(rec.metrics()["n"]) is int
    assert list(tmp_path.iterdir()) == []  # interactive use writes nothing


def test_record_refuses_bad_names_and_values(memory_only):
    for bad in ("", "1st", "has space", None, 3):
        with pytest.raises(ValueError, match="metric name"):
            rec.record(bad, 1.0)
    with pytest.raises(TypeError, match="record\\('obj'\\)"):
        rec.record("obj", object())
    with pytest.raises(TypeError, match="complex"):
        rec.record("z", 1 + 2j)
    assert rec.metrics() == {}


def test_record_file_is_rewritten_after_each_call(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "record.json"
    monkeypatch.setenv(rec.RECORD_ENV, str(path))
    rec.reset()
    rec.record("a", 1)
    assert json.loads(path.read_text()) == {"metrics": {"a": 1}, "claims": []}
    rec.claim("C13", "unit vectors", {"err": np.float64(1e-16)}, holds=True)
    data = rec.load_records(path)
    assert data["metrics"] == {"a": 1}
    assert data["claims"] == [
        {"id": "C13", "statement": "unit vectors", "measured": {"err": 1e-16}, "holds": True}
    ]
    rec.reset()
    assert json.loads(path.read_text()) == {"metrics": {}, "claims": []}


def test_a_claim_may_be_judged_once_per_domain(memory_only):
    """Notebook 01 tests C14 on synthetic faces and again on real ones: two verdicts, one id."""
    rec.claim("C14", "arc >= cos > softmax", {"acc": [0.8]}, holds=True)
    rec.claim(
        "C14", "arc >= cos > softmax", {"acc": [0.6]}, holds=None, domain="real: CFP-trained, LFW-scored"
    )
    rec.claim("C14", "again", {"acc": [0.5]}, holds=False, domain="real: CFP-trained, LFW-scored")  # replaces
    got = rec.claims()
    assert [(c["id"], c.get("domain"), c["holds"]) for c in got] == [
        ("C14", None, True),
        ("C14", "real: CFP-trained, LFW-scored", False),
    ]
    assert [rec.claim_label(c) for c in got] == ["C14", "C14 (real: CFP-trained, LFW-scored)"]
    assert "C14 (real: CFP-trained, LFW-scored)" in rec.verdict_table()


def test_claim_validates_id(memory_only):
    for bad in ("C0", "C22", "c13", "C13 ", 13, None, "X1"):
        with pytest.raises(ValueError, match="unknown claim id"):
            rec.claim(bad, "s", {"x": 1.0}, holds=True)
    assert set(rec.CLAIMS) == {f"C{i}" for i in range(1, 22)}
    assert rec.claims() == []


def test_project_claims_are_accepted_and_described(memory_only):
    """Project claims (D1: synthetic-only training beats eigenfaces on real faces) are valid
    ids beside the documents' C1 .. C21; an unlisted D id is refused like any other."""
    for bad in ("D0", "D99", "d1"):
        with pytest.raises(ValueError, match="project claims are D1"):
            rec.claim(bad, "s", {"x": 1.0}, holds=True)
    rec.claim("D1", "model > eigenfaces on ORL", {"gap": 0.02}, holds=None)
    assert [c["id"] for c in rec.claims()] == ["D1"]
    assert "eigenfaces on real faces" in rec.verdict_table()
    assert set(rec.PROJECT_CLAIMS).isdisjoint(rec.CLAIMS)


def test_claim_validates_holds_and_measured(memory_only, capsys):
    for bad in ("yes", "true", 1, 0, 0.5, [True], np.array([True, False])):
        with pytest.raises(TypeError, match="holds must be True, False or None"):
            rec.claim("C14", "s", {"x": 1.0}, holds=bad)
    with pytest.raises(TypeError, match="measured\\['x'\\]"):
        rec.claim("C14", "s", {"x": "high"}, holds=None)
    with pytest.raises(TypeError, match="non-empty dict"):
        rec.claim("C14", "s", {}, holds=None)
    with pytest.raises(ValueError, match="statement"):
        rec.claim("C14", "  ", {"x": 1.0}, holds=None)
    assert rec.claims() == []

    rec.claim(
        "C14",
        "arc >= cos > softmax",
        {"acc": [0.9, np.float32(0.5)], "gap": np.float64(0.1)},
        holds=np.bool_(False),
    )
    rec.claim("C15", "close", {"ratio": 0.99}, holds=None)
    rec.claim("C14", "arc >= cos > softmax", {"acc": [0.9, 0.91]}, holds=True)  # replaces the first
    got = rec.claims()
    assert [(c["id"], c["holds"]) for c in got] == [("C15", None), ("C14", True)]
    assert got[1]["measured"] == {"acc": [0.9, 0.91]}
    out = capsys.readouterr().out  # outside IPython the verdict is printed as a line
    assert "C14: not held" in out and "C15: inconclusive" in out and "C14: held" in out
    table = rec.verdict_table()
    assert table.count("<tr>") == 3 and "inconclusive" in table and ">held<" in table
    assert "ArcFace" in table  # the claim's text from CLAIMS.md


# --------------------------------------------------------------------------- presets
def test_presets(tmp_path, monkeypatch):
    monkeypatch.setattr("nbfacelib.presets.cuda_available", lambda: True)
    assert resolve_preset("auto") == "gpu"
    monkeypatch.setattr("nbfacelib.presets.cuda_available", lambda: False)
    assert resolve_preset("auto") == "cpu"
    assert resolve_preset("paper") == "paper"
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        resolve_preset("fast")
    # one auto rule: the training presets resolve it the same way
    from nbfacelib.train import TrainConfig

    assert TrainConfig.from_preset("auto").preset == "cpu"
    monkeypatch.setattr("nbfacelib.presets.cuda_available", lambda: True)
    assert TrainConfig.from_preset("auto").preset == "gpu"
    monkeypatch.setattr("nbfacelib.presets.cuda_available", lambda: False)

    f = tmp_path / "presets.yaml"
    f.write_text("train: {}\nnotebooks:\n  nb1:\n    smoke: {steps: 3, lr: 1e-3}\n    cpu: {steps: 300}\n")
    assert notebook_parameters("nb1", "smoke", f) == {"steps": 3, "lr": 0.001, "preset": "smoke"}
    assert notebook_parameters("nb1", "auto", f) == {"steps": 300, "preset": "cpu"}
    assert notebook_parameters("other", "gpu", f) == {"preset": "gpu"}
    with pytest.raises(ValueError, match="nb1 has no preset 'gpu' \\(it has: smoke, cpu\\)"):
        notebook_parameters("nb1", "gpu", f)
    f.write_text("notebooks:\n  nb1:\n    fast: {steps: 3}\n")
    with pytest.raises(ValueError, match="notebooks.nb1.fast: unknown preset"):
        load_notebook_presets(f)
    load_notebook_presets()  # the repository's own file is well-formed


def test_typed_parameter_values():
    assert typed_value("3") == 3 and isinstance(typed_value("3"), int)
    assert typed_value("0.1") == 0.1
    assert typed_value("1e-3") == 0.001  # YAML 1.1 would say "1e-3" is a string
    assert typed_value("[0, 1, 2]") == [0, 1, 2]
    assert typed_value("true") is True
    assert typed_value("arcface") == "arcface"
    assert typed_value("{a: 1}") == {"a": 1}


# --------------------------------------------------------------------------- bounds
def test_check_bounds_hand_cases():
    bounds = {"acc": {"min": 0.6}, "loss": {"max": 2.0}, "tar": {"min": 0.1, "max": 0.9}, "gone": {"min": 0}}
    metrics = {"acc": 0.6, "loss": 2.5, "tar": None}
    reasons = check_bounds(metrics, bounds)
    assert len(reasons) == 3  # acc == min is inside (inclusive)
    assert reasons[0] == "loss = 2.5 > max 2"
    assert reasons[1].startswith("tar = None is not a finite number")
    assert reasons[2] == "gone not recorded (bound: >= 0)"
    assert check_bounds({"acc": 0.59}, {"acc": {"min": 0.6}}) == ["acc = 0.59 < min 0.6"]
    assert check_bounds({"acc": math.inf}, {"acc": {"min": 0.6}})[0].startswith("acc = inf is not finite")
    assert check_bounds({"acc": "high"}, {"acc": {"min": 0.6}})[0].startswith("acc = 'high' is not")
    assert check_bounds({"acc": 1.0}, {}) == []


def test_load_bounds_checks_shape(tmp_path):
    f = tmp_path / "bounds.yaml"
    assert load_bounds(tmp_path / "missing.yaml") == {}
    f.write_text("nb:\n  smoke:\n    acc: {min: 0.5, max: 0.9}\n")
    assert load_bounds(f) == {"nb": {"smoke": {"acc": {"min": 0.5, "max": 0.9}}}}
    for text, message in [
        ("nb:\n  smoke:\n    acc: {least: 0.5}\n", "nb.smoke.acc: expected"),
        ("nb:\n  smoke:\n    acc: {min: high}\n", "nb.smoke.acc.min: expected a number"),
        ("nb:\n  smoke:\n    acc: {min: 0.9, max: 0.1}\n", "min 0.9 > max 0.1"),
        ("nb:\n  fast:\n    acc: {min: 0.5}\n", "nb.fast: unknown preset"),
    ]:
        f.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_bounds(f)
        assert str(f) in str(info.value)
    assert load_bounds(REPO / "notebooks" / "bounds.yaml")["01_arcface_margins"]["smoke"]


# --------------------------------------------------------------------------- widgets helper
def test_interactive_defaults_outside_ipython():
    from nbfacelib.viz import interactive

    assert interactive(lambda m, s: (m, s), m=(0.0, 0.8, 0.05, 0.5), s=(16, 64)) == (0.5, 40)
    assert interactive(lambda m: m, m=(0.0, 1.0, 0.1)) == pytest.approx(0.5)
    assert interactive(lambda loss, norm: (loss, norm), loss=["arcface", "cosface"], norm=True) == (
        "arcface",
        True,
    )
    with pytest.raises(ValueError, match="min < max"):
        interactive(lambda m: m, m=(1.0, 0.0))
    with pytest.raises(ValueError, match="outside"):
        interactive(lambda m: m, m=(0.0, 1.0, 0.1, 2.0))


# --------------------------------------------------------------------------- runner: the self-test
def test_selftest_run_writes_metrics_json(selftest_reports):
    out, rc = selftest_reports
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert list(data) == ["engine_selftest"]
    entry = data["engine_selftest"]
    assert {"status", "seconds", "metrics", "claims"} <= set(entry)
    assert entry["status"] == "ok" and "error" not in entry
    assert isinstance(entry["seconds"], float) and entry["seconds"] > 0
    assert entry["parameters"] == {"preset": "smoke", "n_vectors": 500}  # -p typed as int
    m = entry["metrics"]
    assert m["kernel_python"] == sys.executable  # the kernel runs the interpreter of nbface
    assert m["n_vectors"] == 500 and m["preset"] == "smoke"
    assert 0 <= m["max_abs_error"] < 1e-12
    assert len(m["cos_quartiles"]) == 3 and m["cos_quartiles"] == sorted(m["cos_quartiles"])
    assert entry["bounds"] == {"max_abs_error": {"max": 1e-12}, "n_vectors": {"min": 1}}
    [c] = entry["claims"]
    assert set(c) == {"id", "statement", "measured", "holds"}
    assert c["id"] == "C13" and c["holds"] is True and c["measured"]["n_vectors"] == 500


def test_selftest_executed_notebook_and_html(selftest_reports):
    out, _ = selftest_reports
    nb = nbformat.read(out / "engine_selftest.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n_vectors = 500" in injected[0].source
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))
    page = (out / "engine_selftest.html").read_text()
    assert external_script_sources(page) == []
    assert page.count("plotly.js v") == 1  # plotly.js embedded exactly once
    assert "require.min.js" not in page and "cdnjs" not in page and "unpkg" not in page
    index = (out / "index.html").read_text()
    assert "href='engine_selftest.html'" in index and "C13: held" in index
    assert external_script_sources(index) == []
    assert (out.parent / "index.html").exists()


def test_external_script_detector():
    assert external_script_sources('<script src="https://cdn.x/a.js"></script>') == ["https://cdn.x/a.js"]
    assert external_script_sources("<script src=//cdn.x/a.js></script>") == ["//cdn.x/a.js"]
    assert external_script_sources('<script type="module">import "https://cdn.x/m.js"</script>')
    assert external_script_sources('<script src="local.js"></script><a href="https://x">x</a>') == []


# --------------------------------------------------------------------------- runner: failures
def _notebook(path: Path, *cells: str, params: str = 'preset = "smoke"') -> Path:
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), new_code_cell(params)])
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells += [new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def failing_suite(tmp_path_factory):
    """reproduce over: a notebook that raises in cell 3, one whose metric is out of bounds and
    misses another, one without a parameters cell, and one that is fine."""
    from nbfacelib.report.runner import reproduce

    d = tmp_path_factory.mktemp("notebooks")
    imp = "from nbfacelib.report import record"
    _notebook(
        d / "a_raises.ipynb",
        f'{imp}\nrecord("before_failure", 1)',
        'raise ValueError("boom at " + preset)',
        'record("after_failure", 2)',
    )
    _notebook(d / "b_low.ipynb", f'{imp}\nrecord("acc", 0.5)')
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nbformat.write(nb, d / "c_no_parameters.ipynb")
    _notebook(d / "d_fine.ipynb", f'{imp}\nrecord("acc", steps / 10)', params='preset = "smoke"\nsteps = 1')
    (d / "bounds.yaml").write_text(
        "b_low:\n  smoke:\n    acc: {min: 0.9}\n    loss: {max: 1.0}\n"
        "d_fine:\n  smoke:\n    acc: {min: 0.9}\n  cpu:\n    acc: {min: 2.0}\n"
    )
    presets = d / "presets.yaml"
    presets.write_text("notebooks:\n  d_fine:\n    smoke: {steps: 9}\n")
    out = d / "reports"
    logs: list[str] = []
    # A decoy "python3" kernel spec first on the Jupyter path (as a system or user Jupyter might
    # have): the runner must not use it.
    decoy = tmp_path_factory.mktemp("jupyter") / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(
        json.dumps(
            {"argv": ["/bin/false", "{connection_file}"], "display_name": "decoy", "language": "python"}
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(decoy.parents[1]))
        code, results = reproduce("smoke", None, out, notebooks_dir=d, presets_file=presets, log=logs.append)
    return code, results, out / "smoke", logs


def test_failing_notebook_is_reported_and_others_run(failing_suite):
    code, results, out, logs = failing_suite
    assert code != 0
    assert list(results) == ["a_raises", "b_low", "c_no_parameters", "d_fine"]
    data = json.loads((out / "metrics.json").read_text())
    a = data["a_raises"]
    assert a["status"] == "failed"
    # cells: 0 markdown, 1 parameters, 2 record, 3 raise (index in the source notebook)
    assert a["error"]["cell"] == 3
    assert a["error"]["ename"] == "ValueError" and a["error"]["evalue"] == "boom at smoke"
    assert a["metrics"] == {"before_failure": 1}  # what was recorded before the failure is kept
    assert (out / "a_raises.html").exists() and (out / "a_raises.ipynb").exists()
    # steps = 9 comes from the presets file
    assert data["d_fine"]["status"] == "ok" and data["d_fine"]["metrics"] == {"acc": 0.9}
    assert any("a_raises: failed" in line and "cell 3: ValueError: boom at smoke" in line for line in logs)
    index = (out / "index.html").read_text()
    assert index.count("<tr id=") == 4 and "cell 3" in index and "boom at smoke" in index


def test_bounds_violation_is_reported(failing_suite):
    _, results, _, _ = failing_suite
    b = results["b_low"]
    assert b["status"] == "out-of-bounds"
    assert b["reasons"] == ["acc = 0.5 < min 0.9", "loss not recorded (bound: <= 1)"]


def test_misconfigured_notebook_is_reported(failing_suite):
    _, results, _, _ = failing_suite
    c = results["c_no_parameters"]
    assert c["status"] == "failed" and c["error"]["ename"] == "ConfigError"
    assert "no code cell tagged 'parameters'" in c["error"]["evalue"]


def test_config_errors_before_any_kernel(tmp_path):
    from nbfacelib.report.runner import run_notebook

    nb = _notebook(tmp_path / "nb.ipynb", "x = 1", params='preset = "smoke"\nsteps = 1')
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) stepz .* sets: preset, steps"):
        run_notebook(nb, "smoke", {"stepz": 3}, tmp_path / "r")
    with pytest.raises(ValueError, match="--preset"):
        run_notebook(nb, "smoke", {"preset": "cpu"}, tmp_path / "r")
    no_preset = _notebook(tmp_path / "np.ipynb", "x = 1", params="steps = 1")
    with pytest.raises(ValueError, match="does not set 'preset'"):
        run_notebook(no_preset, "smoke", None, tmp_path / "r")
    assert not (tmp_path / "r" / "smoke" / "metrics.json").exists()


def test_cell_timeout_names_the_cell(tmp_path):
    from nbfacelib.report.runner import run_notebook

    nb = _notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(120)", "y = 2")
    entry = run_notebook(nb, "smoke", None, tmp_path / "r", cell_timeout=2)
    assert entry["status"] == "failed"
    assert entry["error"]["cell"] == 3 and entry["error"]["ename"] == "CellTimeoutError"
    assert "timed out" in entry["error"]["evalue"]


# --------------------------------------------------------------------------- HTML without a kernel
def test_math_in_markdown_becomes_svg_outside_code():
    from nbfacelib.report.html import render_math

    out = render_math(
        "Loss $s\\cos(\\theta+m)$ costs $5 and $10; `x = $a$`\n\n$$\\|a-b\\|^2 = 2 - 2\\cos\\theta$$"
    )
    assert out.count("<img class='nbfacelib-math'") == 2
    assert "alt='s\\cos(\\theta+m)'" in out and "text-align:center" in out  # inline + display
    assert "costs $5 and $10" in out and "`x = $a$`" in out  # prices and code stay as they are
    bad = "$\\begin{aligned}a\\end{aligned}$"
    assert render_math(bad) == bad  # mathtext cannot draw it: the TeX stays readable


def test_widget_views_are_dropped_from_html(tmp_path):
    from nbformat.v4 import new_output

    from nbfacelib.report.html import notebook_to_html

    nb = new_notebook(cells=[new_markdown_cell("# w"), new_code_cell("interact(f, m=(0, 1))")])
    nb.cells[1].outputs = [
        new_output(
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2},
                "text/plain": "interactive(children=(FloatSlider(value=0.5),))",
            },
        )
    ]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nbformat.write(nb, tmp_path / "w.ipynb")
    page = notebook_to_html(tmp_path / "w.ipynb", tmp_path / "w.html").read_text()
    assert external_script_sources(page) == [] and "unpkg" not in page
    assert "widget-view+json" not in page and "FloatSlider(value=0.5)" in page  # text fallback kept

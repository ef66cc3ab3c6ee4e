"""benchmarks/gpu_check.sh: its CPU dry run on a Python that has only what the GPU machine has,
section failures and timeouts that do not stop the run, and the arcface_torch baseline it
times against (re-typed in benchmarks/arcface_torch_loop.py) computing arcface_torch's loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO

# Importable here but not on the GPU machine (torch, timm, numpy, scipy, safetensors, pyyaml,
# tqdm only): the dry run must never need them.
BLOCKED = (
    "sklearn",
    "plotly",
    "papermill",
    "gudhi",
    "persim",
    "umap",
    "pandas",
    "matplotlib",
    "nbformat",
    "nbconvert",
    "ipywidgets",
    "onnx",
    "onnxruntime",
    "PIL",
)

SITECUSTOMIZE = """
import sys

BLOCKED = {blocked!r}
already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
if already:
    raise SystemExit(f"imported before the blocker: {{already}}")


class NotOnTheGpuMachine:
    # Wraps each meta-path finder so that it finds nothing for a blocked name: `import x` then
    # raises ModuleNotFoundError and importlib.util.find_spec returns None, exactly as for a
    # package that is not installed (torch probes optional packages with find_spec).
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open({log!r}, "a") as fh:
                fh.write(name + "\\n")
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [NotOnTheGpuMachine(f) for f in sys.meta_path]
"""


def test_dry_run_on_a_python_without_the_optional_libraries(tmp_path):
    """The shell script, end to end, with every library the GPU machine lacks blocked by a
    meta-path finder installed before anything is imported (sitecustomize)."""
    site = tmp_path / "site"
    site.mkdir()
    attempts = tmp_path / "blocked_imports.txt"
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED, log=str(attempts)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3700,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    secs = data["sections"]
    assert list(secs) == ["machine", "throughput", "partial_fc", "render", "verification", "topology", "dpap"]
    bad = {
        n: (s["status"], s.get("error"), s.get("traceback")) for n, s in secs.items() if s["status"] != "ok"
    }
    assert not bad, bad
    assert data["meta"]["dry_run"] is True

    rows = secs["throughput"]["rows"]
    assert rows[0]["loop"] == "arcface_torch" and rows[0]["x_arcface_torch"] == 1.0
    assert rows[1]["loop"] == "nbface" and rows[1]["images_per_s"] > 0
    assert secs["throughput"]["fit"]["images_per_s"] > 0  # the engine's own fit(), end to end
    pfc = secs["partial_fc"]
    points = {(p["classes"], p["rate"]) for p in pfc["classifier_alone"]}
    assert points == {(1000, 0.1), (2000, 0.1), (1000, 1.0), (2000, 1.0)}
    assert all(p["images_per_s"] > 0 for p in pfc["full_step"])
    assert [r["size"] for r in secs["render"]["rows"]] == [112, 160]
    ver = secs["verification"]
    assert [e["pairs"] for e in ver["embedding"]] == [20, 40]
    assert ver["embedding"][1]["shape"] == [80, 512]
    # scikit-learn is blocked: the metrics part says so instead of failing the section
    assert "scikit-learn" in ver["metrics_skipped"] and ver["metrics"] == []
    for name in ("topology", "dpap"):  # present or absent, never fatal
        assert secs[name].get("absent") or secs[name].get("result") is not None

    md = (out / "gpu_check.md").read_text()
    for heading in ("## Training throughput", "## Partial FC", "## Synthetic rendering", "## Verification"):
        assert heading in md
    assert (out / "gpu_check.log").is_file()
    assert "sklearn" in attempts.read_text().split()  # the blocker was live (the probe hit it)


def test_a_failed_or_timed_out_section_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    def slow(rec, save, device, sizes, deadline):
        rec["partial"] = "kept"
        save()
        while True:
            time.sleep(0.01)

    monkeypatch.setitem(gpu_check.RUNNERS, "render", slow)
    sizes = gpu_check.Sizes.dry()
    sizes.budgets["render"] = 0.3
    data = gpu_check.run(tmp_path, torch.device("cpu"), sizes, ["machine", "render", "dpap"], fail="machine")
    secs = data["sections"]
    assert secs["machine"]["status"] == "failed" and "injected failure" in secs["machine"]["error"]
    assert secs["render"]["status"] == "timeout" and secs["render"]["partial"] == "kept"
    assert secs["dpap"]["status"] == "ok"  # ran after the failure and the timeout
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["sections"]["render"]["status"] == "timeout"
    assert "| render | timeout" in (tmp_path / "gpu_check.md").read_text()


def test_time_limit_interrupts_python_code_and_restores_the_handler():
    import signal

    from benchmarks.gpu_check import SectionTimeout, time_limit

    before = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    with pytest.raises(SectionTimeout), time_limit(0.2):
        while True:
            pass
    assert time.perf_counter() - t0 < 30  # it stopped (the alarm is at 0.2 s)
    assert signal.getsignal(signal.SIGALRM) is before


def test_verification_metrics_part_on_a_machine_with_scikit_learn():
    """What the dry run skips when scikit-learn is absent, run here where it is installed."""
    from benchmarks import gpu_check, verification_speed

    r = verification_speed.measure(200, 16, 0, 1, 1)
    assert r["pairs"] == 200 and r["kfold_fast_s"] > 0 and 0.0 <= r["accuracy"] <= 1.0
    md = gpu_check.markdown({"meta": {}, "sections": {"verification": {"metrics": [r], "embedding": []}}})
    assert "| 200 |" in md


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_arcface_torch_baseline_computes_arcface_torchs_loss(sample_rate):
    """The re-typed arcface_torch Partial FC + ArcFace (margin under no_grad) gives the same loss
    and the same gradients as nbfacelib's PartialFC with the official-behaviour option
    ``margin_grad=False`` on the same centres and embeddings (float32, CPU: its cross-entropy
    allocates float32 buffers, so it runs in float32 only). Scale 16, not 64: arcface_torch clamps
    each target probability at 1e-30 before the log, i.e. caps a sample's loss at 69.08, which s = 64
    reaches at initialisation (cosines near 0); below the cap the two losses are the same function."""
    from benchmarks.arcface_torch_loop import CombinedMarginLoss, PartialFCV2
    from nbfacelib.losses import build_margin
    from nbfacelib.losses.partial_fc import PartialFC

    torch.manual_seed(0)
    emb = torch.randn(16, 8)
    labels = torch.randint(0, 40, (16,))
    theirs = PartialFCV2(CombinedMarginLoss(16, 0.5), 8, 40, 1.0, fp16=False)
    ours = PartialFC(build_margin("arcface", s=16, margin_grad=False), 8, 40)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    l1 = theirs(e1, labels.clone())
    l2 = ours(e2, labels)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(e1.grad, e2.grad)
    torch.testing.assert_close(theirs.weight.grad, ours.weight.grad)
    if sample_rate < 1:  # sampling keeps every positive and int(rate * C) centres in all
        theirs.sample_rate, theirs.num_sample = sample_rate, int(sample_rate * 40)
        theirs(emb, labels.clone()).backward()
        kept = theirs.weight_index
        assert len(kept) == 20 and set(labels.tolist()) <= set(kept.tolist())


def test_arcface_torch_r50_has_the_reference_size_and_ours_matches():
    """REFERENCE.md: arcface_torch r50 has 43.59M parameters; nbfacelib's r50 is the same net."""
    from benchmarks.arcface_torch_loop import NETWORKS, IResNet
    from nbfacelib.models import build_backbone

    with torch.device("meta"):
        theirs = IResNet(NETWORKS["r50"][0], 512)
        ours = build_backbone("r50")
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert round(n_theirs / 1e6, 2) == 43.59
    assert sum(p.numel() for p in ours.parameters()) == n_theirs

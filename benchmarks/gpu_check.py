"""Every GPU figure of the package in one prepared run (``benchmarks/gpu_check.sh OUT_DIR``).

    PYTHONPATH=. python -m benchmarks.gpu_check OUT_DIR [--device cuda] [--sections a,b] [--dry-run]

Written for a GPU machine with its own Python where nothing can be installed (torch with CUDA,
timm, numpy, scipy, safetensors, pyyaml, tqdm): nothing on this script's import path imports
scikit-learn, plotly, papermill or gudhi (``tests/test_gpu_check.py`` runs it with those
blocked). Each section runs side by side what it compares, under its own time budget
(``SIGALRM``); a section that fails or runs out of time is recorded with its error and the run
goes on. ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` are rewritten after every
measurement, so a crash or a kill still leaves every figure taken so far.

Sections (figures in brackets are the goals of issue 15 / DESIGN):
- ``machine``: GPU, versions, a bf16 matmul rate (a sanity check of the card);
- ``throughput``: r50 at 112 px, batch 128, synthetic faces: the engine's step (bf16 / fp16,
  NCHW / channels-last, with and without ``torch.compile``) against arcface_torch's train_v2
  step re-typed in ``benchmarks/arcface_torch_loop.py`` (fp16 autocast, NCHW), interleaved;
  plus the engine's own ``fit()`` end to end [>= 1.3x arcface_torch];
- ``partial_fc``: 1M / 4M / 10M classes at r = 0.1 and r = 1.0: classifier-alone memory and step
  time, the full r50 + Partial FC step rate, and the largest class count that fits (from the
  measured bytes per class, then tried) [10M on one GPU at >= 80% of the 1M step rate;
  arcface_torch: 29M on 8 GPUs];
- ``render``: synthetic faces rendered on the GPU at 112 and 160 px [>= 3x the training rate];
- ``verification``: 6,000 and 60,000 pairs: the 10-fold metrics (grid loop vs fast) and the r50
  embedding of the pairs' images (flip, fp16);
- ``topology``: H0 persistence timings when that module exists (its absence is reported, not
  fatal);
- ``dpap``: TransFace's DPAP batched on the device vs the official host loop (numpy FFT per
  patch), batch 128 and 512, p = 0.2 and 1 [>= 50x];
``--dry-run`` shrinks every size (ir_tiny, a few classes and pairs) so the whole run takes
seconds on a CPU: ``make test`` runs it so the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

SECTIONS = ("machine", "throughput", "partial_fc", "render", "verification", "topology", "dpap")


@dataclass
class Sizes:
    """Every size of the run; :meth:`dry` is the CPU smoke version."""

    backbone: str = "r50"
    batch: int = 128
    throughput_classes: int = 1000
    throughput_steps: int = 20
    throughput_warmup: int = 3
    throughput_rows: int | None = None  # keep only the first N rows (the dry run: baseline + 1)
    compile_rows: bool = True
    fit_steps: int = 50
    fit_log_every: int = 10
    pfc_classes: tuple[int, ...] = (1_000_000, 4_000_000, 10_000_000)
    pfc_rates: tuple[float, ...] = (0.1, 1.0)
    pfc_steps: int = 5
    pfc_warmup: int = 2
    pfc_try_max: bool = True
    render_sizes: tuple[int, ...] = (112, 160)
    render_batch: int = 512
    render_images: int = 8192
    render_warm_ids: int = 1000
    verify_pairs: tuple[int, ...] = (6000, 60000)
    verify_reps: tuple[int, int] = (3, 10)
    embed_batch: int = 1024
    topo_sizes: tuple[int, ...] = (128, 256, 512, 1024)
    topo_repeat: int = 5
    topo_memory_sizes: tuple[int, ...] = (128, 1024)
    dpap_batches: tuple[int, ...] = (128, 512)
    dpap_rounds: int = 3
    budgets: dict[str, float] = field(
        default_factory=lambda: {
            "machine": 20,
            "throughput": 175,
            "partial_fc": 130,
            "render": 35,
            "verification": 50,
            "topology": 35,
            "dpap": 20,
        }
    )
    total_budget: float = 470.0  # seconds; the issue's limit is 8 minutes

    @classmethod
    def dry(cls) -> Sizes:
        """Every code path at the smallest sizes: well under a minute on 2 idle cores. The
        budgets are loose on purpose: a CI machine shared with other jobs (seen here: 2 cores at
        load 26, 5-10x slower) must not turn the smoke test into a timeout."""
        return cls(
            backbone="ir_tiny",
            batch=2,
            throughput_classes=20,
            throughput_steps=1,
            throughput_warmup=1,
            throughput_rows=2,
            compile_rows=False,
            fit_steps=1,
            fit_log_every=1,
            pfc_classes=(1000, 2000),
            pfc_steps=1,
            pfc_warmup=0,
            pfc_try_max=False,
            render_batch=2,
            render_images=2,
            render_warm_ids=2,
            verify_pairs=(20, 40),
            verify_reps=(1, 1),
            embed_batch=16,
            topo_sizes=(16, 32),
            topo_repeat=1,
            topo_memory_sizes=(8,),
            dpap_batches=(4,),
            dpap_rounds=1,
            budgets=dict.fromkeys(SECTIONS, 900.0),
            total_budget=3600.0,
        )


class SectionTimeout(Exception):
    """A section ran past its time budget."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM; the signal is
    handled when control returns to Python, e.g. after the CUDA call in flight)."""

    def on_alarm(signum, frame):
        raise SectionTimeout(f"time budget of {seconds:.0f} s spent")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Report:
    """The results, written to ``out/gpu_check.json`` and ``out/gpu_check.md`` on every save."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.data: dict = {"meta": meta, "sections": {}}

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"status": "running"})

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    """Out of device memory, also when cuBLAS / cuDNN fail to get their workspace."""
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


# --------------------------------------------------------------------------- sections


def section_machine(rec: dict, save, device: torch.device, sizes: Sizes) -> None:
    from nbfacelib.machine import describe_machine

    rec["machine"] = describe_machine()
    rec["torch"] = torch.__version__
    rec["cuda"] = torch.version.cuda
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec["gpu"] = props.name
        rec["gpu_memory_gib"] = props.total_memory / 2**30
        rec["multiprocessors"] = props.multi_processor_count
        n = 8192
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        _sync(device)
        rec["bf16_matmul_tflops"] = 10 * 2 * n**3 / (time.perf_counter() - t0) / 1e12
    save()


def section_throughput(rec: dict, save, device: torch.device, sizes: Sizes, deadline: float) -> None:
    from benchmarks import train_throughput as tt

    cuda = device.type == "cuda"
    rec.update(backbone=sizes.backbone, batch=sizes.batch, classes=sizes.throughput_classes, size=112)
    images, labels = tt.synthetic_batch(sizes.batch, sizes.throughput_classes, device=device)
    rows = tt.default_rows(cuda, sizes.compile_rows and cuda)
    if cuda:  # NCHW rows of the engine are there to isolate the effect of channels-last
        rows = [r for r in rows if r.loop == "arcface_torch" or r.channels_last or r.precision == "fp16"]
    rows = rows[: sizes.throughput_rows]
    eager, compiled = [r for r in rows if not r.compile], [r for r in rows if r.compile]
    if cuda:
        torch.backends.cudnn.benchmark = True  # as both loops set it
    # 1. the eager rows, interleaved with the baseline (each row's own warm-up first)
    rec["rows"] = tt.measure(
        eager,
        sizes.backbone,
        images,
        labels,
        sizes.throughput_classes,
        device,
        sizes.throughput_steps,
        warmup=sizes.throughput_warmup,
        deadline=deadline - (60 if cuda else 5),
    )
    base = next((r.get("images_per_s") for r in rec["rows"] if r["loop"] == "arcface_torch"), None)
    _summarise_throughput(rec)
    save()
    _free(device)
    # 2. the engine's own fit(), end to end (public API, data rendered and cached on the device)
    with tempfile.TemporaryDirectory() as tmp:
        rec["fit"] = tt.engine_fit_rate(
            sizes.backbone,
            sizes.batch,
            str(device),
            tmp,
            steps=sizes.fit_steps,
            log_every=sizes.fit_log_every,
            num_classes=sizes.throughput_classes,
        )
    if base:
        rec["fit"]["x_arcface_torch"] = rec["fit"]["images_per_s"] / base
    save()
    _free(device)
    # 3. torch.compile rows, one at a time (each compiles for a minute or so): timed after the
    # table, against the baseline's rate from it; a row that would not finish is left out
    for row in compiled:
        if time.perf_counter() > deadline - 75:
            rec["rows"].append({"label": row.label, "loop": row.loop, "skipped": "section time budget"})
            save()
            continue
        r = tt.measure(
            [row],
            sizes.backbone,
            images,
            labels,
            sizes.throughput_classes,
            device,
            sizes.throughput_steps,
            warmup=sizes.throughput_warmup,
        )[0]
        r["x_arcface_torch"] = r["images_per_s"] / base if base else None
        r["note"] = "timed after the interleaved rows, against the baseline's rate there"
        rec["rows"].append(r)
        _summarise_throughput(rec)
        save()
        _free(device)
    if compiled:
        torch._dynamo.reset()  # drop the compiled graphs (and the models they hold) before the next section


def _summarise_throughput(rec: dict) -> None:
    ours = [r for r in rec["rows"] if r["loop"] == "nbface" and r.get("x_arcface_torch")]
    if ours:
        best = max(ours, key=lambda r: r["images_per_s"])
        rec["best"] = {"label": best["label"], "x_arcface_torch": best["x_arcface_torch"]}
        rec["goal_1_3x_met"] = bool(best["x_arcface_torch"] >= 1.3)


def section_partial_fc(rec: dict, save, device: torch.device, sizes: Sizes, deadline: float) -> None:
    from benchmarks import partial_fc_memory as pm
    from benchmarks import train_throughput as tt

    cuda = device.type == "cuda"
    rec.update(backbone=sizes.backbone, batch=sizes.batch, dim=512, rates=list(sizes.pfc_rates))
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        rec["device_free_gib"], rec["device_total_gib"] = free / 2**30, total / 2**30
    classifier, full = rec.setdefault("classifier_alone", []), rec.setdefault("full_step", [])
    precision = "bf16" if cuda else "fp32"

    def attempt(fn, point: dict, into: list) -> None:
        try:
            point.update(fn())
        except Exception as exc:  # an OOM is a result ("does not fit"), anything else too
            if not _is_oom(exc):
                raise
            point["oom"] = True
            point["error"] = str(exc).splitlines()[0][:300]
        finally:
            _free(device)
        into.append(point)
        save()

    def full_step(classes: int, rate: float) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        images, labels = tt.synthetic_batch(sizes.batch, classes, device=device)
        step = tt.make_step(
            sizes.backbone, images, labels, classes, device, precision, cuda, sample_rate=rate
        )
        for _ in range(sizes.pfc_warmup):
            step()
        times = sorted(step() for _ in range(sizes.pfc_steps))
        out = {"step_ms": 1000 * times[len(times) // 2], "images_per_s": sizes.batch / times[len(times) // 2]}
        if cuda:
            out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return out

    for rate in sizes.pfc_rates:  # r = 0.1 first: the goal's figures before the ones that may not fit
        for classes in sizes.pfc_classes:
            if time.perf_counter() > deadline:
                rec["cut_short"] = "section time budget spent"
                return
            attempt(
                lambda c=classes, r=rate: pm.one_point(
                    c, r, sizes.batch, 512, sizes.pfc_steps, str(device), precision
                ),
                {"classes": classes, "rate": rate, "precision": precision},
                classifier,
            )
            attempt(lambda c=classes, r=rate: full_step(c, r), {"classes": classes, "rate": rate}, full)

    by = {(p["classes"], p["rate"]): p for p in full if "images_per_s" in p}
    lo, hi = min(sizes.pfc_classes), max(sizes.pfc_classes)
    if (lo, 0.1) in by and (hi, 0.1) in by:
        ratio = by[(hi, 0.1)]["images_per_s"] / by[(lo, 0.1)]["images_per_s"]
        rec["rate_ratio_max_vs_min_classes_r0.1"] = ratio
        rec["goal_10M_at_80pct_met"] = bool(ratio >= 0.8) if hi >= 10_000_000 else None
    if cuda and (lo, 0.1) in by and (hi, 0.1) in by:
        # peak memory is linear in the class count: bytes per class from the two ends
        per_class = (by[(hi, 0.1)]["peak_mib"] - by[(lo, 0.1)]["peak_mib"]) * 2**20 / (hi - lo)
        fixed = by[(lo, 0.1)]["peak_mib"] * 2**20 - per_class * lo
        predicted = int((rec["device_free_gib"] * 2**30 - fixed) / per_class)
        rec["bytes_per_class_r0.1"] = per_class
        rec["predicted_max_classes_r0.1"] = predicted
        rec["arcface_torch_reference"] = "29M classes on 8x V100 32GB (about 3.6M per GPU), PFC r=0.1"
        tried = int(predicted * 0.95) // 1_000_000 * 1_000_000
        if sizes.pfc_try_max and time.perf_counter() < deadline - 20 and tried > hi:
            attempt(lambda: full_step(tried, 0.1), {"classes": tried, "rate": 0.1, "max_try": True}, full)
            ok = [p["classes"] for p in full if p["rate"] == 0.1 and "images_per_s" in p]
            rec["largest_fitting_classes_r0.1"] = max(ok) if ok else None


def section_render(rec: dict, save, device: torch.device, sizes: Sizes, deadline: float) -> None:
    from benchmarks import synth_throughput as st

    rows = rec.setdefault("rows", [])
    rounds = max(1, sizes.render_images // sizes.render_batch)
    for size in sizes.render_sizes:
        warm = st.Renderer(
            sizes.render_batch, device, size, "medium", warm=True, warm_ids=sizes.render_warm_ids
        )
        cold = st.Renderer(sizes.render_batch, device, size, "medium", warm=False)
        st.interleaved({"warm": warm, "cold": cold}, 1)  # warm-up
        rates = st.interleaved({"warm": warm, "cold": cold}, rounds)
        rows.append(
            {
                "size": size,
                "batch": sizes.render_batch,
                "images": rounds * sizes.render_batch,
                "warm_images_per_s": rates["warm"],
                "cold_images_per_s": rates["cold"],
            }
        )
        save()


def section_verification(rec: dict, save, device: torch.device, sizes: Sizes, deadline: float) -> None:
    from benchmarks import verification_speed as vs
    from benchmarks.train_throughput import synthetic_batch
    from nbfacelib.eval.embed import embed
    from nbfacelib.models import build_backbone

    metrics, embedding = rec.setdefault("metrics", []), rec.setdefault("embedding", [])
    try:
        importlib.import_module("sklearn")
        have_sklearn = True
    except ImportError:
        have_sklearn = False
        rec["metrics_skipped"] = (
            "scikit-learn is not importable here; nbfacelib.eval.verification needs it for the "
            "folds and the ROC (the 10-fold timings of BENCHMARKS.md were taken on the CPU machine)"
        )
    model = build_backbone(sizes.backbone).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # every distinct image costs the same to embed: 2,048 rendered faces tiled to 2N
    images, _ = synthetic_batch(min(2048, 2 * max(sizes.verify_pairs)), 1000, device=device)
    for pairs in sizes.verify_pairs:
        if have_sklearn:
            metrics.append(vs.measure(pairs, 512, 0, *sizes.verify_reps))
            save()
        idx = torch.arange(2 * pairs, device=device) % len(images)
        batch = images[idx]
        warm = batch[: sizes.embed_batch]  # cudnn picks its fp16 kernels outside the timing
        embed(model, warm, batch_size=sizes.embed_batch, progress=False, normalize=False, amp=True)
        _sync(device)
        t0 = time.perf_counter()
        emb = embed(
            model, batch, batch_size=sizes.embed_batch, flip=True, progress=False, normalize=False, amp=True
        )
        seconds = time.perf_counter() - t0
        embedding.append(
            {
                "pairs": pairs,
                "images": 2 * pairs,
                "forwards": 4 * pairs,  # each image and its mirror
                "seconds": seconds,
                "images_per_s": 2 * pairs / seconds,
                "amp": "fp16" if device.type == "cuda" else "off (CPU)",
                "shape": list(emb.shape),
            }
        )
        del batch
        save()


def _optional(rec: dict, module: str, attr: str, device: torch.device, sizes: Sizes) -> None:
    """Run ``module.attr(device=..., dry_run=...)`` when that module provides it."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        rec["status_detail"] = f"absent: {module} not importable ({exc})"
        rec["absent"] = True
        return
    fn = getattr(mod, attr, None)
    if not callable(fn):
        rec["status_detail"] = f"absent: {module} has no {attr}()"
        rec["absent"] = True
        return
    rec["result"] = fn(device=device, dry_run=sizes.backbone != "r50")


def section_topology(rec, save, device, sizes, deadline) -> None:
    """H0 persistence pairs on the device (and, where gudhi is installed, against gudhi and the
    official union-find on the host), and the peak memory of input-space distances against the
    official B x B x D broadcast: ``benchmarks/topology_speed.py``'s functions, when present."""
    try:
        ts = importlib.import_module("benchmarks.topology_speed")
    except ImportError as exc:
        rec["status_detail"] = f"absent: benchmarks/topology_speed.py not importable ({exc})"
        rec["absent"] = True
        return
    baselines = importlib.util.find_spec("gudhi") is not None
    if not baselines:
        rec["baselines_skipped"] = "gudhi is not installed here: h0_pairs timed alone"
    rec["h0"] = ts.h0_timings(
        str(device), sizes=sizes.topo_sizes, repeat=sizes.topo_repeat, baselines=baselines
    )
    save()
    rec["input_distance_memory"] = ts.input_distance_memory(
        str(device), sizes=sizes.topo_memory_sizes, official_max_b=min(sizes.topo_memory_sizes)
    )
    rec["result"] = {"h0": rec["h0"]["rows"], "input_distance_memory": rec["input_distance_memory"]["rows"]}


def section_dpap(rec, save, device, sizes, deadline) -> None:
    """DPAP batched on the device against the official host loop (numpy FFT per patch, the
    batch copied off and back), same K = 7, at p = 0.2 and 1: ``benchmarks/dpap_speed.py``."""
    try:
        ds = importlib.import_module("benchmarks.dpap_speed")
    except ImportError as exc:
        rec["status_detail"] = f"absent: benchmarks/dpap_speed.py not importable ({exc})"
        rec["absent"] = True
        return
    res = ds.dpap_timings(str(device), batch_sizes=sizes.dpap_batches, rounds=sizes.dpap_rounds)
    rec["result"] = res["rows"]


RUNNERS: dict[str, Callable] = {
    "throughput": section_throughput,
    "partial_fc": section_partial_fc,
    "render": section_render,
    "verification": section_verification,
    "topology": section_topology,
    "dpap": section_dpap,
}


# --------------------------------------------------------------------------- report


def _fmt(x, spec: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, int | float) and not isinstance(x, bool) else str(x)


def markdown(data: dict) -> str:
    """The tables of BENCHMARKS.md's GPU section, from the JSON."""
    meta, secs = data["meta"], data["sections"]
    out = [
        "# gpu_check",
        "",
        f"- run: {meta.get('started')} ({'dry run' if meta.get('dry_run') else 'full'})",
    ]
    m = secs.get("machine", {})
    out.append(f"- machine: {m.get('machine', '-')}")
    if "gpu" in m:
        out.append(
            f"- GPU: {m['gpu']}, {m['gpu_memory_gib']:.1f} GiB, {m['multiprocessors']} SMs; torch "
            f"{m['torch']}, CUDA {m['cuda']}; bf16 8192^3 matmul {m['bf16_matmul_tflops']:.0f} TFLOP/s"
        )
    out.append("")
    out.append("| section | status | seconds |")
    out.append("|---|---|---:|")
    for name, s in secs.items():
        status = s.get("status", "?") + (f": {s['error']}" if s.get("error") else "")
        status += f" ({s['status_detail']})" if s.get("status_detail") else ""
        out.append(f"| {name} | {status.replace('|', '/')} | {_fmt(s.get('seconds'), '.1f')} |")

    t = secs.get("throughput", {})
    if t.get("rows"):
        out += ["", f"## Training throughput: {t['backbone']}, batch {t['batch']}, {t['size']} px, synthetic"]
        out += [
            "",
            "| loop | img/s | x arcface_torch | step ms | peak MiB | warm-up s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in t["rows"]:
            if "skipped" in r:
                out.append(f"| {r['label']} | skipped: {r['skipped']} | | | | |")
                continue
            out.append(
                f"| {r['label']} | {_fmt(r['images_per_s'], ',.1f')} | {_fmt(r['x_arcface_torch'], '.2f')} | "
                f"{_fmt(r['step_ms'], '.1f')} | {_fmt(r.get('peak_mib'))} | {_fmt(r['warmup_s'], '.1f')} |"
            )
        if t.get("fit"):
            f = t["fit"]
            rate, mem = _fmt(f["images_per_s"], ",.1f"), _fmt(f.get("peak_mib"))
            ratio = _fmt(f.get("x_arcface_torch"), ".2f")
            out.append(f"| {f['label']} (end to end) | {rate} | {ratio} | | {mem} | |")
        if "goal_1_3x_met" in t:
            out.append(
                f"\nBest: {t['best']['label']}, {t['best']['x_arcface_torch']:.2f}x; goal >= 1.3x "
                f"{'met' if t['goal_1_3x_met'] else 'NOT met'}."
            )

    p = secs.get("partial_fc", {})
    if p.get("classifier_alone") or p.get("full_step"):
        out += ["", f"## Partial FC: batch {p['batch']}, 512-d, ArcFace"]
        out += [
            "",
            "| classes | rate | classifier peak MiB | classifier step ms | full step img/s "
            "| full step peak MiB |",
        ]
        out += ["|---:|---:|---:|---:|---:|---:|"]
        full = {(q["classes"], q["rate"]): q for q in p.get("full_step", [])}
        cls = {(q["classes"], q["rate"]): q for q in p.get("classifier_alone", [])}
        for key in sorted(set(full) | set(cls), key=lambda k: (k[1], k[0])):
            c, f = cls.get(key, {}), full.get(key, {})
            c_mem = "OOM" if c.get("oom") else _fmt(c.get("peak_mib"))
            f_rate = "OOM" if f.get("oom") else _fmt(f.get("images_per_s"), ",.1f")
            out.append(
                f"| {key[0]:,} | {key[1]} | {c_mem} | {_fmt(c.get('step_ms'), '.1f')} | {f_rate} | "
                f"{_fmt(f.get('peak_mib'))} |"
            )
        for k in (
            "rate_ratio_max_vs_min_classes_r0.1",
            "goal_10M_at_80pct_met",
            "bytes_per_class_r0.1",
            "predicted_max_classes_r0.1",
            "largest_fitting_classes_r0.1",
            "arcface_torch_reference",
        ):
            if k in p:
                out.append(f"- {k}: {_fmt(p[k], ',.3f') if isinstance(p[k], float) else _fmt(p[k], ',')}")

    r = secs.get("render", {})
    if r.get("rows"):
        out += [
            "",
            "## Synthetic rendering on the device",
            "",
            "| size | batch | warm img/s | cold img/s | x best training rate |",
            "|---:|---:|---:|---:|---:|",
        ]
        best = max((q.get("images_per_s", 0) for q in t.get("rows", [])), default=0)
        for q in r["rows"]:
            ratio = q["warm_images_per_s"] / best if best else None
            out.append(
                f"| {q['size']} | {q['batch']} | {_fmt(q['warm_images_per_s'])} | "
                f"{_fmt(q['cold_images_per_s'])} | {_fmt(ratio, '.1f')} |"
            )

    v = secs.get("verification", {})
    if v.get("metrics") or v.get("embedding"):
        out += ["", "## Verification"]
        if v.get("metrics"):
            out += [
                "",
                "| pairs | 10-fold grid ms | 10-fold fast ms | x | evaluate() grid ms | evaluate() fast ms |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for q in v["metrics"]:
                out.append(
                    f"| {q['pairs']:,} | {q['kfold_grid_s'] * 1e3:.1f} | {q['kfold_fast_s'] * 1e3:.2f} | "
                    f"{q['kfold_grid_s'] / q['kfold_fast_s']:.1f} | {q['evaluate_grid_s'] * 1e3:.1f} | "
                    f"{q['evaluate_fast_s'] * 1e3:.1f} |"
                )
        if v.get("metrics_skipped"):
            out.append(f"\nMetrics not timed: {v['metrics_skipped']}")
        if v.get("embedding"):
            out += ["", "| pairs | images (+ mirror) | embed s | img/s | amp |", "|---:|---:|---:|---:|---|"]
            for q in v["embedding"]:
                out.append(
                    f"| {q['pairs']:,} | {q['images']:,} | {q['seconds']:.2f} | "
                    f"{_fmt(q['images_per_s'])} | {q['amp']} |"
                )
    topo = secs.get("topology", {})
    if topo.get("h0"):
        out += ["", "## H0 persistence pairs (h0_pairs on the device; baselines on the host)", ""]
        out += [
            "| B | h0_pairs ms | gudhi ms | union-find ms | x gudhi | x union-find |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for q in topo["h0"]["rows"]:
            ms = [_fmt(q.get(k) and q[k] * 1e3, ".2f") for k in ("ours_s", "gudhi_s", "uf_s")]
            ratios = [_fmt(q.get(k), ".1f") for k in ("gudhi_over_ours", "uf_over_ours")]
            out.append(f"| {q['B']} | {' | '.join(ms)} | {' | '.join(ratios)} |")
        if topo.get("baselines_skipped"):
            out.append(f"\n{topo['baselines_skipped']}")
    if topo.get("input_distance_memory"):
        out += ["", "| B | input distances | peak MiB | s |", "|---:|---|---:|---:|"]
        for q in topo["input_distance_memory"]["rows"]:
            if "error" in q:
                out.append(f"| {q['B']} | {q['method']} | failed: {q['error']} | |")
            else:
                out.append(
                    f"| {q['B']} | {q['method']} | {_fmt(q['peak_mib'], ',.1f')} | {q['seconds']:.3f} |"
                )
    dpap = secs.get("dpap", {})
    if dpap.get("result") is not None:
        out += ["", "## DPAP: batched on the device vs the official host loop (K = 7)", ""]
        out += [
            "| batch | p | batched ms (copy) | in place ms | official ms "
            "| speed-up (copy) | speed-up (in place) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for q in dpap["result"]:
            out.append(
                f"| {q['batch']} | {q['p']:g} | {q['batched_ms']:.2f} | {q['inplace_ms']:.2f} | "
                f"{q['official_ms']:.1f} | {q['speedup']:.0f}x | {q['speedup_inplace']:.0f}x |"
            )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def run(out: Path, device: torch.device, sizes: Sizes, sections: list[str], fail: str | None = None) -> dict:
    """Run ``sections`` in order, each under its budget; return the report's data."""
    report = Report(
        out,
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "device": str(device),
            "dry_run": sizes.backbone != "r50",
            "sizes": asdict(sizes),
            "argv": sys.argv,
        },
    )
    start = time.perf_counter()
    for name in sections:
        rec = report.section(name)
        left = sizes.total_budget - (time.perf_counter() - start)
        budget = min(sizes.budgets[name], left)
        t0 = time.perf_counter()
        print(f"[gpu_check] {name}: budget {budget:.0f} s", flush=True)
        try:
            if budget <= 0:
                raise SectionTimeout("no time left in the run's total budget")
            with time_limit(budget):
                if name == fail:
                    raise RuntimeError(f"injected failure in section {name!r} (--inject-failure)")
                if name == "machine":
                    section_machine(rec, report.save, device, sizes)
                else:
                    RUNNERS[name](rec, report.save, device, sizes, t0 + budget)
            rec["status"] = "ok"
        except SectionTimeout as exc:
            rec["status"], rec["error"] = "timeout", str(exc)
        except Exception as exc:  # keep going: the next section's figures are worth having
            rec["status"], rec["error"] = "failed", f"{type(exc).__name__}: {exc}"[:500]
            rec["traceback"] = traceback.format_exc()[-4000:]
        finally:
            rec["seconds"] = time.perf_counter() - t0
            with contextlib.suppress(Exception):
                _free(device)
            report.save()
        print(
            f"[gpu_check] {name}: {rec['status']} in {rec['seconds']:.1f} s {rec.get('error', '')}",
            flush=True,
        )
    report.data["meta"]["seconds"] = time.perf_counter() - start
    report.save()
    return report.data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="directory for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (CPU smoke test, seconds)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)  # test hook
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {unknown}; known: {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --dry-run)")
    sizes = Sizes.dry() if args.dry_run else Sizes()
    data = run(Path(args.out), device, sizes, sections, args.inject_failure)
    print((Path(args.out) / "gpu_check.md").read_text())
    failed = [n for n, s in data["sections"].items() if s["status"] != "ok"]
    print(f"[gpu_check] done in {data['meta']['seconds']:.0f} s; not ok: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

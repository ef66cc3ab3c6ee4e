"""Training throughput (images/s) per backbone, precision and memory format, side by side with
arcface_torch's own training step (re-typed in ``benchmarks/arcface_torch_loop.py``).

    python benchmarks/train_throughput.py [--quick] [--backbones ir_tiny,mbf_tiny] [--batch-size 64]

What is timed: one optimizer step of the engine's recipe -- backbone forward under autocast,
Partial FC (ArcFace head) loss, backward, grad-norm clip 5 on the backbone, SGD step -- on one
batch of synthetic faces rendered once beforehand (rendering is not timed, so the numbers are
the model's, not the renderer's). Configurations are timed in interleaved rounds (one step
each per round, after each one's own warm-up steps), so load changes on a shared machine hit
all rows alike; the median per configuration is reported. Peak memory is each row's own:
``torch.cuda.max_memory_allocated`` over its build and warm-up, minus what was allocated
before it was built (CUDA only).

The baseline is arcface_torch's step as its ``train_v2.py`` runs it (fp16 autocast over the
backbone body + GradScaler, NCHW, no-grad margin, in-place softmax; see that module for what
was left out at world size 1). Its autocast is ``torch.cuda.amp.autocast``, which leaves CPU
tensors alone: on the CPU it runs in fp32 with a scaler that does nothing. The DESIGN goal
(>= 1.3x that loop on a GPU, from bf16 + channels-last [+ compile]) can only be measured on
CUDA: ``benchmarks/gpu_check.sh`` runs it there, with :func:`engine_fit_rate` checking the
recipe against the engine's own ``fit()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from nbfacelib.machine import describe_machine as machine


@dataclass(frozen=True)
class Row:
    """One configuration of the table: ``loop`` is "arcface_torch" (the baseline) or "nbface"."""

    label: str
    loop: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False


def make_step(
    backbone_name,
    images,
    labels,
    num_classes,
    device,
    precision,
    channels_last,
    margin_grad=True,
    compile_model=False,
    embedding_size=512,
    sample_rate=1.0,
):
    """Build one configuration of the engine's recipe; return a function running one timed
    optimizer step (seconds)."""
    from nbfacelib.data.transforms import normalize
    from nbfacelib.losses import build_margin
    from nbfacelib.losses.partial_fc import PartialFC
    from nbfacelib.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, embedding_size=embedding_size).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=fmt)
    model = torch.compile(backbone) if compile_model else backbone
    pfc = PartialFC(
        build_margin("arcface", margin_grad=margin_grad),
        embedding_size,
        num_classes,
        sample_rate=sample_rate,
        device=device,
    ).to(device)
    opt = torch.optim.SGD(
        [{"params": backbone.parameters()}, {"params": pfc.parameters()}],
        lr=0.02,
        momentum=0.9,
        weight_decay=5e-4,
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    x = normalize(images.to(device)).contiguous(memory_format=fmt)
    y = labels.to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:  # as the engine: backbone and classifier matmul under autocast
            emb = model(x)
            loss = pfc(emb, y)
        float(loss.detach())  # the engine's one host sync per micro-batch (finiteness check)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def build_row(row: Row, backbone_name, images, labels, num_classes, device):
    if row.loop == "arcface_torch":
        from benchmarks.arcface_torch_loop import make_step as arcface_step

        return arcface_step(backbone_name, images, labels, num_classes, device)
    return make_step(
        backbone_name,
        images,
        labels,
        num_classes,
        device,
        row.precision,
        row.channels_last,
        compile_model=row.compile,
    )


def default_rows(cuda: bool, compile_rows: bool = False) -> list[Row]:
    """The baseline first, then the engine's recipe per precision and memory format."""
    if cuda:
        rows = [Row("arcface_torch train_v2 (fp16+scaler, NCHW)", "arcface_torch", "fp16")]
        for prec in ("bf16", "fp16"):
            for cl in (False, True):
                rows.append(Row(f"nbface {prec} {'channels-last' if cl else 'NCHW'}", "nbface", prec, cl))
        if compile_rows:
            rows += [
                Row("nbface bf16 channels-last compile", "nbface", "bf16", True, True),
                Row("nbface fp16 channels-last compile", "nbface", "fp16", True, True),
            ]
        return rows
    rows = [Row("arcface_torch train_v2 on CPU (= fp32, NCHW)", "arcface_torch", "fp32")]
    for prec in ("fp32", "bf16"):
        for cl in (False, True):
            rows.append(Row(f"nbface {prec} {'channels-last' if cl else 'NCHW'}", "nbface", prec, cl))
    return rows


def synthetic_batch(batch: int, num_classes: int, size: int = 112, seed: int = 0, device=None):
    """One batch of rendered faces (uint8, rendered on ``device``) and their labels (CPU)."""
    from nbfacelib.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(num_classes, 20, seed=seed, size=size)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    images, _ = faces.render_batch(labels, torch.randint(0, 20, (batch,), generator=g), device=device)
    return images, labels


def measure(
    rows: list[Row],
    backbone_name: str,
    images,
    labels,
    num_classes: int,
    device,
    steps: int,
    warmup: int = 2,
    deadline: float | None = None,
) -> list[dict]:
    """Build each row (warm-up steps run right after its build, which is where its peak memory
    and any compile time are read), then time all built rows in interleaved rounds. A row not
    built before ``deadline`` (``time.perf_counter()`` value) is reported as skipped; rounds stop
    at the deadline once every row has 3 timed steps. Returns one dict per row."""
    cuda = device.type == "cuda"
    built, out = [], []
    for row in rows:
        rec = {"label": row.label, "loop": row.loop, "precision": row.precision}
        rec.update(channels_last=row.channels_last, compile=row.compile)
        out.append(rec)
        if deadline is not None and time.perf_counter() > deadline:
            rec["skipped"] = "section time budget spent before this row was built"
            continue
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        fn = build_row(row, backbone_name, images, labels, num_classes, device)
        for _ in range(warmup):
            fn()
        rec["warmup_s"] = time.perf_counter() - t0
        if cuda:
            rec["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        built.append((rec, fn, []))
    for r in range(steps):
        if deadline is not None and r >= 3 and time.perf_counter() > deadline:
            break
        for _, fn, times in built:
            times.append(fn())
    base = None
    for rec, _, times in built:
        rec["timed_steps"] = len(times)
        rec["step_ms"] = 1000 * statistics.median(times)
        rec["images_per_s"] = len(images) / statistics.median(times)
        if rec["loop"] == "arcface_torch":
            base = rec["images_per_s"]
    for rec, _, _ in built:
        rec["x_arcface_torch"] = rec["images_per_s"] / base if base else None
    return out


def engine_fit_rate(
    backbone_name: str,
    batch: int,
    device: str,
    out_dir,
    precision: str = "auto",
    steps: int = 50,
    log_every: int = 10,
    num_classes: int = 1000,
) -> dict:
    """images/s of the engine's own :func:`nbfacelib.train.fit` (public API) on synthetic faces
    rendered on the training device: ``num_classes`` identities x 1 image, cached after their
    first render, so the later log windows time the engine, not the renderer. Returns the median
    of the windows after the first two, peak memory and the config used."""
    from nbfacelib.train import fit

    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    config = dict(
        backbone=backbone_name,
        data=f"synthetic:ids={num_classes},per_id=1,seed=0",
        val=[],
        steps=steps,
        batch_size=batch,
        lr=0.02,
        device=device,
        precision=precision,
        log_every=log_every,
        progress=False,
        out=str(out_dir),
    )
    summary = fit(config)
    with open(f"{out_dir}/metrics.jsonl") as fh:
        windows = [json.loads(line)["images_per_s"] for line in fh if line.strip()]
    timed = windows[2:] or windows[-1:]
    fmt = "channels-last" if summary["channels_last"] else "NCHW"
    rec = {
        "label": f"nbface fit() {summary['precision']} {fmt}",
        "images_per_s": statistics.median(timed),
        "windows_images_per_s": windows,
        "config": config,
    }
    if cuda:
        rec["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ir_tiny only, fewer steps")
    ap.add_argument(
        "--backbones",
        default=None,
        help="comma-separated (default ir_tiny,ir_small: the ones the arcface_torch baseline re-types)",
    )
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    backbones = (args.backbones or ("ir_tiny" if args.quick else "ir_tiny,ir_small")).split(",")
    if cuda and not args.backbones:
        backbones = ["r50", "r100"] if not args.quick else ["r50"]
    batch = args.batch_size or (128 if cuda else 32)
    steps = args.steps or (3 if args.quick else (20 if cuda else 5))
    images, labels = synthetic_batch(batch, args.num_classes)

    print(machine())
    print(f"device {device}, batch {batch}, {steps} timed steps (median), {args.num_classes} classes\n")
    print(f"{'backbone':10s} {'loop':44s} {'img/s':>9s} {'x arcface':>9s} {'peak MiB':>9s}")
    for name in backbones:
        rows = default_rows(cuda, args.compile and cuda)
        for rec in measure(rows, name, images, labels, args.num_classes, device, steps):
            mem = f"{rec['peak_mib']:9.0f}" if "peak_mib" in rec else f"{'n/a':>9s}"
            rate, ratio = rec["images_per_s"], rec["x_arcface_torch"]
            print(f"{name:10s} {rec['label']:44s} {rate:9.1f} {ratio:9.2f} {mem}", flush=True)
    if not cuda:
        print("\nNo CUDA device: the GPU goal (>= 1.3x the arcface_torch loop) is not measured here.")


if __name__ == "__main__":
    main()

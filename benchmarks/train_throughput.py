"""Training throughput (images/s) per backbone, precision and memory format, side by side with a
loop configured as insightface arcface_torch runs it.

    python benchmarks/train_throughput.py [--quick] [--backbones ir_tiny,mbf_tiny] [--batch-size 64]

What is timed: one optimizer step of the engine's recipe -- backbone forward under autocast,
Partial FC (ArcFace head, all classes) loss, backward, grad-norm clip 5 on the backbone, SGD
step -- on one batch of synthetic faces rendered once beforehand (rendering is not timed, so
the numbers are the model's, not the renderer's). Configurations are timed in interleaved
rounds (one step each per round, two warm-up rounds discarded), so load changes on a shared
machine hit all rows alike; the median per configuration is reported.

The arcface_torch loop: fp16 autocast + GradScaler, contiguous (NCHW) tensors, margin under
``torch.no_grad()`` (``margin_grad=False``). Its autocast is ``torch.cuda.amp.autocast``, which
leaves CPU tensors alone: on the CPU the same code runs in fp32 with a scaler that does nothing,
so that is what the CPU baseline runs (fp32, NCHW, GradScaler disabled, no-grad margin). The
DESIGN goal (>= 1.3x that loop on a GPU, from bf16 + channels-last [+ compile]) can only be
measured on CUDA; the script runs the same table there (``torch.cuda.max_memory_allocated``
per row).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from nbfacelib.machine import describe_machine as machine


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
):
    """Build one configuration; return a function running one timed optimizer step (seconds)."""
    from nbfacelib.data.transforms import normalize
    from nbfacelib.losses import build_margin
    from nbfacelib.losses.partial_fc import PartialFC
    from nbfacelib.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, embedding_size=embedding_size).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=fmt)
    model = torch.compile(backbone) if compile_model else backbone
    pfc = PartialFC(build_margin("arcface", margin_grad=margin_grad), embedding_size, num_classes).to(device)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ir_tiny only, fewer steps")
    ap.add_argument("--backbones", default=None, help="comma-separated (default ir_tiny,mbf_tiny,ir_small)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    backbones = (args.backbones or ("ir_tiny" if args.quick else "ir_tiny,mbf_tiny,ir_small")).split(",")
    if cuda and not args.backbones:
        backbones = ["r50", "r100", "mbf"] if not args.quick else ["r50"]
    batch = args.batch_size or (128 if cuda else 32)
    steps = args.steps or (3 if args.quick else (20 if cuda else 5))

    from nbfacelib.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(args.num_classes, 20, seed=0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.num_classes, (batch,), generator=g)
    images, _ = faces.render_batch(labels, torch.randint(0, 20, (batch,), generator=g))

    print(machine())
    print(f"device {device}, batch {batch}, {steps} timed steps (median), {args.num_classes} classes\n")
    baseline_name = "arcface_torch (fp16+scaler, NCHW)" if cuda else "arcface_torch on CPU (= fp32, NCHW)"
    rows = [(baseline_name, "fp16" if cuda else "fp32", False, False, False)]
    for prec in ("fp32", "bf16") + (("fp16",) if cuda else ()):
        for cl in (False, True):
            rows.append((f"nbface {prec} {'channels-last' if cl else 'NCHW'}", prec, cl, True, False))
    if args.compile and cuda:
        rows.append(("nbface bf16 channels-last compile", "bf16", True, True, True))
    print(f"{'backbone':10s} {'loop':40s} {'img/s':>9s} {'x arcface':>9s} {'peak MiB':>9s}")
    for name in backbones:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        # Interleaved rounds: every configuration runs one step per round, so a change of load
        # on a shared machine hits all of them alike; the median per configuration is reported.
        steps_fns = [
            make_step(name, images, labels, args.num_classes, device, p, cl, g, c) for _, p, cl, g, c in rows
        ]
        times = [[] for _ in rows]
        for r in range(2 + steps):
            for i, fn in enumerate(steps_fns):
                t = fn()
                if r >= 2:  # two warm-up rounds
                    times[i].append(t)
        base = len(images) / statistics.median(times[0])
        for (label, *_), ts in zip(rows, times, strict=True):
            rate = len(images) / statistics.median(ts)
            # CUDA: peak over all rows of this backbone (they are interleaved); CPU: no allocator peak
            mem = f"{torch.cuda.max_memory_allocated() / 2**20:9.0f}" if cuda else f"{'n/a':>9s}"
            print(f"{name:10s} {label:40s} {rate:9.1f} {rate / base:9.2f} {mem}", flush=True)
    if not cuda:
        print("\nNo CUDA device: the GPU goal (>= 1.3x the arcface_torch loop) is not measured here.")


if __name__ == "__main__":
    main()

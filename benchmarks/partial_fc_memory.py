"""Partial FC: peak memory and step time against the number of classes and the sample rate.

    python benchmarks/partial_fc_memory.py [--quick] [--classes 10000,100000] [--rates 1.0,0.1]

Each (classes, rate) point runs in a fresh subprocess so that memory high-water marks do not
leak from one point to the next. One step = Partial FC (ArcFace head) forward on a batch of
embeddings, backward, SGD (momentum 0.9) update of the centres; no backbone, so what is
measured is the classifier alone (the part that grows with the number of classes).

Memory, as measured:
- CPU: ``ru_maxrss`` (peak resident set of the process, from ``resource.getrusage``) after the
  steps minus ``ru_maxrss`` just before Partial FC is built: the classifier's peak footprint
  (centres + their gradient + momentum + the (B, C_sampled) logits and their gradient), in MiB,
  after a 10-class warm-up has loaded the kernels. RSS is a high-water mark of pages touched,
  and the allocator keeps freed pages, so this is an upper bound on live tensors.
- CUDA: ``torch.cuda.max_memory_allocated`` over the steps (live tensors only), up to 1M
  classes at rate 0.1 on one device when ``--device cuda``.
The side-by-side ratio is each rate against rate 1.0 (plain model-parallel softmax) at the same
number of classes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from nbfacelib.machine import describe_machine


def one_point(
    classes: int, rate: float, batch: int, dim: int, steps: int, device: str, precision: str = "fp32"
) -> dict:
    """Peak memory and median step time of Partial FC alone at ``classes`` x ``rate``;
    ``precision`` "bf16" runs forward under bf16 autocast, as the engine does on CUDA."""
    import contextlib
    import resource
    import time

    import torch

    from nbfacelib.losses import build_margin
    from nbfacelib.losses.partial_fc import PartialFC

    dev = torch.device(device)
    torch.manual_seed(0)
    emb = torch.randn(batch, dim, device=dev, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    # warm-up on 10 classes: the first call loads kernels and allocator arenas (~170 MiB of RSS
    # that does not depend on the number of classes); the delta after it is the classifier's
    warm = PartialFC(build_margin("arcface"), dim, 10).to(dev)
    warm(emb, labels % 10).backward()
    del warm
    emb.grad = None
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pfc = PartialFC(build_margin("arcface"), dim, classes, sample_rate=rate, device=dev)
    opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()

    times = []
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            loss = pfc(emb, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        emb.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step allocates the momentum buffer; time the steady state
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        how = "cuda.max_memory_allocated"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB on Linux
        how = "ru_maxrss delta"
    times.sort()
    return {
        "classes": classes,
        "rate": rate,
        "peak_mib": peak,
        "step_ms": 1000 * times[len(times) // 2],
        "memory": how,
        "precision": precision,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--classes", default=None, help="comma-separated class counts")
    ap.add_argument("--rates", default="1.0,0.3,0.1")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--embedding-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: one subprocess
    args = ap.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (2 if args.quick else 4)
    if args.point:
        classes, rate = args.point.split(":")
        print(
            json.dumps(
                one_point(int(classes), float(rate), args.batch_size, args.embedding_size, steps, device)
            )
        )
        return
    if args.classes:
        class_counts = [int(c) for c in args.classes.split(",")]
    elif device.startswith("cuda"):
        class_counts = [10_000, 100_000, 1_000_000]
    else:
        class_counts = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    rates = [float(r) for r in args.rates.split(",")]

    print(describe_machine())
    print(f"device {device}, batch {args.batch_size}, dim {args.embedding_size}, median of {steps} steps")
    print(
        f"{'classes':>9s} {'rate':>5s} {'peak MiB':>9s} {'x r=1':>6s} {'step ms':>8s} {'x r=1':>6s}  memory"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    for classes in class_counts:
        ref = None
        for rate in rates:
            cmd = [
                sys.executable,
                __file__,
                "--point",
                f"{classes}:{rate}",
                "--device",
                device,
                "--batch-size",
                str(args.batch_size),
                "--embedding-size",
                str(args.embedding_size),
                "--steps",
                str(steps),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode:
                print(f"{classes:9d} {rate:5.2f} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            ref = ref or r
            print(
                f"{classes:9d} {rate:5.2f} {r['peak_mib']:9.1f} "
                f"{r['peak_mib'] / max(ref['peak_mib'], 1e-9):6.2f} "
                f"{r['step_ms']:8.1f} {r['step_ms'] / ref['step_ms']:6.2f}  {r['memory']}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""glibc's malloc keeping freed memory (``nbfacelib.machine.keep_freed_memory``) vs its default.

    python benchmarks/freed_memory.py [--rounds 3] [--threads 1]

The setting belongs to a process, so each measurement is a child process: one with glibc's
default (every block over the mmap threshold, at most 32 MiB, is fresh pages from the kernel
and unmapped on free) and one that calls ``keep_freed_memory()`` first, alternated round by
round so that both see the same load. Workloads, each a slice of what the notebooks do:

- ``embed``: ir_tiny at 64 px embeds 2,048 images with the flip (``nbfacelib.eval.embed``,
  batch 256): what scoring a model on LFW's 7,701 images does;
- ``train``: 20 ArcFace steps of ir_tiny, batch 64 at 64 px (notebook 01's cpu recipe);
- ``render``: 1,024 ``textured`` synthetic faces at 112 px (notebook 00).

Prints wall seconds, user / system CPU seconds and minor page faults per workload, and the
ratio default / kept of the median wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import torch
from nbfacelib.machine import keep_freed_memory
mode, workload, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "kept":
    assert keep_freed_memory(), "keep_freed_memory() declined (not glibc, or MALLOC_* already set)"
torch.set_num_threads(threads)
torch.manual_seed(0)
F = torch.nn.functional
if workload in ("embed", "train"):
    from nbfacelib.models.registry import build_backbone
    model = build_backbone("ir_tiny", embedding_size=128, input_size=64)
if workload == "embed":
    from nbfacelib.eval.embed import embed
    images = torch.randint(0, 256, (2048, 3, 64, 64), dtype=torch.uint8)
    work = lambda: embed(model, images, batch_size=256, progress=False)
    embed(model, images[:256], batch_size=256, progress=False)
elif workload == "train":
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    head = torch.randn(500, 128, requires_grad=True)
    x, y = torch.randn(64, 3, 64, 64), torch.randint(0, 500, (64,))
    def step():
        logits = F.normalize(model(x)) @ F.normalize(head).T * 16
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(); loss.backward(); opt.step()
    def work():
        for _ in range(20):
            step()
    step()
else:
    from nbfacelib.data.synthetic import render
    ids, samples = torch.arange(256) % 64, torch.arange(256)
    render(ids, samples, seed=0, size=112, style="textured")
    def work():
        for k in range(4):
            render(ids, samples + 1000 * (k + 1), seed=0, size=112, style="textured")
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
work()
wall = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                  "faults": r1.ru_minflt - r0.ru_minflt}))
"""

WORKLOADS = ("embed", "train", "render")
MODES = ("default", "kept")


def measure(mode: str, workload: str, threads: int) -> dict[str, float]:
    from nbfacelib.machine import MALLOC_ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, workload, str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from nbfacelib.machine import describe_machine

    print(describe_machine())
    print(f"{args.rounds} rounds, {args.threads} torch thread(s) per child process")
    results = {(w, m): [] for w in WORKLOADS for m in MODES}
    for r in range(args.rounds):
        for w in WORKLOADS:
            order = MODES if r % 2 == 0 else MODES[::-1]
            for m in order:
                results[w, m].append(measure(m, w, args.threads))
    print(f"{'workload':8} {'mode':8} {'wall s':>8} {'user s':>8} {'sys s':>7} {'faults':>10}")
    for w in WORKLOADS:
        for m in MODES:
            runs = results[w, m]
            med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            print(
                f"{w:8} {m:8} {med['wall']:8.2f} {med['user']:8.2f} {med['sys']:7.2f} {med['faults']:10.0f}"
            )
        ratio = statistics.median(x["wall"] for x in results[w, "default"]) / statistics.median(
            x["wall"] for x in results[w, "kept"]
        )
        print(f"{w:8} default / kept (median wall): {ratio:.2f}x")


if __name__ == "__main__":
    main()

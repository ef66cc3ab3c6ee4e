"""The real training track at cpu scale: CFP identities 001-450 for training, LFW's 6,000 pairs
(and CFP-FP split 10, the held-out IDs 451-500, frontal vs profile) for scoring.

    python benchmarks/real_track.py [--part eigenfaces|cpu|cpu_real|synthetic|all]
        [--out runs/real_track] [--reuse] [--threads 2] [--seed 0]

- eigenfaces: PCA on the CFP training images (does_it_learn.pixel_baseline), cosine;
- cpu: today's ``nbface train --preset cpu --data cfp`` (ir_tiny, 64 px, 500 steps, flips only);
- cpu_real: ``nbface train --preset cpu_real`` (the real-track recipe of presets.yaml);
- synthetic: ``nbface train --preset cpu`` on synthetic faces only, scored on the same pairs.
No model trained on CFP is ever scored on the official CFP-FP (it saw 450 of its 500 people):
``cfp_heldout`` is the official split 10 alone. Wall times depend on the machine's load, which
is recorded (1-minute load average at start and end); the accuracies do not. Needs LFW and CFP
under the data root (``$NBFACELIB_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # does_it_learn's eigenfaces baseline
from does_it_learn import pixel_baseline  # noqa: E402

from nbfacelib.machine import describe_machine  # noqa: E402

SETS = ["lfw", "cfp_heldout"]
PARTS = {
    "cpu": ("cpu", dict(data="cfp")),
    "cpu_real": ("cpu_real", {}),
    "synthetic": ("cpu", dict(val=["synthetic-heldout", *SETS])),
}


def run_part(part: str, root: Path, reuse: bool, seed: int = 0) -> dict:
    from nbfacelib.train import TrainConfig, fit

    out = root / part
    if part == "eigenfaces":
        cfg = TrainConfig.from_preset("cpu", data="cfp", val=SETS, out=str(out))
        base = pixel_baseline(cfg)
        return {"part": part, "sets": {n: base[n] for n in SETS}}
    preset, overrides = PARTS[part]
    cfg = TrainConfig.from_preset(preset, out=str(out), progress=False, seed=seed, **overrides)
    load = os.getloadavg()[0]
    if reuse and (out / "model.safetensors").is_file():
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        metrics, seconds = {k: v for k, v in rows[-1].items() if "/" in k}, None
    else:
        t0 = time.perf_counter()
        result = fit(cfg)
        metrics, seconds = result["eval"], time.perf_counter() - t0
    sets = {}
    for name in SETS:
        keys = [k for k in metrics if k.startswith(name + "/")]
        sets[name] = {k.split("/", 1)[1]: metrics[k] for k in keys}
    return {
        "part": part,
        "preset": preset,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "train_seconds": seconds,
        "load_start": load,
        "load_end": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "sets": sets,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["all", "eigenfaces", *PARTS])
    ap.add_argument("--out", default="runs/real_track")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the 2-core machine)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the trained parts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(), flush=True)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for part in ["eigenfaces", *PARTS] if args.part == "all" else [args.part]:
        r = run_part(part, root, args.reuse, args.seed)
        results.append(r)
        for name, m in r["sets"].items():
            when = (
                f"seed {r['seed']}, {r['steps']} steps, train+eval {r['train_seconds']:.0f} s "
                f"at load {r['load_start']:.1f}"
                f"->{r['load_end']:.1f}"
                if r.get("train_seconds")
                else ""
            )
            print(
                f"{part:10s} {name:12s} {100 * m['accuracy']:6.2f} +- {100 * m['accuracy_std']:5.2f}%  "
                f"AUC {m['auc']:.3f}  TAR@FAR=1e-2 {m.get('tar@far=1e-02', float('nan')):.3f}  {when}",
                flush=True,
            )
        (root / "summary.json").write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

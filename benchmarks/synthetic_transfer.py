"""Synthetic -> real transfer of each renderer style: train on synthetic faces only, score on
ORL pairs; beside it the raw-pixel calibration at ``medium`` and the warm render rate.

    python benchmarks/synthetic_transfer.py [--styles flat,relief,...] [--seeds 0] [--steps 150]
        [--ids 200] [--per-id 10] [--batch-size 32] [--orl-pairs 1200] [--calibrate] [--rate]
        [--crop-scale 0.7,1.0] [--color-jitter 0.3] [--scale 16] [--out runs/synthetic_transfer]

The proxy (defaults: notebook 01's cpu recipe, ir_tiny at 64 px, 150 steps x 32, 200
identities) ranks the styles cheaply; ``--preset cpu`` trains the cpu training preset instead
(500 identities x 12, 500 steps x 64) for the goal measurement of issue 13. No ORL image is
used for training or model selection: ORL is only scored. The reference is the classic
eigenfaces fitted without labels on the ORL images themselves (PCA-100 of 28x28 pixels,
cosine) on the same pairs. Results are printed and written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nbfacelib.machine import describe_machine


def main() -> None:
    from nbfacelib.eval import evalsets as ev
    from nbfacelib.experiments.grid import Variant, run_grid, synthetic_uri
    from nbfacelib.experiments.synthetic_faces import render_rate
    from nbfacelib.train import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", default="flat,shaded")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--preset", default=None, help="train this training preset (cpu) instead of the proxy")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 150, or the preset's)")
    ap.add_argument("--ids", type=int, default=200)
    ap.add_argument("--per-id", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--orl-pairs", type=int, default=1200)
    ap.add_argument("--calibrate", action="store_true", help="also the raw-pixel calibration at medium")
    ap.add_argument("--rate", action="store_true", help="also the warm render rate, styles side by side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--crop-scale", default=None, help="training augmentation: random crop area range, e.g. 0.7,1.0"
    )
    ap.add_argument("--color-jitter", type=float, default=0.0, help="training augmentation: colour jitter")
    ap.add_argument("--scale", type=float, default=None, help="ArcFace scale s (default: the objective's 64)")
    ap.add_argument("--out", default="runs/synthetic_transfer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(), flush=True)
    styles = args.styles.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.preset:
        base = TrainConfig.from_preset(args.preset, val=[], eval_every=0, progress=False)
        from nbfacelib.data import open_dataset

        faces = open_dataset(base.data)  # the preset's synthetic identities, restyled below
        ids, per_id = faces.num_identities, faces.per_identity
        input_size = base.input_size
    else:
        ids, per_id, input_size = args.ids, args.per_id, args.input_size
        base = TrainConfig.from_preset(
            "cpu",
            val=[],
            eval_every=0,
            progress=False,
            batch_size=args.batch_size,
            input_size=input_size,
        )
    if args.steps or not args.preset:
        steps = args.steps or 150
        base = base.replace(steps=steps, warmup_steps=max(1, steps // 10), log_every=max(1, steps // 5))
    if args.crop_scale or args.color_jitter:
        crop = [float(v) for v in args.crop_scale.split(",")] if args.crop_scale else None
        base = base.replace(crop_scale=crop, color_jitter=args.color_jitter)
    if args.scale:
        base = base.replace(loss_kwargs={**base.loss_kwargs, "s": args.scale})
    orl = ev.orl(args.orl_pairs, input_size)
    eig = ev.own_eigenfaces(orl)
    print(
        f"ORL eigenfaces (PCA-100 fitted on ORL, cosine): {eig['accuracy']:.4f} +- {eig['accuracy_std']:.4f}"
    )
    variants = [Variant(s, base.replace(data=synthetic_uri(ids, per_id, 0, "medium", s))) for s in styles]
    t0 = time.perf_counter()
    result = run_grid(variants, seeds, {"orl": orl}, Path(args.out) / "grid")
    summary = {
        "machine": describe_machine(),
        "orl_eigenfaces": eig,
        "styles": {},
        "seeds": seeds,
        "config": base.to_dict(),
        "ids": ids,
        "per_id": per_id,
        "seconds": time.perf_counter() - t0,
    }
    for s in styles:
        acc = result.table.by_seed("accuracy", variant=s, evalset="orl")
        row = {"orl_accuracy": acc, "mean": float(np.mean(list(acc.values())))}
        if args.calibrate:
            from nbfacelib.eval.baseline import calibrate

            cal = calibrate("medium", style=s)
            row["calibration"] = {k: cal[k] for k in ("accuracy", "accuracy_std", "tercile_accuracy")}
        if args.rate:
            row["render_rate"] = render_rate(s, 2048, identities=1000)
        summary["styles"][s] = row
        print(
            f"{s:10s} ORL {row['mean']:.4f} per seed {acc}"
            + (
                f"  calibration {row['calibration']['accuracy']:.4f} terciles "
                + "/".join(f"{t:.3f}" for t in row["calibration"]["tercile_accuracy"])
                if args.calibrate
                else ""
            )
            + (f"  {row['render_rate']:.0f} img/s" if args.rate else ""),
            flush=True,
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

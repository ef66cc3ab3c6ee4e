"""Does it learn? A small backbone trained on the cpu preset against the raw-pixel baseline, on
pairs of identities it never saw in training.

    python benchmarks/does_it_learn.py [--part synthetic|orl|all] [--out runs/does_it_learn] [--reuse]

- synthetic: ``nbface train --preset cpu`` (500 synthetic identities), evaluated on the
  ``synthetic-heldout`` pairs (identities rendered after the training ones);
- orl: the same recipe on the ORL faces, people s1-s30 for training (``--holdout-ids 10``),
  pairs of s31-s40 (``--val heldout``).
The baseline is :mod:`nbfacelib.eval.baseline`'s eigenfaces (its ``pixel_features``, PCA fitted
on training-identity images, cosine), scored with the same 10-fold protocol on the very same
pairs (rebuilt from the run's config.json, so identical). ``--reuse`` skips training where
``OUT/<part>/model.safetensors`` exists and reads the model's numbers from its metrics.jsonl.
Equivalent CLI for the runs:

    nbface train --preset cpu --out runs/does_it_learn/synthetic
    nbface train --preset cpu --data orl --holdout-ids 10 --val heldout --val-pairs 400 \\
        --steps 150 --batch-size 32 --warmup-steps 15 --eval-every 0 --out runs/does_it_learn/orl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nbfacelib.machine import describe_machine

PARTS = {
    "synthetic": {},
    "orl": dict(
        data="orl",
        holdout_ids=10,
        val=["heldout"],
        val_pairs=400,
        input_size=112,  # ORL's faces fill the frame: at 64 px the gain over eigenfaces shrinks to noise
        steps=150,
        batch_size=32,
        warmup_steps=15,
        eval_every=0,
    ),
}


def pixel_baseline(cfg, components: int = 100) -> dict:
    """Eigenfaces on the run's own validation pairs (nbfacelib.eval.baseline.pixel_features)."""
    from sklearn.decomposition import PCA

    from nbfacelib.eval.baseline import pixel_features
    from nbfacelib.eval.verification import evaluate
    from nbfacelib.train.data import TrainBatches, build_val_sets

    data = TrainBatches(cfg, torch.device("cpu"))
    if data.synthetic:  # PCA on (up to) 200 training identities x per_id images, as calibrate()
        ids = torch.arange(min(200, data.num_classes)).repeat_interleave(data.per_id)
        samples = torch.arange(data.per_id).repeat(len(ids) // data.per_id)
        train = torch.cat(
            [data._render(i, s) for i, s in zip(ids.split(256), samples.split(256), strict=True)]
        )
    else:
        train = data.images
    pca = PCA(n_components=min(components, len(train) - 1), random_state=0)
    pca.fit(pixel_features(train))
    out = {}
    for name, (images, issame) in build_val_sets(cfg, data).items():
        emb = pca.transform(pixel_features(images))
        res = evaluate(emb[0::2], emb[1::2], issame)
        out[name] = {
            **{f"tar@far={float(far):.0e}": float(tar) for far, tar in res["tar_at_far"].items()},
            "accuracy": res["accuracy"],
            "accuracy_std": res["accuracy_std"],
            "auc": res["auc"],
            "n_pairs": res["n_pairs"],
            "pca_images": len(train),
        }
    return out


def run_part(part: str, root: Path, reuse: bool) -> dict:
    from nbfacelib.train import TrainConfig, fit

    out = root / part
    cfg = TrainConfig.from_preset("cpu", out=str(out), progress=False, **PARTS[part])
    if reuse and (out / "model.safetensors").is_file():
        cfg = TrainConfig.load(out / "config.json")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        model = {k: v for k, v in rows[-1].items() if "/" in k}
        seconds = None
    else:
        t0 = time.perf_counter()
        model = fit(cfg)["eval"]
        seconds = time.perf_counter() - t0
    base = pixel_baseline(cfg)
    return {"part": part, "model": model, "baseline": base, "train_seconds": seconds, "config": cfg.to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["all", *PARTS])
    ap.add_argument("--out", default="runs/does_it_learn")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    print(describe_machine())
    root = Path(args.out)
    results = []
    for part in PARTS if args.part == "all" else [args.part]:
        r = run_part(part, root, args.reuse)
        results.append(r)
        for name, b in r["baseline"].items():
            m_acc, m_std = r["model"][f"{name}/accuracy"], r["model"][f"{name}/accuracy_std"]
            secs = f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "reused"
            print(
                f"{part:9s} {name:18s} model {100 * m_acc:6.2f} +- {100 * m_std:5.2f}%   "
                f"pixels {100 * b['accuracy']:6.2f} +- {100 * b['accuracy_std']:5.2f}%   "
                f"gain {100 * (m_acc - b['accuracy']):+6.2f} pts   ({b['n_pairs']} pairs, train {secs})",
                flush=True,
            )
            tars = [k.split("/", 1)[1] for k in r["model"] if k.startswith(f"{name}/tar@far=")]
            print(
                f"{'':28s} AUC model {r['model'][f'{name}/auc']:.3f} pixels {b['auc']:.3f}; "
                + "; ".join(
                    f"{t} model {r['model'][f'{name}/{t}']:.3f} pixels {b.get(t, float('nan')):.3f}"
                    for t in tars
                ),
                flush=True,
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

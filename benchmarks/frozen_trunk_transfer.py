"""Synthetic -> real transfer with a frozen random trunk: an ir_tiny at its initialisation,
frozen, and only its embedding head (BN, Linear, BN) trained with ArcFace on synthetic faces;
scored on ORL pairs (and LFW when the data root has it) before and after.

    python benchmarks/frozen_trunk_transfer.py [--style flat] [--ids 500] [--per-id 10]
        [--steps 600] [--seed 0] [--threads 1]

Why: every recipe that trains the whole network on synthetic faces scored below the same
network untrained on ORL (BENCHMARKS.md, "Synthetic faces that transfer"). Freezing the random
features and learning only the projection asks whether the synthetic identities can at least
teach which directions of generic features are identity: the smallest step from the untrained
network. No ORL or LFW image is used for training.

Recipe: 64 px input, 128-d embedding; ``ids`` x ``per_id`` images rendered at 112 px
(``medium``), resized; trunk features of every image and its mirror computed once; 600 steps
of 128 features, SGD momentum 0.9, lr 0.1 with 50 warm-up steps and linear decay, weight
decay 5e-4; ArcFace s = 16, m = 0.5. Prints one RESULT line.
"""

from __future__ import annotations

import argparse
import time

import torch

from nbfacelib.machine import describe_machine


def main() -> None:
    from nbfacelib.data import transforms
    from nbfacelib.data.manifest import DatasetNotFoundError
    from nbfacelib.data.synthetic import render
    from nbfacelib.eval import evalsets as ev
    from nbfacelib.losses import build_objective
    from nbfacelib.losses.objective import Batch
    from nbfacelib.models import build_backbone
    from nbfacelib.models.output import BackboneOutput

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", default="flat")
    ap.add_argument("--ids", type=int, default=500)
    ap.add_argument("--per-id", type=int, default=10)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(), flush=True)
    size = 64
    torch.manual_seed(args.seed)
    model = build_backbone("ir_tiny", embedding_size=128, input_size=size).eval()
    sets = {"orl": ev.orl(1200, size)}
    try:
        sets["lfw"] = ev.open_evalset("lfw", size)
    except DatasetNotFoundError:
        print("LFW: not in the data root, ORL only", flush=True)

    def score() -> dict[str, float]:
        model.eval()
        return {k: ev.evaluate_model(model, s).metrics["accuracy"] for k, s in sets.items()}

    t0 = time.time()
    before = score()
    ids = torch.arange(args.ids).repeat_interleave(args.per_id)
    samples = torch.arange(args.per_id).repeat(args.ids)
    images = []
    for i in range(0, len(ids), 512):
        im, _ = render(ids[i : i + 512], samples[i : i + 512], seed=0, size=112, style=args.style)
        images.append(transforms.normalize(transforms.resize(im, size)))
    x = torch.cat(images)

    def trunk(batch: torch.Tensor) -> torch.Tensor:
        return torch.flatten(model.bn2(model.forward_features(batch)), 1)

    with torch.no_grad():
        feats = torch.cat(
            [torch.cat([trunk(b[i : i + 256]) for i in range(0, len(b), 256)]) for b in (x, x.flip(3))]
        )
    labels = torch.cat([ids, ids])
    objective = build_objective("arcface", embedding_size=128, num_classes=args.ids, s=16.0, m=0.5)
    params = list(model.fc.parameters()) + list(model.features.parameters()) + list(objective.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(args.seed)
    model.fc.train()
    model.features.train()
    objective.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = 0.1 * min(1, (step + 1) / 50) * (1 - step / args.steps)
        idx = torch.randint(len(feats), (128,), generator=g)
        emb = model.features(model.fc(model.dropout(feats[idx])))
        batch = Batch(images=feats[idx], labels=labels[idx], step=step, model=model)
        loss = objective(BackboneOutput(embedding=emb), labels[idx], batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = score()
    print(
        f"RESULT style={args.style} ids={args.ids} per_id={args.per_id} steps={args.steps} seed={args.seed} "
        + " ".join(f"{k}: untrained {before[k]:.4f} head-trained {after[k]:.4f}" for k in sets)
        + f" ({time.time() - t0:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main()

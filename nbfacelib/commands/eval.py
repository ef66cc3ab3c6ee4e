"""``nbface eval RUN_DIR --data X``: the standard verification numbers of a trained backbone.

    nbface eval runs/a --data lfw.bin                       # an insightface .bin
    nbface eval runs/a --data lfw --data cfp_fp --data agedb_30 --json runs/a/eval.json
    nbface eval runs/a --data orl --data synthetic-heldout  # shipped ORL; the run's own val set

RUN_DIR holds ``model.safetensors`` and ``config.json`` (what ``nbface train --out`` writes).
Each X is a ``.bin`` path, an image folder, ``orl``, ``synthetic-heldout`` or a manifest name
(``lfw``, ``cfp_fp``, ``agedb_30``: the ``.bin`` under the data root); see
:mod:`nbfacelib.eval.pair_sources`. The protocol is arcface_torch's: flip test-time
augmentation, squared L2 on unit vectors, 10 folds, threshold chosen on the 9 training folds;
ROC, AUC, EER and TAR@FAR from all pairs (:mod:`nbfacelib.eval.verification`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="10-fold verification accuracy, AUC, EER and TAR@FAR of a trained backbone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with model.safetensors and config.json")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="X",
        help="pairs to evaluate on: a .bin file, an image folder, orl, synthetic-heldout or a "
        "pair-set manifest name (lfw, cfp_fp, agedb_30); repeat the flag for several",
    )
    p.add_argument("--json", metavar="OUT", help="also write every metric, per data set, to this JSON file")
    p.add_argument(
        "--pairs",
        type=int,
        default=600,
        help="pairs sampled from an image folder or orl (default 600; a .bin brings its own)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs sampled from a folder (default 0)")
    p.add_argument(
        "--no-resize",
        dest="resize",
        action="store_false",
        help="refuse data whose images are not the model's input size instead of resizing them",
    )
    p.add_argument(
        "--output",
        default="embedding",
        help="what the model is scored by: embedding (default) or trunk, its flattened trunk features "
        "(the last feature map, before the embedding head)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument(
        "--device", default="auto", help="where the model runs: auto (CUDA if available), cpu, cuda or cuda:N"
    )
    p.set_defaults(func=run)


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(TrainConfig, backbone in eval mode) of a ``nbface train`` output folder; errors name the
    file that is missing or unreadable."""
    from nbfacelib.train import TrainConfig, load_backbone

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found (is {run_dir} the --out of `nbface train`?)")
    try:
        cfg = TrainConfig.load(cfg_path)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{cfg_path}: not a training config ({exc})") from None
    try:
        model = load_backbone(run_dir, device=device)
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors and load_state_dict raise several types
        raise ValueError(
            f"{run_dir / 'model.safetensors'}: cannot load the {cfg.backbone} weights ({exc})"
        ) from None
    return cfg, model


def evaluate_run(model, cfg, data: list[str], *, resize=True, pairs=600, seed=0, batch_size=256) -> dict:
    """{data name: {``metrics`` (flat, :func:`nbfacelib.eval.evalsets.evaluate_embeddings`),
    ``n_pairs``, ``source``, ``native_size``, ``input_size``}}, scored as the notebooks score."""
    import torch

    from nbfacelib.eval.evalsets import evaluate_model
    from nbfacelib.eval.pair_sources import open_pairs

    results = {}
    for spec in data:
        evalset, native = open_pairs(
            spec, size=cfg.input_size, config=cfg, resize=resize, pairs=pairs, seed=seed
        )
        with torch.random.fork_rng(devices=[]):
            metrics = evaluate_model(model, evalset, batch_size=batch_size).metrics
        name = evalset.name if evalset.name not in results else spec
        results[name] = {
            "metrics": metrics,
            "n_pairs": evalset.n_pairs,
            "source": evalset.description,
            "native_size": list(native),
            "input_size": cfg.input_size,
        }
    return results


def format_table(results: dict) -> str:
    """One row per data set: pairs, accuracy +- std (%), AUC, EER (%), TAR@FAR (%)."""
    fars = sorted(
        {k.split("=", 1)[1] for r in results.values() for k in r["metrics"] if k.startswith("tar@far=")},
        key=float,
        reverse=True,
    )
    head = ["data", "pairs", "accuracy", "AUC", "EER", *(f"TAR@FAR={far}" for far in fars)]
    rows = [head]
    for name, r in results.items():
        m = r["metrics"]
        tars = [f"{100 * m[f'tar@far={f}']:.2f}" if f"tar@far={f}" in m else "-" for f in fars]
        acc = f"{100 * m['accuracy']:.2f} +- {100 * m['accuracy_std']:.2f}"
        rows.append([name, str(r["n_pairs"]), acc, f"{m['auc']:.4f}", f"{100 * m['eer']:.2f}", *tars])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(percent, except AUC; accuracy: mean +- std over the 10 folds)"


def run(args) -> int:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model = load_run(args.run_dir, device=device)
    if args.output != "embedding":
        from nbfacelib.models.output import model_output

        model = model_output(model, args.output)  # an unknown name: an error listing the outputs
    results = evaluate_run(
        model,
        cfg,
        args.data,
        resize=args.resize,
        pairs=args.pairs,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    for name, r in results.items():
        h, w = r["native_size"]
        if (h, w) != (cfg.input_size, cfg.input_size):
            print(f"note: {name}: {w}x{h} images resized to the model's {cfg.input_size}x{cfg.input_size}")
    size = f"{cfg.input_size}x{cfg.input_size}"
    print(f"{args.run_dir}: {cfg.backbone}, {size} input, scored by its {args.output}")
    print(format_table(results))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "run": str(args.run_dir),
            "backbone": cfg.backbone,
            "input_size": cfg.input_size,
            "output": args.output,
            "results": results,
        }
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    return 0

"""``nbface train``: train a backbone (the flags are the fields of ``TrainConfig``).

    nbface train --preset cpu --backbone ir_tiny --loss arcface --out runs/cpu
    torchrun --nproc_per_node=2 -m nbfacelib train --preset smoke --out runs/ddp

A preset (``presets.yaml``, block ``train:``) gives the defaults; every flag given overrides
it. Each flag is generated from a field of :class:`nbfacelib.train.TrainConfig`, so the CLI
and ``nbfacelib.train.fit`` always take the same options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

HELP = {
    "preset": "smoke | cpu | cpu_real | gpu | paper | auto: defaults from presets.yaml (flags override)",
    "backbone": "backbone name (nbface models / nbfacelib.models.list_backbones())",
    "loss": "training objective (nbfacelib.losses.list_objectives(): arcface, cosface, curricularface, ...)",
    "loss_kwargs": 'keywords of the objective, e.g. \'{"s": 64, "m": 0.5}\' for arcface',
    "data": "training data: synthetic:ids=..,per_id=.., folder:PATH, rec:PATH or a manifest name",
    "val": "comma-separated pair sets: a .bin path, a pair-set name (lfw, cfp_heldout, ...), "
    "synthetic-heldout, or heldout (with --holdout-ids). On folder/rec data synthetic-heldout means "
    "the data's own held-out people: its manifest's validation sets, else its last identities",
    "crop_scale": "random resized crop: area fraction range, e.g. 0.7 1.0 (default off)",
    "crop_ratio": "random resized crop: aspect ratio range (default 0.9 1.1)",
    "color_jitter": "brightness/contrast/saturation jitter strength, e.g. 0.3 (default 0: off)",
    "steps": "optimizer steps (wins over --epochs)",
    "epochs": "passes over the training set (may be fractional)",
    "batch_size": "images per micro-batch per process",
    "sample_rate": "Partial FC: fraction of class centres sampled per step (0, 1]",
    "precision": "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (GradScaler)",
    "clip_grad_norm": "max grad norm of the backbone (arcface_torch: 5); 0 disables",
    "out": "output folder: config.json, metrics.jsonl, last.ckpt, model.safetensors",
    "resume": "continue from OUT/last.ckpt",
    "inject_nan_steps": argparse.SUPPRESS,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(subparsers) -> None:
    from nbfacelib.train.config import CHOICES, TrainConfig, field_help

    p = subparsers.add_parser(
        "train",
        help="train a face-recognition backbone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="auto", help=HELP["preset"] + " (default: auto)")
    hints = typing.get_type_hints(TrainConfig)
    described = field_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        kind = hints[f.name]
        text = HELP.get(f.name) or described[f.name]  # a field without a comment is a bug (tested)
        if kind in (bool, bool | None):
            p.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind in (int, int | None):
            p.add_argument(_flag(f.name), type=int, default=None, help=text)
        elif kind in (float, float | None):
            p.add_argument(_flag(f.name), type=float, default=None, help=text)
        elif kind == list[int]:
            p.add_argument(_flag(f.name), type=int, nargs="*", default=None, help=text)
        elif kind in (list[float], list[float] | None):
            p.add_argument(
                _flag(f.name), type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help=text
            )
        elif kind == list[str]:
            p.add_argument(
                _flag(f.name), type=lambda s: [v for v in s.split(",") if v], default=None, help=text
            )
        elif typing.get_origin(kind) is dict:
            p.add_argument(_flag(f.name), type=json.loads, default=None, help=text + " (JSON object)")
        else:
            p.add_argument(_flag(f.name), type=str, default=None, choices=CHOICES.get(f.name), help=text)
    p.set_defaults(func=run)


def run(args) -> int:
    from nbfacelib.cli import UserError
    from nbfacelib.train import TrainConfig, fit
    from nbfacelib.train.engine import TrainingDiverged

    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "preset")}
    if values.get("clip_grad_norm") == 0:
        values["clip_grad_norm"] = None
    cfg = TrainConfig.from_preset(args.preset, **values)
    try:
        result = fit(cfg)
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    if result["rank"] == 0:
        summary = {k: result[k] for k in ("steps", "first_loss", "final_loss", "skipped_steps", "out")}
        summary.update(result["eval"])
        print(json.dumps(summary, indent=1))
    return 0

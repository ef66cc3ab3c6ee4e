"""Typed training configuration.

One dataclass holds every knob of :func:`nbfacelib.train.fit`; nothing in the engine is a
constant hard-coded over it (arcface_torch fixes momentum 0.9 and s = 64 in code: here they are
``momentum`` and ``loss_kwargs["s"]``). A preset from ``nbfacelib/presets.yaml`` (block
``train:``, read by :mod:`nbfacelib.presets`, which also resolves ``auto``) gives the
defaults; keyword overrides (the ``nbface train`` flags) win. Unknown keys are rejected with
an error that names them, so a typo never silently falls back to a default. The resolved
config is written as ``OUT/config.json`` with every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# the options that take one of a few values (the `nbface train` flags offer the same choices)
CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("poly", "cosine", "arcface_torch"),  # nbfacelib.train.schedule.KINDS
    "precision": ("auto", "fp32", "bf16", "fp16"),
}


@dataclass
class TrainConfig:
    """Every option of a training run. Units are given where there are any.

    The comment that ends a field's line is its description: ``nbface train --help`` shows it
    (:func:`field_help`), so write it as a sentence for a user."""

    # what is trained
    backbone: str = "ir_tiny"  # backbone name in nbfacelib.models (list_backbones())
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of the backbone
    embedding_size: int = 512  # dimension of the face embedding the backbone outputs
    input_size: int = 112  # side of the square model input in pixels; other sizes are resized to it
    loss: str = "arcface"  # objective name: nbfacelib.losses.list_objectives()
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # the objective's options, e.g. {"s": 64}
    sample_rate: float = 1.0  # Partial FC: fraction of class centres sampled per step (where taken)

    # data
    data: str = "synthetic:ids=50,per_id=20,seed=0"  # training data URI (nbfacelib.data.open_dataset)
    val: list[str] = field(default_factory=lambda: ["synthetic-heldout"])  # validation pair sets
    val_pairs: int = 600  # pairs built for "synthetic-heldout" / "heldout" validation sets
    val_ids: int = 100  # identities rendered for "synthetic-heldout" (after the training ones)
    holdout_ids: int = 0  # last N identities of a folder/rec data set kept out for "heldout"
    flip: bool = True  # random horizontal flip of training images (arcface_torch does it)
    # random resized crop to input_size (data.transforms.TrainAugment); None: off, as arcface_torch
    crop_scale: list[float] | None = None  # random crop: area fraction range, e.g. [0.7, 1.0]; None: off
    crop_ratio: list[float] = field(default_factory=lambda: [0.9, 1.1])  # random crop: aspect ratio range
    crop_shift: float = 1.0  # random crop: offset range about the centre, a fraction of the margin (1: any)
    color_jitter: float = 0.0  # brightness = contrast = saturation jitter strength (ColorJitter); 0: off
    hue: float = 0.0  # hue jitter: shift range of each image's hue, at most 0.5 (ColorJitter hue); 0: off
    rand_conv: float = 0.0  # probability per image of a random convolution (RandConv, Xu et al. 2021); 0: off
    num_workers: int = 0  # DataLoader workers for folder/rec data (synthetic renders in-process)
    cache_mb: int = 1024  # synthetic: keep rendered images when the whole set fits (MiB)

    # length: `steps` (optimizer steps) wins over `epochs` when both are given
    steps: int | None = None  # optimizer steps in all
    epochs: float | None = 20.0  # passes over the training set (arcface_torch: 20)
    batch_size: int = 128  # images per micro-batch per process
    images_per_identity: int = 1  # K images per drawn identity (P x K batches, pair losses); 1: independent
    grad_accum: int = 1  # micro-batches per optimizer step; the loss is divided by it

    # optimisation
    optimizer: str = "sgd"  # sgd (arcface_torch for CNNs) or adamw (for ViTs)
    lr: float = 0.1  # peak learning rate (after warm-up)
    momentum: float = 0.9  # SGD momentum, or AdamW's beta1
    weight_decay: float = 5e-4  # L2 penalty of the optimizer (decoupled for AdamW)
    warmup_steps: int = 0  # linear warm-up length, optimizer steps
    schedule: str = "poly"  # lr decay per step: poly, cosine or arcface_torch (its PolynomialLRWarmup)
    poly_power: float = 1.0  # exponent of the polynomial decay (1: linear to zero)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    clip_grad_norm: float | None = 5.0  # max gradient norm of the backbone (as arcface_torch); None: off
    # weight averaging (SWA, Izmailov et al. 2018; dense, as SWAD, Cha et al. 2021, for domain shift)
    average_from: float | None = None  # average weights and BN statistics from this fraction on; None: off

    # numerics / speed
    device: str = "auto"  # where to train: auto (CUDA if available), cpu, cuda or cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool | None = None  # NHWC memory layout; unset: on for CUDA, off for CPU
    compile: bool = False  # run the backbone through torch.compile
    seed: int = 0  # seeds initialisation, batches and validation pairs
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn benchmark

    # bookkeeping
    out: str = "runs/train"  # output folder of the run
    resume: bool = False  # continue from OUT/last.ckpt
    eval_every: int = 0  # optimizer steps between evaluations; 0: only at the end
    ckpt_every: int = 0  # optimizer steps between OUT/last.ckpt writes; 0: only at the end
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    progress: bool = True  # show a tqdm progress bar while training
    max_bad_steps: int = 5  # consecutive non-finite steps before training stops
    inject_nan_steps: list[int] = field(default_factory=list)  # test hook: loss := NaN there
    preset: str | None = None  # the preset this config came from (recorded, not used)

    def __post_init__(self) -> None:
        if isinstance(self.val, str):
            self.val = [v for v in self.val.split(",") if v]
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config {key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        positive = ("batch_size", "grad_accum", "embedding_size", "input_size", "max_bad_steps")
        if int(self.images_per_identity) < 1 or self.batch_size % int(self.images_per_identity):
            raise ValueError(
                f"config images_per_identity={self.images_per_identity!r}: must be >= 1 and divide "
                f"batch_size={self.batch_size} (each micro-batch holds whole identity groups)"
            )
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ValueError(f"config {key}={getattr(self, key)!r}: must be >= 1")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"config sample_rate={self.sample_rate}: must be in (0, 1]")
        from nbfacelib.losses import list_objectives  # here, not at import: it loads torch

        if self.loss not in list_objectives():
            known = ", ".join(list_objectives())
            raise ValueError(f"config loss={self.loss!r}: not a registered objective; known: {known}")
        if "sample_rate" in self.loss_kwargs:
            raise ValueError(
                "config loss_kwargs: give sample_rate as the config field sample_rate, not in loss_kwargs"
            )
        for key in ("crop_scale", "crop_ratio"):
            v = getattr(self, key)
            if v is not None and (len(v) != 2 or not 0 < v[0] <= v[1]):
                raise ValueError(f"config {key}={v!r}: expected [low, high] with 0 < low <= high")
        if self.crop_scale is not None and self.crop_scale[1] > 1:
            raise ValueError(f"config crop_scale={self.crop_scale!r}: an area fraction, at most 1")
        if self.color_jitter < 0:
            raise ValueError(f"config color_jitter={self.color_jitter}: must be >= 0")
        from nbfacelib.data.transforms import TrainAugment

        try:  # the augmentation checks its own ranges (hue, rand_conv, crop_shift)
            TrainAugment(self.input_size, hue=self.hue, rand_conv=self.rand_conv, crop_shift=self.crop_shift)
        except ValueError as err:
            raise ValueError(f"config {err}") from None
        if self.average_from is not None and not 0.0 <= self.average_from < 1.0:
            raise ValueError(f"config average_from={self.average_from}: a fraction of training in [0, 1)")
        if self.steps is None and self.epochs is None:
            raise ValueError("config: give steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"config steps={self.steps}: must be >= 1")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, known, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"{source}: unknown training option(s) {', '.join(hints)}")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str | None = None, **overrides: Any) -> TrainConfig:
        """Preset ``name`` from ``presets.yaml`` (block ``train:``), then ``overrides`` on top.

        ``name`` None gives the dataclass defaults. Overrides that are None are ignored, so
        unset CLI flags keep the preset's values.
        """
        values: dict[str, Any] = {}
        if name is not None:
            from nbfacelib.presets import train_preset

            name, preset_values = train_preset(name)
            values.update(preset_values)
            values["preset"] = name
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in overrides and "steps" not in overrides:
            values["steps"] = None  # an explicit --epochs replaces the preset's length in steps
        values.update(overrides)
        return cls.from_dict(values, source=f"preset {name!r}" if name else "config")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text()), source=str(path))

    # --- output -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def field_help() -> dict[str, str]:
    """{field name: its description}: the comment that ends the field's line in
    :class:`TrainConfig` (one place to write it; a test checks every field has one)."""
    import inspect
    import io
    import tokenize

    names = {f.name for f in fields(TrainConfig)}
    out: dict[str, str] = {}
    first: dict[int, str] = {}  # line -> first name on it
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(TrainConfig)).readline):
        if tok.type == tokenize.NAME and tok.start[0] not in first:
            first[tok.start[0]] = tok.string
        elif tok.type == tokenize.COMMENT and first.get(tok.start[0]) in names:
            out[first[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out

"""The grid runner: training-config variants x seeds, each trained once, evaluated on shared
evaluation sets, returned as one tidy table.

A notebook states its variants as changes to ONE base :class:`~nbfacelib.train.TrainConfig`
(nobody re-types its fields)::

    base = config_from(globals(), data=synthetic_uri(train_ids, per_id), val=[], progress=False)
    variants = [Variant("softmax", base.replace(loss="softmax")),
                Variant("arcface", base.replace(loss="arcface", loss_kwargs={"s": 8.0}))]
    result = run_grid(variants, seeds=[0, 1, 2], evalsets={"synthetic": es}, root="runs/01")
    result.table.by_seed("accuracy", variant="arcface", evalset="synthetic")  # {seed: value}

What it does for you:
- every run goes through :func:`nbfacelib.train.fit` (the engine of ``nbface train``);
- runs are cached under ``root/runs/<key>``, ``key`` a hash of the config fields that change
  the trained weights (so ``out``, ``progress``, logging and checkpoint cadence do not count):
  a re-run with the same config loads the model instead of training it, and two variants with
  the same config (the C14 ArcFace run is also C15's IResNet run) train once;
- synthetic training data (``synthetic:`` URIs) is rendered ONCE per data set into
  ``root/data/<hash>`` as a lossless PNG folder that every run of the grid reads, instead of
  every run rendering every batch again (``prerender=False``: render per batch on the
  training device, the GPU path);
- every model is evaluated on the same :class:`~nbfacelib.eval.evalsets.EvalSet` images.

The result's :class:`Table` has one row per run x evaluation set x metric:
``{"variant", "seed", "evalset", "metric", "value", **variant.labels}``; training numbers
(``first_loss``, ``final_loss``, ``train_seconds``, ``skipped_steps``) are rows with
``evalset = "train"``. No pandas is needed (:meth:`Table.to_pandas` converts when installed).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from nbfacelib.train.config import TrainConfig

__all__ = [
    "GridResult",
    "Run",
    "Table",
    "Variant",
    "config_from",
    "config_key",
    "run_grid",
    "synthetic_uri",
]

# TrainConfig fields that do not change the trained weights: left out of the cache key
NOT_IN_KEY = frozenset(
    {"out", "progress", "resume", "log_every", "ckpt_every", "eval_every", "num_workers", "preset", "val"}
)
# Options added to TrainConfig after runs were cached under their keys: at their default (the
# dataclass's own) they stay out of the key, so adding an option does not orphan cached runs.
KEY_OMITTED_AT_DEFAULT = frozenset({"rand_conv", "hue", "crop_shift"})
TRAIN_SET = "train"  # the evalset name of training rows in the table


# --------------------------------------------------------------------------- configs
def config_from(namespace: Mapping[str, Any], **fixed: Any) -> TrainConfig:
    """A TrainConfig from the entries of ``namespace`` whose names are TrainConfig fields (a
    notebook passes ``globals()`` right after its parameters cell, so a parameter named
    ``steps`` or ``backbone`` IS that field), then ``fixed`` on top."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in namespace.items() if k in names}
    values.update(fixed)
    return TrainConfig.from_dict(values, source="notebook parameters")


def synthetic_uri(
    ids: int, per_id: int, seed: int = 0, difficulty: str = "medium", style: str = "flat"
) -> str:
    """The ``synthetic:`` data URI of ``ids`` identities x ``per_id`` images (``style``: a
    renderer style, :data:`nbfacelib.data.synthetic.STYLES`; ``flat`` is left out of the URI)."""
    uri = f"synthetic:ids={int(ids)},per_id={int(per_id)},seed={int(seed)},difficulty={difficulty}"
    return uri if style == "flat" else f"{uri},style={style}"


def config_key(config: TrainConfig, prerendered: bool = False) -> str:
    """sha256 (hex) of the config fields that change the trained weights (all but
    :data:`NOT_IN_KEY`), plus whether synthetic data was pre-rendered (the folder reader
    draws batches differently from the on-the-fly renderer)."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in KEY_OMITTED_AT_DEFAULT}
    values = {
        k: v
        for k, v in config.to_dict().items()
        if k not in NOT_IN_KEY and not (k in defaults and v == defaults[k])
    }
    values["_prerendered"] = bool(prerendered)
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _is_synthetic(uri: str) -> bool:
    return str(uri) == "synthetic" or str(uri).startswith("synthetic:")


@dataclass(frozen=True)
class Variant:
    """One training recipe of the grid: ``name`` (its label in tables and figures), the
    ``config`` (its seed is replaced by each of the grid's seeds) and extra ``labels`` copied
    into every table row (e.g. ``{"loss": "arcface", "s": 8.0}``). ``evalsets``: the names of
    the grid's evaluation sets this variant is evaluated on (None: all), so a side variant can
    skip an expensive set."""

    name: str
    config: TrainConfig
    labels: Mapping[str, Any] = field(default_factory=dict)
    evalsets: Sequence[str] | None = None


# --------------------------------------------------------------------------- table
class Table:
    """Tidy rows (list of dicts), filtered and summarised without pandas."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()):
        self.rows = [dict(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def where(self, **match: Any) -> Table:
        """Rows whose columns equal ``match`` (a list/tuple/set value matches any member)."""

        def ok(row, k, v):
            return row.get(k) in v if isinstance(v, list | tuple | set | frozenset) else row.get(k) == v

        return Table(r for r in self.rows if all(ok(r, k, v) for k, v in match.items()))

    def unique(self, column: str) -> list[Any]:
        """Distinct values of ``column`` in first-seen order."""
        return list(dict.fromkeys(r[column] for r in self.rows if column in r))

    def by_seed(self, metric: str, **match: Any) -> dict[int, float]:
        """``{seed: value}`` of ``metric`` among the rows matching ``match`` (one per seed; an
        ambiguous match is an error): what :mod:`nbfacelib.report.stats` pairs by seed."""
        out: dict[int, float] = {}
        for r in self.where(metric=metric, **match):
            if r["seed"] in out:
                raise ValueError(
                    f"by_seed({metric!r}, {match}): several rows for seed {r['seed']}; narrow it"
                )
            out[int(r["seed"])] = float(r["value"])
        return out

    def by_variant(self, metric: str, **match: Any) -> dict[str, dict[int, float]]:
        """``{variant: {seed: value}}`` of ``metric`` among the rows matching ``match``: the
        data a :class:`~nbfacelib.report.stats.Rule` naming variants judges."""
        sel = self.where(metric=metric, **match)
        return {v: sel.by_seed(metric, variant=v) for v in sel.unique("variant")}

    def values(self, metric: str, **match: Any) -> np.ndarray:
        return np.array([float(r["value"]) for r in self.where(metric=metric, **match)])

    def summary(
        self, metrics: Sequence[str], by: Sequence[str] = ("variant",), confidence: float = 0.95, **match: Any
    ) -> list[dict[str, Any]]:
        """One row per distinct ``by`` value: ``n`` (seeds) and, per metric, ``<m>_mean``,
        ``<m>_std`` (sample std; 0 for one seed) and ``<m>_ci`` (half-width of the Student-t
        interval of the mean; inf for one seed)."""
        from nbfacelib.report.stats import mean_interval

        sel = self.where(**match)
        keys = list(dict.fromkeys(tuple(r.get(b) for b in by) for r in sel.rows))
        out = []
        for key in keys:
            part = sel.where(**dict(zip(by, key, strict=True)))
            row: dict[str, Any] = dict(zip(by, key, strict=True))
            row["n"] = len(part.unique("seed"))
            for m in metrics:
                v = part.values(m)
                if len(v) == 0:
                    continue
                iv = mean_interval(v, confidence)
                row[f"{m}_mean"] = float(v.mean())
                row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                row[f"{m}_ci"] = iv.hi - iv.estimate
            out.append(row)
        return out

    def to_pandas(self):
        """A pandas DataFrame of the rows (pandas imported here: it is optional)."""
        import pandas as pd

        return pd.DataFrame(self.rows)


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One trained (or loaded) model of the grid."""

    variant: str
    seed: int
    config: TrainConfig  # as trained (data may be the pre-rendered folder)
    out: Path
    summary: dict[str, Any]
    train_seconds: float
    cached: bool

    @property
    def metrics_path(self) -> Path:
        """The run's ``metrics.jsonl`` (training curves)."""
        return self.out / "metrics.jsonl"


@dataclass
class GridResult:
    """``table``: tidy rows; ``runs``; ``evaluations[(variant, seed, evalset)]``: the
    :class:`~nbfacelib.eval.evalsets.EvalResult` (embeddings, norms, ROC) of the runs kept
    (``keep_seeds`` first seeds of each variant; metrics of every run are in the table)."""

    table: Table
    runs: list[Run]
    evaluations: dict[tuple[str, int, str], Any]
    evalsets: dict[str, Any]

    def run(self, variant: str, seed: int) -> Run:
        for r in self.runs:
            if (r.variant, r.seed) == (variant, seed):
                return r
        raise KeyError(f"no run of variant {variant!r} with seed {seed}")


def prerender(uri: str, input_size: int, root: Path, log: Callable[[str], None]) -> Path:
    """Render the synthetic data set ``uri`` once into ``root/data/<hash>`` (PNG, lossless, at
    the renderer's size: 112, or 160 when asked) and return the folder; a complete folder from
    an earlier call is reused. Identities and samples are those the on-the-fly reader draws
    from (identity i, samples 0..per_id-1)."""
    import torch

    from nbfacelib.data import open_dataset
    from nbfacelib.data.folder import write_image_folder

    size = input_size if input_size in (112, 160) else None
    folder = root / "data" / hashlib.sha256(f"{uri}|{size}".encode()).hexdigest()[:16]
    done = folder / ".complete"
    if done.is_file():
        return folder
    tic = time.perf_counter()
    ds = open_dataset(uri, size=size)
    labels = torch.as_tensor(ds.labels)
    samples = torch.arange(len(labels)) % ds.per_identity

    def items():
        for s in range(0, len(labels), 256):
            images, _ = ds.render_batch(labels[s : s + 256], samples[s : s + 256])
            yield from zip(images, labels[s : s + 256].tolist(), strict=True)

    write_image_folder(folder, items(), ext="png", overwrite=True)
    done.write_text(uri + "\n")
    log(f"rendered {uri} once into {folder} ({time.perf_counter() - tic:.1f} s)")
    return folder


def _train_or_load(config: TrainConfig, out: Path, key: str) -> tuple[dict[str, Any], float, bool]:
    from nbfacelib.train import fit

    marker = out / "grid_run.json"
    if marker.is_file() and (out / "model.safetensors").is_file():
        saved = json.loads(marker.read_text())
        if saved.get("key") == key:
            return saved["summary"], float(saved["train_seconds"]), True
    tic = time.perf_counter()
    summary = fit(config.replace(out=str(out), resume=False))
    seconds = time.perf_counter() - tic
    marker.write_text(json.dumps({"key": key, "summary": summary, "train_seconds": seconds}, default=str))
    return summary, seconds, False


def _g(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _device(summary: Mapping[str, Any], cached: bool) -> str:
    """Where to evaluate: the training device, or for a run loaded from the cache this
    machine's (a cache made on a GPU machine is read on a laptop too)."""
    if not cached:
        return str(summary.get("device", "cpu"))
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_grid(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    evalsets: Mapping[str, Any],
    root: str | Path,
    prerender_data: bool = True,
    keep_seeds: int = 1,
    log: Callable[[str], None] | None = print,
    outputs: Sequence[str] = ("embedding",),
) -> GridResult:
    """Train each variant with each seed (``config.replace(seed=s)``), evaluate every model on
    every evaluation set, and return a :class:`GridResult`. ``root``: where runs and
    pre-rendered data are cached. ``keep_seeds``: keep the embeddings / ROC of the first that
    many seeds of each variant (for maps, norm plots and ROC figures). ``outputs``: what each
    model is scored by (:data:`~nbfacelib.models.output.MODEL_OUTPUTS`: ``"embedding"``, and
    ``"trunk"``, its flattened trunk features), each row labelled with its ``output``; the kept
    embeddings are the first output's."""
    from nbfacelib.eval.evalsets import evaluate_model
    from nbfacelib.models.output import MODEL_OUTPUTS, model_output
    from nbfacelib.train import load_backbone

    say = log or (lambda _msg: None)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"run_grid: variant names must be distinct, got {names}")
    if not seeds:
        raise ValueError("run_grid: give at least one seed")
    for v in variants:
        unknown = sorted(set(v.evalsets or ()) - set(evalsets))
        if unknown:
            raise ValueError(
                f"run_grid: variant {v.name!r} names evaluation sets {unknown} not in {list(evalsets)}"
            )
    unknown = sorted(set(outputs) - set(MODEL_OUTPUTS))
    if unknown or not outputs:
        raise ValueError(f"run_grid: outputs must be some of {sorted(MODEL_OUTPUTS)}, got {list(outputs)}")
    root = Path(root)
    rows: list[dict[str, Any]] = []
    runs: list[Run] = []
    evaluations: dict[tuple[str, int, str], Any] = {}
    for variant in variants:
        for i, seed in enumerate(seeds):
            cfg = variant.config.replace(seed=int(seed))
            pre = prerender_data and _is_synthetic(cfg.data)
            key = config_key(cfg, prerendered=pre)
            trained = (
                cfg.replace(data=f"folder:{prerender(cfg.data, cfg.input_size, root, say)}") if pre else cfg
            )
            out = root / "runs" / key[:16]
            summary, seconds, cached = _train_or_load(trained, out, key)
            run = Run(variant.name, int(seed), trained, out, summary, seconds, cached)
            runs.append(run)
            base = {"variant": variant.name, "seed": int(seed), **dict(variant.labels)}
            train_numbers = {
                "first_loss": summary.get("first_loss"),
                "final_loss": summary.get("final_loss"),
                "skipped_steps": summary.get("skipped_steps"),
                "train_seconds": seconds,
            }
            for metric, value in train_numbers.items():
                if value is not None and math.isfinite(float(value)):
                    rows.append({**base, "evalset": TRAIN_SET, "metric": metric, "value": float(value)})
            model = load_backbone(out, device=_device(summary, cached))
            line = []
            for name, es in evalsets.items():
                if variant.evalsets is not None and name not in variant.evalsets:
                    continue
                for k, output in enumerate(outputs):
                    res = evaluate_model(model_output(model, output), es)
                    rows.extend(
                        {**base, "evalset": name, "output": output, "metric": m, "value": v}
                        for m, v in res.metrics.items()
                    )
                    if i < keep_seeds and k == 0:
                        evaluations[(variant.name, int(seed), name)] = res
                    label = name if len(outputs) == 1 else f"{name} ({output})"
                    line.append(f"{label} acc {res.metrics['accuracy']:.4f}")
            say(
                f"{variant.name} seed {seed}: "
                + ("loaded" if cached else f"trained in {seconds:.0f} s")
                + f", loss {_g(summary.get('first_loss'))} -> {_g(summary.get('final_loss'))}"
                + (f", {', '.join(line)}" if line else "")
            )
    return GridResult(Table(rows), runs, evaluations, dict(evalsets))

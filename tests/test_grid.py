"""experiments/grid.py: variants x seeds trained once through fit(), cached by config hash,
synthetic data rendered once, and a tidy table."""

from __future__ import annotations

import math

import pytest

from nbfacelib.experiments import grid
from nbfacelib.train import TrainConfig

TINY = {
    "backbone": "ir_tiny",
    "embedding_size": 16,
    "input_size": 48,
    "data": grid.synthetic_uri(8, 4),
    "val": [],
    "steps": 2,
    "batch_size": 8,
    "warmup_steps": 0,
    "device": "cpu",
    "progress": False,
}


def test_config_from_namespace_and_key():
    namespace = {"steps": 7, "backbone": "mbf_tiny", "seeds": [0, 1], "train_ids": 9, "lr": 0.05}
    cfg = grid.config_from(namespace, data="synthetic:ids=9,per_id=2", val=[])
    assert (cfg.steps, cfg.backbone, cfg.lr, cfg.data) == (7, "mbf_tiny", 0.05, "synthetic:ids=9,per_id=2")
    with pytest.raises(ValueError, match="unknown training option"):
        grid.config_from({}, stepz=3)
    # the key ignores where a run is written and how it logs, not what it trains
    assert grid.config_key(cfg) == grid.config_key(cfg.replace(out="elsewhere", progress=True, log_every=3))
    assert grid.config_key(cfg) != grid.config_key(cfg.replace(lr=0.1))
    assert grid.config_key(cfg) != grid.config_key(cfg, prerendered=True)
    # an option added later leaves the key of a run at its default as it was, and moves it when set
    import hashlib
    import json

    old = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in grid.NOT_IN_KEY | {"rand_conv", "hue", "crop_shift"}
    }
    old["_prerendered"] = False
    blob = json.dumps(old, sort_keys=True, default=str).encode()
    assert grid.config_key(cfg) == hashlib.sha256(blob).hexdigest()
    assert grid.config_key(cfg) != grid.config_key(cfg.replace(rand_conv=0.5))
    assert grid.config_key(cfg) != grid.config_key(cfg.replace(hue=0.1))
    assert grid.config_key(cfg) != grid.config_key(cfg.replace(crop_shift=0.3))
    assert grid.synthetic_uri(5, 2, seed=1) == "synthetic:ids=5,per_id=2,seed=1,difficulty=medium"


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:sample_pairs:UserWarning")  # a few identities: folds share them
def test_run_grid_trains_once_caches_and_tabulates(tmp_path, monkeypatch):
    from nbfacelib.eval.evalsets import evaluate_model, synthetic_heldout
    from nbfacelib.models.output import TrunkFeatures
    from nbfacelib.train import load_backbone

    base = TrainConfig(**TINY)
    variants = [
        grid.Variant("softmax", base.replace(loss="softmax"), {"loss": "softmax"}),
        grid.Variant("arcface", base.replace(loss="arcface", loss_kwargs={"s": 8.0}), {"loss": "arcface"}),
        # the same recipe under another name: trained once, shared
        grid.Variant("arcface-again", base.replace(loss="arcface", loss_kwargs={"s": 8.0})),
    ]
    es = {"synthetic": synthetic_heldout(6, 4, 40, identity_offset=8, input_size=48)}
    result = grid.run_grid(variants, [0, 3], es, tmp_path, log=None)
    assert [(r.variant, r.seed, r.cached) for r in result.runs] == [
        ("softmax", 0, False),
        ("softmax", 3, False),
        ("arcface", 0, False),
        ("arcface", 3, False),
        ("arcface-again", 0, True),
        ("arcface-again", 3, True),
    ]
    assert len(list((tmp_path / "runs").iterdir())) == 4
    assert len(list((tmp_path / "data").iterdir())) == 1  # rendered once for every run
    assert result.runs[0].config.data.startswith("folder:") and result.runs[0].metrics_path.is_file()
    t = result.table
    acc = t.by_seed("accuracy", variant="arcface", evalset="synthetic")
    assert set(acc) == {0, 3} and all(0 <= v <= 1 for v in acc.values())
    assert acc == t.by_seed("accuracy", variant="arcface-again", evalset="synthetic")
    assert t.by_variant("accuracy", evalset="synthetic")["arcface"] == acc
    assert {"accuracy", "auc", "acc_q0", "acc_q2"} <= set(t.where(evalset="synthetic").unique("metric"))
    assert {"first_loss", "final_loss", "train_seconds"} <= set(t.where(evalset="train").unique("metric"))
    row = t.where(variant="softmax", seed=3, metric="accuracy").rows
    assert len(row) == 1 and row[0]["loss"] == "softmax" and row[0]["evalset"] == "synthetic"
    summary = t.summary(["accuracy"], evalset="synthetic")
    assert [(s["variant"], s["n"]) for s in summary] == [("softmax", 2), ("arcface", 2), ("arcface-again", 2)]
    assert math.isfinite(summary[0]["accuracy_ci"])
    assert ("softmax", 0, "synthetic") in result.evaluations  # keep_seeds=1: the first seed only
    assert ("softmax", 3, "synthetic") not in result.evaluations
    with pytest.raises(ValueError, match="several rows"):
        t.by_seed("accuracy", evalset="synthetic")  # every variant: ambiguous

    # a re-run with the same configs loads every model instead of training it
    def no_training(*args, **kw):
        raise AssertionError("fit() called for a cached run")

    monkeypatch.setattr("nbfacelib.train.fit", no_training)
    again = grid.run_grid(variants[:2], [3, 0], es, tmp_path, log=None)
    assert all(r.cached for r in again.runs)
    assert again.table.by_seed("accuracy", variant="arcface", evalset="synthetic") == acc
    # a variant may skip evaluation sets; naming one the grid lacks is an error
    only = grid.Variant("softmax", variants[0].config, evalsets=())
    skipped = grid.run_grid([only], [0], es, tmp_path, log=None)
    assert skipped.table.unique("evalset") == ["train"]
    with pytest.raises(ValueError, match="not in"):
        grid.run_grid([grid.Variant("x", base, evalsets=["lfw"])], [0], es, tmp_path, log=None)
    # a model scored by its trunk features too: rows labelled by output, the embedding's unchanged
    both = grid.run_grid(variants[1:2], [0], es, tmp_path, log=None, outputs=("embedding", "trunk"))
    assert both.table.by_seed("accuracy", variant="arcface", evalset="synthetic", output="embedding") == {
        0: acc[0]
    }
    trunk = both.table.by_seed("accuracy", variant="arcface", evalset="synthetic", output="trunk")
    model = load_backbone(both.runs[0].out, device="cpu")
    assert trunk == {0: evaluate_model(TrunkFeatures(model), es["synthetic"]).metrics["accuracy"]}
    with pytest.raises(ValueError, match="several rows"):
        both.table.by_seed("accuracy", variant="arcface", evalset="synthetic")  # two outputs: ambiguous
    with pytest.raises(ValueError, match="outputs must be some of"):
        grid.run_grid(variants[1:2], [0], es, tmp_path, log=None, outputs=("pooled",))
    with pytest.raises(ValueError, match="distinct"):
        grid.run_grid([variants[0], variants[0]], [0], es, tmp_path, log=None)

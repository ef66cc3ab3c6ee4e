"""experiments/partial_fc_scale: memory counted per part, what fits in a budget (and the error
when it does not), the sample-rate check, one timed step, and 2 gloo ranks = one process."""

from __future__ import annotations

import json
import math

import pytest

from nbfacelib.experiments import partial_fc_scale as ps
from nbfacelib.models import build_backbone


def test_classifier_bytes_counts_each_part():
    b = ps.classifier_bytes(1000, 8, 4, sample_rate=0.1)
    # centres, gradient, SGD momentum: 3 x C x D floats; 100 sampled centres + normalised copy;
    # (B, k) logits three times
    assert b["centres"] == b["gradient"] == b["optimizer"] == 1000 * 8 * 4
    assert b["sampled_centres"] == 2 * 100 * 8 * 4 and b["logits"] == 3 * 4 * 100 * 4
    assert b["total"] == 3 * 32000 + 6400 + 4800
    full = ps.classifier_bytes(1000, 8, 4, sample_rate=1.0, optimizer="adamw")
    assert (
        full["sampled_centres"] == 0 and full["optimizer"] == 2 * 32000 and full["logits"] == 3 * 4 * 1000 * 4
    )


def test_classes_that_fit_is_the_largest_count_within_the_budget():
    for rate in (1.0, 0.1):
        n = ps.classes_that_fit(10 * 2**20, 512, 128, rate)
        assert ps.classifier_bytes(n, 512, 128, rate)["total"] <= 10 * 2**20
        assert ps.classifier_bytes(n + 1, 512, 128, rate)["total"] > 10 * 2**20
    assert ps.classes_that_fit(10 * 2**20, 512, 128, 0.1) > ps.classes_that_fit(10 * 2**20, 512, 128, 1.0)
    assert ps.classes_that_fit(1, 512, 128) == 0


def test_a_class_count_that_does_not_fit_names_the_memory_needed():
    with pytest.raises(
        ValueError,
        match=r"1,000,000 classes do not fit: the classifier needs 7\.15 GiB.*at most [\d,]+ classes fit",
    ):
        ps.check_fits(1_000_000, 2**30, 512, 128, 1.0)
    assert ps.check_fits(1000, 2**30, 512, 128, 1.0)["total"] < 2**30


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan])
def test_sample_rate_outside_zero_one_is_an_error(bad):
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        ps.check_sample_rate(bad)
    with pytest.raises(ValueError, match="sample_rate"):
        ps.classifier_bytes(100, 8, 4, bad)


def test_f2c_memory_does_not_grow_with_the_classes():
    backbone = build_backbone("ir_tiny", embedding_size=16, input_size=32)
    one = ps.f2c_bytes(64, 16, 8, backbone)
    params = sum(p.numel() * 4 for p in backbone.parameters()) + sum(
        b.numel() * b.element_size() for b in backbone.buffers()
    )
    assert one["gallery_network"] == params and one["pool"] == 64 * 16 * 4
    rows = ps.memory_table([1000, 100_000], 16, 8, [1.0, 0.1], {"queue_size": 64, "backbone": backbone})
    f2c = [r["MiB"] for r in rows if r["method"] == "F2C"]
    fc = [r["MiB"] for r in rows if r["method"] == "full FC"]
    assert f2c[0] == f2c[1] and fc[1] > 50 * fc[0]


def test_classifier_step_is_timed():
    assert ps.classifier_step_seconds(200, 0.1, dim=16, batch=8, steps=2) > 0


def test_two_gloo_ranks_equal_one_process():
    r = ps.model_parallel_check(num_classes=9, batch=6, dim=8)
    assert r["rank_classes"] == [(0, 5), (5, 4)]
    assert r["max_loss_diff"] < 1e-12 and r["max_emb_grad_diff"] < 1e-12 and r["max_weight_grad_diff"] < 1e-12
    assert len(set(r["rank_losses"])) == 1


def test_sampled_centres_keep_the_batch_positives_when_r_c_is_smaller():
    assert ps.sampled_centres(1000, 32, 0.1) == 100  # ceil(r C) > B
    assert ps.sampled_centres(64, 32, 0.1) == 32  # ceil(r C) = 7 < B: up to B positives kept
    assert ps.sampled_centres(20, 32, 0.1) == 20  # never more than C
    assert ps.sampled_centres(64, 32, 1.0) == 64
    small = ps.classifier_bytes(64, 8, 32, 0.1)
    assert small["sampled_centres"] == 2 * 32 * 8 * 4 and small["logits"] == 3 * 32 * 32 * 4


def test_f2c_queue_size_is_one_percent_at_least_the_batch():
    assert ps.f2c_queue_size(100_000, 128) == 1000
    assert ps.f2c_queue_size(1000, 64) == 64  # 1% = 10 < batch
    assert ps.f2c_queue_size(40, 64) == 40  # never more than the identities
    with pytest.raises(ValueError, match=r"queue fraction must be in \(0, 1\]"):
        ps.f2c_queue_size(1000, 64, 0.0)


def test_f2c_classes_that_fit_is_the_largest_count_within_the_budget():
    backbone = build_backbone("ir_tiny", embedding_size=16, input_size=32)
    budget = 50 * 2**20
    n = ps.f2c_classes_that_fit(budget, 16, 8, backbone)

    def total(c):
        return ps.f2c_bytes(ps.f2c_queue_size(c, 8), 16, 8, backbone)["total"]

    assert total(n) <= budget < total(n + 1)
    assert n > 50 * ps.classes_that_fit(budget, 16, 8, 1.0)
    assert ps.f2c_classes_that_fit(1000, 16, 8, backbone) == 0  # the gallery network alone is larger
    rows = ps.memory_table([1000, 100_000], 16, 8, [1.0], {"fraction": 0.01, "backbone": backbone})
    f2c = [r["MiB"] for r in rows if r["method"] == "F2C"]
    assert f2c[1] > f2c[0]  # the pool grows with the identities (1% of them), the rest does not
    assert f2c[1] * 2**20 == total(100_000)


def test_memory_ratios_are_to_the_full_softmax():
    ratios = ps.memory_ratios(1000, 8, 4, [1.0, 0.1])
    assert ratios[1.0] == 1.0
    assert (
        ratios[0.1]
        == ps.classifier_bytes(1000, 8, 4, 0.1)["total"] / ps.classifier_bytes(1000, 8, 4, 1.0)["total"]
    )


def test_sweep_variants_name_rates_label_methods_and_limit_costly_sets():
    from nbfacelib.train.config import TrainConfig

    base = TrainConfig(loss="arcface", loss_kwargs={"s": 8.0}, steps=2)
    vs = ps.sweep_variants(base, [1.0, 0.5, 0.1], {"queue_size": 16}, full_evalsets=["synthetic"])
    assert [v.name for v in vs] == ["r=1", "r=0.5", "r=0.1", "F2C"]
    assert [v.config.sample_rate for v in vs] == [1.0, 0.5, 0.1, 1.0]
    assert vs[1].evalsets == ["synthetic"] and vs[0].evalsets is None and vs[2].evalsets is None
    assert vs[3].config.loss == "f2c" and vs[3].config.loss_kwargs == {"queue_size": 16}
    assert vs[0].labels == {"method": "full FC", "sample_rate": 1.0} and vs[3].labels["method"] == "F2C"
    assert len(ps.sweep_variants(base, [1.0, 0.1])) == 2  # no F2C without its keywords
    with pytest.raises(ValueError, match="must include 1.0"):
        ps.sweep_variants(base, [0.5, 0.1])
    with pytest.raises(ValueError, match="distinct"):
        ps.sweep_variants(base, [1.0, 0.1, 0.1])
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        ps.sweep_variants(base, [1.0, 1.5])


def test_step_time_sweep_pairs_rates_by_repeat():
    t = ps.step_time_sweep(200, [1.0, 0.1], dim=8, batch=4, repeats=2, steps=1)
    assert set(t) == {1.0, 0.1} and all(set(v) == {0, 1} for v in t.values())
    assert all(s > 0 for v in t.values() for s in v.values())


def test_run_step_seconds_skips_the_first_interval(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 5, "images_per_s": 1.0}, {"step": 10, "images_per_s": 100.0}]
    lines += [{"step": 15, "images_per_s": 200.0}, {"step": 20, "images_per_s": 50.0}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert ps.run_step_seconds(path, 32) == 32 / 100.0  # median of 100, 200, 50
    path.write_text(json.dumps(lines[0]) + "\n")
    assert math.isnan(ps.run_step_seconds(path, 32))


def test_c6_and_c7_rules_judge_the_measured_numbers():
    acc_full = {0: 0.80, 1: 0.82, 2: 0.81}
    close = {0: 0.80, 1: 0.815, 2: 0.812}
    slow, fast = {0: 1.0, 1: 1.1, 2: 1.05}, {0: 0.3, 1: 0.32, 2: 0.31}
    data = {"r=1": acc_full, "r=0.1": close, "memory_ratio_r=0.1": 0.8, "step_seconds_r=1": slow}
    assert ps.c6_rule(0.1).judge({**data, "step_seconds_r=0.1": fast}).holds is True
    assert (
        ps.c6_rule(0.1).judge({**data, "step_seconds_r=0.1": {k: v + 1 for k, v in slow.items()}}).holds
        is False
    )
    worse = {0: 0.70, 1: 0.71, 2: 0.705}
    assert ps.c6_rule(0.1).judge({**data, "r=0.1": worse, "step_seconds_r=0.1": fast}).holds is False
    assert ps.c6_rule(0.1).judge({**data, "r=0.1": {0: 0.8}, "step_seconds_r=0.1": fast}).holds is None
    assert ps.c7_rule().judge({"F2C": close, "r=1": acc_full, "f2c_memory_ratio": 0.05}).holds is True
    assert ps.c7_rule().judge({"F2C": close, "r=1": acc_full, "f2c_memory_ratio": 1.5}).holds is False


def test_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    from nbfacelib.viz import partial_fc as pv

    rows = [
        {"classes": c, "method": m, "MiB": c * k}
        for c in (10, 100)
        for m, k in (("full FC", 1.0), ("F2C", 0.01))
    ]
    assert len(pv.memory_figure(rows, budget_mib=50).axes[0].lines) == 3  # two methods + the budget
    fig = pv.ratio_figure([{"sample_rate": 1.0, "m": 1.0}, {"sample_rate": 0.1, "m": 0.8}], {"m": "memory"})
    assert list(fig.axes[0].lines[0].get_ydata()) == [0.8, 1.0]
    assert len(pv.fit_figure({"full FC": 10, "F2C": 1000}, 1.0).axes[0].patches) == 2


def test_sampled_centres_with_identity_balanced_batches():
    assert ps.sampled_centres(64, 32, 0.1, images_per_identity=2) == 16  # P = 16 identities a batch
    assert ps.sampled_centres(1000, 32, 0.1, images_per_identity=2) == 100
    pk = ps.classifier_bytes(64, 8, 32, 0.1, images_per_identity=2)
    assert pk["sampled_centres"] == 2 * 16 * 8 * 4 and pk["logits"] == 3 * 32 * 16 * 4
    assert (
        ps.memory_ratios(64, 8, 32, [0.1], images_per_identity=2)[0.1]
        == pk["total"] / (ps.classifier_bytes(64, 8, 32, 1.0)["total"])
    )


def test_fit_names_the_memory_a_classifier_needs_when_it_does_not_fit():
    from nbfacelib.losses import build_objective
    from nbfacelib.train.engine import check_objective_fits

    objective = build_objective("arcface", embedding_size=64, num_classes=100_000, sample_rate=0.1)
    centres = 100_000 * 64 * 4
    # SGD: centres + gradient + momentum; AdamW: two state tensors
    assert check_objective_fits(objective, "sgd", 2**40) == 3 * centres
    assert check_objective_fits(objective, "adamw", 2**40) == 4 * centres
    with pytest.raises(
        ValueError,
        match=r"with 100,000 classes does not fit on cuda:0: it needs 0\.07 GiB.*0\.01 GiB are free",
    ):
        check_objective_fits(objective, "sgd", 2**30 // 100, "cuda:0")

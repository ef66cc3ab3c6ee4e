"""experiments/partial_fc_scale: memory counted per part, what fits in a budget (and the error
when it does not), the sample-rate check, one timed step, and 2 gloo ranks = one process."""

from __future__ import annotations

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

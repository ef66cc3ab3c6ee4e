"""The TopoFR objective: weighted ArcFace against a per-sample loop, ISA term, RSP in prepare,
the official SDE switch, the ablation switches (all off = the arcface objective)."""

import math

import pytest
import torch

from nbfacelib.losses import build_objective, list_objectives
from nbfacelib.losses.gum import fit_gum
from nbfacelib.losses.objective import Batch
from nbfacelib.losses.topofr import TopoFR
from nbfacelib.models.output import BackboneOutput
from nbfacelib.topology import alignment_loss, input_distances, pairwise_distances

B, D, C = 12, 8, 5


def setup(seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    obj = TopoFR(embedding_size=D, num_classes=C, s=8.0, **kw)
    with torch.no_grad():
        obj.weight.copy_(torch.randn(C, D, generator=g))
    emb = torch.randn(B, D, generator=g, requires_grad=True)
    labels = torch.randint(0, C, (B,), generator=g)
    images = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    return obj, emb, labels, images


def run(obj, emb, labels, images):
    batch = Batch(images=images, labels=labels, step=0, model=torch.nn.Identity())
    with torch.no_grad():
        x = obj.prepare(images, labels, batch)
    return obj(BackboneOutput(embedding=emb), labels, batch), x


def loop_arcface(emb, weight, labels, s, m):
    """Per sample with the math module: ArcFace logits, CE, softmax."""
    out = []
    for e, y in zip(emb.tolist(), labels.tolist(), strict=True):
        ne = math.sqrt(sum(v * v for v in e))
        cos = []
        for w in weight.tolist():
            nw = math.sqrt(sum(v * v for v in w))
            cos.append(sum(a * b for a, b in zip(e, w, strict=True)) / (ne * nw))
        theta = math.acos(cos[y])
        assert theta + m < math.pi  # the test stays out of the fallback region
        logits = [s * c for c in cos]
        logits[y] = s * math.cos(theta + m)
        top = max(logits)
        z = sum(math.exp(v - top) for v in logits)
        probs = [math.exp(v - top) / z for v in logits]
        out.append((top + math.log(z) - logits[y], probs))
    return out


def test_weighted_arcface_matches_the_per_sample_loop():
    obj, emb, labels, images = setup(alpha=0.0, rsp_p=0.0)
    out, _ = run(obj, emb, labels, images)
    ref = loop_arcface(emb.detach(), obj.weight.detach(), labels, 8.0, 0.5)
    ce = torch.tensor([r[0] for r in ref], dtype=torch.float64)
    probs = [r[1] for r in ref]
    entropy = torch.tensor([-sum(p * math.log(p) for p in ps if p > 0) for ps in probs], dtype=torch.float64)
    p_gt = torch.tensor([ps[y] for ps, y in zip(probs, labels.tolist(), strict=True)], dtype=torch.float64)
    h = fit_gum(entropy, iters=10).hard
    w = (1 + h) * (1 - p_gt)
    assert float(out.loss.detach()) == pytest.approx(float((w * ce).mean()), rel=1e-5)
    torch.testing.assert_close(out.weights.double(), w, rtol=1e-4, atol=1e-6)
    assert not out.weights.requires_grad
    out.loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert obj.weight.grad is not None and obj.weight.grad.abs().sum() > 0


def test_lambda_is_the_exponent_of_one_plus_h():
    obj, emb, labels, images = setup(alpha=0.0, rsp_p=0.0, lam=2.0)
    sd = obj.damage(obj.logits(emb, labels), labels)
    torch.testing.assert_close(sd.weights, (1 + sd.gum.hard) ** 2 * (1 - sd.p_gt))


def test_isa_term_is_alpha_times_the_alignment_of_clean_inputs_and_embeddings():
    for form in ("paper", "official"):
        off, emb, labels, images = setup(alpha=0.0, rsp_p=0.0, sde=False)
        on, _, _, _ = setup(alpha=0.25, rsp_p=0.0, sde=False, form=form)
        base, _ = run(off, emb, labels, images)
        full, _ = run(on, emb, labels, images)
        isa = alignment_loss(input_distances(images), pairwise_distances(emb), form=form)
        assert float((full.loss - base.loss).detach()) == pytest.approx(0.25 * float(isa), rel=1e-5)
        assert float(full.logs["isa"]) == pytest.approx(float(isa), rel=1e-6)


def test_prepare_perturbs_and_isa_reads_clean_or_perturbed_inputs():
    torch.manual_seed(0)
    obj, emb, labels, images = setup(alpha=1.0, rsp_p=1.0, sde=False)
    out, x = run(obj, emb, labels, images)
    assert not torch.equal(x, images) and float(out.logs["rsp_fraction"]) == 1.0
    clean = alignment_loss(input_distances(images), pairwise_distances(emb))
    assert float(out.logs["isa"]) == pytest.approx(float(clean), rel=1e-6)
    torch.manual_seed(0)
    obj2, _, _, _ = setup(alpha=1.0, rsp_p=1.0, sde=False, isa_input="perturbed")
    out2, x2 = run(obj2, emb, labels, images)
    assert torch.equal(x2, x)
    pert = alignment_loss(input_distances(x2), pairwise_distances(emb))
    assert float(out2.logs["isa"]) == pytest.approx(float(pert), rel=1e-6)
    assert float(pert) != pytest.approx(float(clean), rel=1e-3)
    obj3, _, _, _ = setup(rsp_p=0.0)
    _, x3 = run(obj3, emb, labels, images)
    assert x3 is images


def test_official_switch_changes_the_weights_and_truncates_p_gt():
    obj, emb, labels, images = setup(alpha=0.0, rsp_p=0.0)
    off, _, _, _ = setup(alpha=0.0, rsp_p=0.0, official=True)
    logits = obj.logits(emb, labels)
    paper, official = obj.damage(logits, labels), off.damage(logits, labels)
    assert not torch.allclose(paper.weights, official.weights)
    # (1 - trunc(p_gt)) is 1 for every p_gt < 1: the weight is the GUM factor alone
    torch.testing.assert_close(official.weights, 1 + official.gum.hard)
    sure = torch.full((2, C), -30.0)
    sure[:, 0] = 30.0  # softmax rounds to exactly 1.0 in float32: the official factor is 0
    assert torch.equal(off.damage(sure, torch.zeros(2, dtype=torch.long)).weights, torch.zeros(2))


def test_everything_off_is_the_arcface_objective():
    obj, emb, labels, images = setup(alpha=0.0, rsp_p=0.0, sde=False)
    arc = build_objective("arcface", embedding_size=D, num_classes=C, s=8.0)
    with torch.no_grad():
        arc.pfc.weight.copy_(obj.weight)
    ours, _ = run(obj, emb, labels, images)
    batch = Batch(images=images, labels=labels, step=0, model=torch.nn.Identity())
    ref = arc(BackboneOutput(embedding=emb), labels, batch)
    assert float(ours.loss.detach()) == pytest.approx(float(ref.loss.detach()), rel=1e-6)


def test_registered_and_bad_arguments():
    assert "topofr" in list_objectives()
    obj = build_objective("topofr", embedding_size=D, num_classes=C, alpha=0.05)
    assert isinstance(obj, TopoFR) and obj.alpha == 0.05
    for kw, msg in [
        ({"alpha": -1.0}, "alpha"),
        ({"form": "sym"}, "form"),
        ({"isa_input": "noisy"}, "isa_input"),
        ({"em_iters": 0}, "em_iters"),
        ({"rsp_p": 2.0}, "p must be in"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TopoFR(embedding_size=D, num_classes=C, **kw)

"""PFE: the head's formula, the frozen backbone, the MLS loss and score against per-sample
loops, template fusion both ways (paper and official code), and P x K training batches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nbfacelib.losses import build_objective
from nbfacelib.losses.objective import Batch
from nbfacelib.losses.pfe import fuse, mls_distance, mutual_likelihood_score
from nbfacelib.models import build_backbone
from nbfacelib.models.output import BackboneOutput
from nbfacelib.models.pfe_head import PFEHead, PFEModel


def test_head_formula_and_initialisation():
    torch.manual_seed(0)
    head = PFEHead(12, 5).eval()
    assert head.gamma.item() == pytest.approx(1e-4) and head.beta.item() == -7.0
    assert head.bn2.weight is None and head.bn2.bias is None  # no centre / scale
    with torch.no_grad():
        head.gamma.fill_(0.7)  # away from the initial value, so the formula shows
        head.bn1.running_mean.uniform_(-0.1, 0.1)
        x = torch.randn(3, 12)
        out = head(x.view(3, 3, 2, 2))  # a feature map is flattened
        z = head.bn2(head.fc2(torch.relu(head.bn1(head.fc1(x)))))
    for b in range(3):
        for d in range(5):
            ref = math.log(1e-6 + math.exp(0.7 * float(z[b, d]) - 7.0))
            assert float(out[b, d]) == pytest.approx(ref, rel=1e-5)
    # at the initial gamma, beta every image starts near log(e^-7 + 1e-6)
    fresh = PFEHead(12, 5).eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), torch.full((3, 5), math.log(math.exp(-7) + 1e-6)), atol=1e-3)


def test_pfe_backbone_is_frozen_and_returns_mean_and_variance():
    torch.manual_seed(0)
    model = build_backbone("pfe", embedding_size=16, input_size=32)
    assert isinstance(model, PFEModel) and model.embedding_size == 16
    base = build_backbone("ir_tiny", embedding_size=16, input_size=32)
    model.base.load_state_dict(base.state_dict())
    model.train()
    assert not model.base.training and model.head.training
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = model(x)
    assert isinstance(out, BackboneOutput) and out.log_sigma2.shape == (4, 16)
    with torch.no_grad():
        torch.testing.assert_close(out.embedding, base.eval()(x))  # the mean IS the backbone's embedding
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out.log_sigma2.sum().backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.base.state_dict().items())  # BN stats too
    assert all(not p.requires_grad for p in model.base.parameters())


def test_pfe_on_a_trained_run(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    base = build_backbone("ir_tiny", embedding_size=16, input_size=32)
    save_file(base.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps({"backbone": "ir_tiny", "embedding_size": 16, "input_size": 32, "backbone_kwargs": {}})
    )
    model = build_backbone("pfe", embedding_size=16, input_size=32, base_run=str(tmp_path))
    assert all(torch.equal(model.base.state_dict()[k], v) for k, v in base.state_dict().items())
    with pytest.raises(ValueError, match="its backbone is 16-d at 32 px, but embedding_size=8"):
        build_backbone("pfe", embedding_size=8, input_size=32, base_run=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="needs model.safetensors and config.json"):
        build_backbone("pfe", embedding_size=16, input_size=32, base_run=str(tmp_path / "nowhere"))


def _loop_mls_distance(m1, m2, s1, s2):
    return math.fsum(
        (a - b) ** 2 / (u + v) + math.log(u + v) for a, b, u, v in zip(m1, m2, s1, s2, strict=True)
    )


def test_mls_loss_matches_a_loop_over_genuine_pairs():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=g, dtype=torch.float64)
    log_s2 = torch.randn(6, 4, generator=g, dtype=torch.float64) - 2
    labels = torch.tensor([0, 0, 1, 2, 1, 1])
    obj = build_objective("pfe_mls", embedding_size=4, num_classes=3)
    batch = Batch(images=torch.zeros(6, 3, 2, 2), labels=labels, step=0, model=torch.nn.Identity())
    out = obj(BackboneOutput(embedding=emb, log_sigma2=log_s2), labels, batch)
    mu = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in emb.tolist()]
    s2 = [[math.exp(v) for v in row] for row in log_s2.tolist()]
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j and labels[i] == labels[j]]
    assert len(pairs) == 8  # (0,1) and the three pairs of class 1, both orders
    ref = sum(_loop_mls_distance(mu[i], mu[j], s2[i], s2[j]) for i, j in pairs) / len(pairs)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)  # computed in float32
    assert out.logs["mls_pairs"] == 4.0
    hm = np.mean([4 / sum(1 / v for v in row) for row in s2])
    assert float(out.logs["sigma2_hmean"]) == pytest.approx(hm, rel=1e-5)
    # no genuine pair: zero, still differentiable
    lone = torch.arange(6)
    ls = log_s2.clone().requires_grad_()
    zero = obj(BackboneOutput(embedding=emb, log_sigma2=ls), lone, batch).loss
    zero.backward()
    assert zero.item() == 0.0 and ls.grad is not None
    with pytest.raises(ValueError, match="pfe_mls needs the backbone's log_sigma2"):
        obj(BackboneOutput(embedding=emb), labels, batch)


def test_mutual_likelihood_score_and_its_use_as_a_verification_score():
    g = torch.Generator().manual_seed(3)
    mu1 = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    mu2 = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    s1 = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1
    s2 = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.1  # (B, 1): one variance per image
    score = mutual_likelihood_score(mu1, mu2, s1, s2)
    for b in range(5):
        d = _loop_mls_distance(mu1[b].tolist(), mu2[b].tolist(), s1[b].tolist(), [float(s2[b, 0])] * 3)
        assert float(score[b]) == pytest.approx(-0.5 * d - 1.5 * math.log(2 * math.pi), rel=1e-12)
    torch.testing.assert_close(mls_distance(mu1, mu2, s1, s2), -2 * score - 3 * math.log(2 * math.pi))
    # with one shared variance the MLS ranks pairs as the cosine does
    from nbfacelib.eval.verification import evaluate_scores

    rng = np.random.default_rng(0)
    same = np.arange(40) % 2 == 0
    a = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(40, 8))), dim=1)
    b = torch.nn.functional.normalize(
        a + torch.as_tensor(np.where(same[:, None], 0.3, 3.0) * rng.normal(size=(40, 8))), dim=1
    )
    shared = torch.full((40, 1), 0.05, dtype=torch.float64)
    mls = mutual_likelihood_score(a, b, shared, shared).numpy()
    cos = (a * b).sum(1).numpy()
    assert np.array_equal(np.argsort(mls), np.argsort(cos))
    assert evaluate_scores(mls, same)["auc"] == pytest.approx(evaluate_scores(cos, same)["auc"])


def test_fusion_paper_and_official():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    s2 = torch.tensor([[0.1, 1.0], [1.0, 0.1], [0.5, 0.5]], dtype=torch.float64)
    mean, var = fuse(mu, s2)
    w = [[1 / v for v in row] for row in s2.tolist()]
    raw = [
        sum(mu[i, d].item() * w[i][d] for i in range(3)) / sum(w[i][d] for i in range(3)) for d in range(2)
    ]
    norm = math.hypot(*raw)
    assert mean.tolist() == pytest.approx([r / norm for r in raw])
    assert var.tolist() == pytest.approx([1 / sum(w[i][d] for i in range(3)) for d in range(2)])
    mean_o, var_o = fuse(mu, s2, variance="official")
    torch.testing.assert_close(mean_o, mean)  # the same attention-weighted mean
    assert var_o.tolist() == [0.1, 0.1]  # per-dimension minimum
    # one image: itself (normalised); equal variances: the plain average
    m1, v1 = fuse(mu[:1], s2[:1])
    assert m1.tolist() == [1.0, 0.0] and v1.tolist() == pytest.approx([0.1, 1.0])
    flat, _ = fuse(mu, torch.full((3, 1), 0.2, dtype=torch.float64))
    torch.testing.assert_close(flat, torch.nn.functional.normalize(mu.mean(0), dim=0))
    with pytest.raises(ValueError, match="variance must be 'paper' or 'official'"):
        fuse(mu, s2, variance="mean")
    with pytest.raises(ValueError, match=r"fuse: mu \(n, D\)"):
        fuse(mu, s2[:2])


def test_identity_groups_in_training_batches():
    from nbfacelib.train.config import TrainConfig
    from nbfacelib.train.data import TrainBatches

    cfg = TrainConfig(
        data="synthetic:ids=10,per_id=6,seed=0",
        steps=1,
        batch_size=16,
        images_per_identity=4,
        input_size=112,
        val=[],
        device="cpu",
    )
    data = TrainBatches(cfg, torch.device("cpu"))
    _, labels = data.batch(0)
    groups = labels.view(4, 4)
    assert (groups == groups[:, :1]).all()  # four images of one identity per group
    images, _ = data.batch(0)
    for k in range(4):  # distinct samples within a group: no two identical renders
        flat = images[4 * k : 4 * k + 4].flatten(1).float()
        assert torch.cdist(flat, flat).add(torch.eye(4) * 1e9).min() > 0
    orl = TrainBatches(cfg.replace(data="orl", input_size=64), torch.device("cpu"))
    _, labels = orl.batch(3)
    assert (labels.view(4, 4) == labels.view(4, 4)[:, :1]).all()
    pos = orl._positions(3)
    assert len(set(pos.tolist())) == 16
    with pytest.raises(ValueError, match="images_per_identity=3: must be >= 1 and divide batch_size=16"):
        cfg.replace(images_per_identity=3).__post_init__()

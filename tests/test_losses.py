"""Margin heads against plain per-sample Python loops (math module, no torch) at known angles,
in float32 and float64, plus gradcheck and the official-vs-paper gradient option."""

import math

import pytest
import torch
import torch.nn.functional as F

from nbfacelib.losses import (
    CombinedMargin,
    CurricularFace,
    MagFace,
    MarginHead,
    build_margin,
    list_margins,
)

DEG = math.pi / 180

# Rows: target angle 30 deg (easy), 90 deg, 170 deg (past pi - m for every margin preset:
# the fallback region), 120 deg; negatives spread over 10..175 deg.
TARGET_DEG = [30.0, 90.0, 170.0, 120.0]
LABELS = [0, 2, 3, 1]
ANGLES_DEG = [
    [30.0, 80.0, 25.0, 175.0, 60.0],
    [100.0, 65.0, 90.0, 110.0, 95.0],
    [150.0, 160.0, 10.0, 170.0, 178.0],
    [45.0, 120.0, 140.0, 100.0, 121.0],
]


def cos_matrix(dtype):
    return torch.tensor([[math.cos(a * DEG) for a in row] for row in ANGLES_DEG], dtype=dtype)


# -- independent references: scalar Python, one sample at a time ---------------------------
def ref_combined_target(c, m1, m2, m3):
    theta = math.acos(c)
    if m1 * theta + m2 <= math.pi:
        return math.cos(m1 * theta + m2) - m3
    u = math.pi - (math.pi - m2) / m1  # the angular margin (m1 - 1) theta + m2 at theta_t
    return c - max(u * math.sin(u), 1 - math.cos(u)) - m3


def ref_arcface_official_target(c, m):
    # arcface_torch's easy_margin=False ArcFace, written from its formula.
    if c > math.cos(math.pi - m):
        return c * math.cos(m) - math.sqrt(1 - c * c) * math.sin(m)
    return c - math.sin(math.pi - m) * m


def ref_ce(logit_rows, labels):
    total = 0.0
    for z, y in zip(logit_rows, labels):
        top = max(z)
        total += top + math.log(math.fsum(math.exp(v - top) for v in z)) - z[y]
    return total / len(labels)


def ref_margin_logits(cos_rows, labels, s, target_fn):
    out = []
    for row, y in zip(cos_rows, labels):
        out.append([s * (target_fn(c) if j == y else c) for j, c in enumerate(row)])
    return out


PRESETS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "sphereface": (1.35, 0.0, 0.0),
    "combined": (1.0, 0.3, 0.2),
}


def test_registry_lists_every_head_and_builds_presets():
    assert set(list_margins()) >= {
        "softmax",
        "norm_softmax",
        "arcface",
        "cosface",
        "sphereface",
        "combined",
        "curricularface",
        "magface",
    }
    for name, (m1, m2, m3) in PRESETS.items():
        head = build_margin(name)
        assert isinstance(head, CombinedMargin) and (head.m1, head.m2, head.m3) == (m1, m2, m3)
        assert head.s == 64.0
    head = build_margin("arcface", s=32.0, m2=0.4)
    assert (head.s, head.m1, head.m2, head.m3) == (32.0, 1.0, 0.4, 0.0)
    assert build_margin("cosface", m3=0.35).m3 == 0.35
    # ``m`` is each preset's own margin in the paper's notation
    assert build_margin("arcface", m=0.3).m2 == 0.3
    assert build_margin("cosface", m=0.35).m3 == 0.35
    assert build_margin("sphereface", m=1.5).m1 == 1.5
    with pytest.raises(ValueError, match="m or m2"):
        build_margin("arcface", m=0.3, m2=0.4)
    assert build_margin("softmax").normalize is False
    with pytest.raises(ValueError, match="unknown margin head 'nope'"):
        build_margin("nope")
    with pytest.raises(TypeError, match="margin"):
        build_margin("arcface", margin=0.3)  # presets take CombinedMargin's keywords


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(PRESETS))
def test_combined_presets_match_per_sample_loop(name, dtype):
    m1, m2, m3 = PRESETS[name]
    cos = cos_matrix(dtype)
    head = build_margin(name)
    logits = head(cos, torch.tensor(LABELS))
    rows = cos.double().tolist()
    ref = ref_margin_logits(rows, LABELS, 64.0, lambda c: ref_combined_target(c, m1, m2, m3))
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(logits, torch.tensor(ref, dtype=dtype), **tol)
    loss = F.cross_entropy(logits, torch.tensor(LABELS))
    assert loss.item() == pytest.approx(ref_ce(ref, LABELS), rel=1e-5 if dtype == torch.float32 else 1e-12)
    # 170 deg is in the fallback region for all presets but CosFace (which never needs one)
    theta_t = (math.pi - m2) / m1
    assert (170 * DEG > theta_t) == (name != "cosface")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arcface_is_arcface_torch_formula_including_fallback(dtype):
    m = 0.5
    head = build_margin("arcface", m2=m)
    degrees = [0.5, 30.0, 90.0, 150.0, 151.0, 152.0, 170.0, 179.5]
    cos = torch.tensor([[math.cos(a * DEG)] for a in degrees], dtype=dtype)
    out = head(cos, torch.zeros(len(degrees), dtype=torch.long)).squeeze(1) / 64.0
    ref = [ref_arcface_official_target(math.cos(a * DEG), m) for a in degrees]
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for a, got, want in zip(degrees, out.tolist(), ref):
        assert got == pytest.approx(want, abs=tol), a
    # 152 and 170 deg (> 180 - 28.65) use the fallback cos - m sin(pi - m)
    assert out[-2].item() == pytest.approx(math.cos(170 * DEG) - math.sin(math.pi - m) * m, abs=tol)


@pytest.mark.parametrize(
    "m1,m2,m3", [(1.0, 0.5, 0.0), (1.35, 0.0, 0.0), (1.0, 0.3, 0.2), (1.2, 0.4, 0.1), (1.0, 2.6, 0.0)]
)
def test_target_logit_is_monotone_decreasing_in_theta(m1, m2, m3):
    # (1, 2.6, 0): a margin past ~2.33 rad where the Taylor fallback alone would jump up.
    theta = torch.linspace(1e-4, math.pi - 1e-4, 20001, dtype=torch.float64)
    head = CombinedMargin(s=1.0, m1=m1, m2=m2, m3=m3)
    out = head(torch.cos(theta).unsqueeze(1), torch.zeros(len(theta), dtype=torch.long)).squeeze(1)
    assert bool((out[1:] < out[:-1]).all())
    # and always a penalty: the target logit never exceeds the plain cosine
    assert bool((out <= torch.cos(theta) + 1e-12).all())


def target_derivative(c, m1, m2, m3):
    """d target / d cos, written from calculus: main branch m1 sin(m1 theta + m2) / sin theta."""
    theta = math.acos(c)
    if m1 * theta + m2 <= math.pi:
        return m1 * math.sin(m1 * theta + m2) / math.sin(theta)
    return 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["arcface", "sphereface", "combined"])
def test_margin_grad_paper_vs_official(name, dtype):
    """margin_grad=True: the gradient through the margin; False: forward identical, gradient as
    if the target had no margin (arcface_torch). Both against the closed form s (p - y) / B * f'."""
    m1, m2, m3 = PRESETS[name]
    labels = torch.tensor(LABELS)
    results = {}
    for grad_flag in (True, False):
        cos = cos_matrix(dtype).requires_grad_()
        head = CombinedMargin(64.0, m1, m2, m3, margin_grad=grad_flag)
        logits = head(cos, labels)
        F.cross_entropy(logits, labels).backward()
        results[grad_flag] = (logits.detach(), cos.grad)
    assert torch.equal(results[True][0], results[False][0])  # bit-identical forward

    logits = results[True][0].double()
    p = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, 5).double()
    base = 64.0 * (p - onehot) / len(LABELS)  # d loss / d cos with an identity target map
    scale = torch.ones_like(base)
    for i, y in enumerate(LABELS):
        scale[i, y] = target_derivative(math.cos(TARGET_DEG[i] * DEG), m1, m2, m3)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(results[True][1].double(), base * scale, **tol)
    torch.testing.assert_close(results[False][1].double(), base, **tol)
    # They differ exactly at the targets outside the fallback (derivative != 1 there).
    diff = (results[True][1] - results[False][1]).abs()
    assert diff[0, 0] > 1e-3 and diff[1, 2] > 1e-3 and diff[2, 3] < 1e-6


def test_cosface_margin_has_identity_gradient_and_exact_forward():
    cos = cos_matrix(torch.float64)
    out = build_margin("cosface", m3=0.35)(cos, torch.tensor(LABELS))
    expect = cos.clone()
    expect[range(4), LABELS] -= 0.35
    assert torch.equal(out, expect * 64.0)


def test_softmax_and_norm_softmax_scale_only():
    raw = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    assert torch.equal(build_margin("softmax")(raw, labels), raw)
    assert torch.equal(build_margin("softmax", s=2.0)(raw, labels), 2 * raw)
    cos = raw / 4
    assert torch.equal(build_margin("norm_softmax", s=30.0)(cos, labels), 30.0 * cos)
    assert build_margin("norm_softmax").normalize and not build_margin("softmax").normalize


def test_rows_without_positive_are_only_scaled():
    cos = cos_matrix(torch.float64)
    labels = torch.tensor([0, -1, 3, -1])
    out = build_margin("arcface")(cos, labels)
    torch.testing.assert_close(out[1], 64.0 * cos[1], rtol=0, atol=0)
    torch.testing.assert_close(out[3], 64.0 * cos[3], rtol=0, atol=0)
    assert out[0, 0] < 64.0 * cos[0, 0]
    # loss() ignores them
    full = build_margin("arcface").loss(cos, labels)
    kept = build_margin("arcface").loss(cos[[0, 2]], labels[[0, 2]])
    assert full.item() == pytest.approx(kept.item(), rel=1e-12)


def test_invalid_hyper_parameters_are_named():
    with pytest.raises(ValueError, match="m2"):
        CombinedMargin(m2=4.0)
    with pytest.raises(ValueError, match="m1"):
        CombinedMargin(m1=0.0)
    with pytest.raises(ValueError, match="s \\(logit scale\\)"):
        CombinedMargin(s=0.0)
    with pytest.raises(ValueError, match="labels"):
        build_margin("arcface")(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


# -- gradcheck ---------------------------------------------------------------------------
def _random_case(seed, b=5, c=7):
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(b, c, generator=g, dtype=torch.float64) * 1.9 - 0.95).requires_grad_()
    labels = torch.randint(0, c, (b,), generator=g)
    with torch.no_grad():  # one target deep in the fallback region (170 deg)
        cos[0, labels[0]] = math.cos(170 * DEG)
    norms = (torch.rand(b, generator=g, dtype=torch.float64) * 90 + 15).requires_grad_()
    return cos, labels, norms


@pytest.mark.parametrize("name", ["norm_softmax", "arcface", "cosface", "sphereface", "combined"])
def test_gradcheck_combined_family(name):
    cos, labels, _ = _random_case(1)
    head = build_margin(name)
    assert torch.autograd.gradcheck(lambda c: head.loss(c, labels), (cos,))
    assert torch.autograd.gradcheck(lambda c: head(c, labels), (cos,))


def test_gradcheck_curricular_face():
    cos, labels, _ = _random_case(2)
    head = CurricularFace().eval()  # eval: t stays put between gradcheck's evaluations
    head.t.fill_(0.3)
    assert torch.autograd.gradcheck(lambda c: head(c, labels), (cos,))


def test_gradcheck_magface_through_cos_and_norms():
    cos, labels, norms = _random_case(3)
    head = MagFace()
    assert torch.autograd.gradcheck(lambda c, a: head.loss(c, labels, a), (cos, norms))


# -- CurricularFace ----------------------------------------------------------------------
def ref_curricular_logits(cos_rows, labels, s, m, t):
    out = []
    for row, y in zip(cos_rows, labels):
        cy = row[y]
        threshold = math.cos(math.acos(cy) + m)
        new = []
        for j, c in enumerate(row):
            if j == y:
                new.append(ref_combined_target(cy, 1.0, m, 0.0))
            elif c > threshold:
                new.append(c * (t + c))
            else:
                new.append(c)
        out.append([s * v for v in new])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_curricular_face_t_update_and_hard_negatives(dtype):
    head = CurricularFace(s=64.0, m=0.5, t_momentum=0.01).to(dtype)
    assert head.t.item() == 0.0 and "t" in head.state_dict()
    cos = cos_matrix(dtype)
    labels = torch.tensor(LABELS)
    rows = cos.double().tolist()
    mean1 = sum(math.cos(a * DEG) for a in TARGET_DEG) / 4
    t1 = 0.01 * mean1
    out = head(cos, labels)  # training mode: t is updated first, then used
    assert head.t.item() == pytest.approx(t1, rel=1e-6)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    ref = ref_curricular_logits(rows, LABELS, 64.0, 0.5, t1)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=dtype), **tol)
    # second step: EMA
    head(cos, labels)
    assert head.t.item() == pytest.approx(0.01 * mean1 + 0.99 * t1, rel=1e-6)
    # eval mode freezes t
    head.eval()
    t2 = head.t.item()
    head(cos, labels)
    assert head.t.item() == t2

    # hard-negative modulation at a known t: row 0 target 30 deg, threshold cos(58.6 deg):
    # 25 deg is hard -> c (t + c); 60, 80, 175 deg are easy -> unchanged
    head.t.fill_(0.5)
    out = head(cos, labels) / 64.0
    c25, c60 = math.cos(25 * DEG), math.cos(60 * DEG)
    assert out[0, 2].item() == pytest.approx(c25 * (0.5 + c25), rel=1e-5)
    assert out[0, 4].item() == pytest.approx(c60, rel=1e-5)
    assert int(head.last_hard_negatives) == sum(
        1
        for row, y in zip(rows, LABELS)
        for j, c in enumerate(row)
        if j != y and c > math.cos(math.acos(row[y]) + 0.5)
    )
    assert int(head.last_negatives) == 4 * 4


def test_curricular_face_hard_weight_grows_with_t():
    # the claim C9 rests on: a hard negative's logit c (t + c) rises with t
    cos = cos_matrix(torch.float64)
    head = CurricularFace().eval()
    values = []
    for t in (0.0, 0.3, 0.6):
        head.t.fill_(t)
        values.append(head(cos, torch.tensor(LABELS))[0, 2].item())
    assert values[0] < values[1] < values[2]


def test_curricular_rows_without_positive_are_not_modulated():
    head = CurricularFace().eval()
    head.t.fill_(0.4)
    cos = cos_matrix(torch.float64)
    out = head(cos, torch.tensor([-1, 2, 3, -1]))
    torch.testing.assert_close(out[0], 64.0 * cos[0], rtol=0, atol=0)


# -- MagFace -----------------------------------------------------------------------------
def test_magface_lower_bound():
    bound = MagFace.lambda_g_lower_bound(64.0, 10.0, 110.0, 0.45, 0.8)
    k = 0.35 / 100
    assert bound == pytest.approx(64 * k * 110**2 * 10**2 / (110**2 - 10**2))
    assert bound == pytest.approx(22.59, abs=0.01)
    MagFace(lambda_g=35.0)
    MagFace(lambda_g=22.6)
    with pytest.raises(ValueError, match="lambda_g=20"):
        MagFace(lambda_g=20.0)
    with pytest.raises(ValueError, match="l_a"):
        MagFace(l_a=120.0)


def test_magface_g_and_margin_values():
    head = MagFace()
    a = torch.tensor([5.0, 10.0, 60.0, 110.0, 200.0], dtype=torch.float64)
    g = head.g(a).tolist()
    assert g[0] == g[1] == pytest.approx(10 / 110**2 + 1 / 10)  # clamped to l_a
    assert g[2] == pytest.approx(60 / 110**2 + 1 / 60)
    assert g[3] == g[4] == pytest.approx(2 / 110)  # a/u_a^2 + 1/a = 2/u_a at u_a
    assert head.margin(a).tolist() == pytest.approx([0.45, 0.45, 0.625, 0.8, 0.8])
    # g is decreasing on [l_a, u_a]: larger norm, smaller penalty
    grid = torch.linspace(10, 110, 101, dtype=torch.float64)
    assert bool((head.g(grid)[1:] < head.g(grid)[:-1]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_magface_matches_per_sample_loop(dtype):
    head = MagFace()
    cos = cos_matrix(dtype)
    norms = torch.tensor([5.0, 35.0, 80.0, 300.0], dtype=dtype)
    logits = head(cos, torch.tensor(LABELS), norms)
    ref_rows = []
    for row, y, a in zip(cos.double().tolist(), LABELS, norms.tolist()):
        a = min(max(a, 10.0), 110.0)
        m = 0.45 + 0.35 * (a - 10) / 100
        ref_rows.append(
            [64.0 * (ref_arcface_official_target(c, m) if j == y else c) for j, c in enumerate(row)]
        )
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(logits, torch.tensor(ref_rows, dtype=dtype), **tol)
    reg = 35.0 * sum(min(max(a, 10), 110) / 110**2 + 1 / min(max(a, 10), 110) for a in norms.tolist()) / 4
    loss = head.loss(cos, torch.tensor(LABELS), norms)
    assert loss.item() == pytest.approx(ref_ce(ref_rows, LABELS) + reg, rel=1e-5)
    with pytest.raises(ValueError, match="norms"):
        head(cos, torch.tensor(LABELS))


def test_every_registered_head_is_a_margin_head_with_finite_gradients():
    cos, labels, norms = _random_case(4)
    for name in list_margins():
        head = build_margin(name)
        assert isinstance(head, MarginHead) and head.__doc__
        c = cos.detach().clone().requires_grad_()
        loss = head.loss(c, labels, norms.detach())
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(c.grad).all(), name
    # an embedding exactly on its centre (cos = 1) keeps a finite gradient
    c = torch.tensor([[1.0, 0.2, -0.3]], requires_grad=True)
    build_margin("arcface").loss(c, torch.tensor([0])).backward()
    assert torch.isfinite(c.grad).all()

"""Notebook 01, ArcFace and the margin family (document 003): what is specific to it.

Generic machinery lives in the study kit (training grid :mod:`nbfacelib.experiments.grid`,
evaluation sets :mod:`nbfacelib.eval.evalsets`, verdict rules :mod:`nbfacelib.report.stats`,
result figures :mod:`nbfacelib.viz.results`). Here:

- C13 (:func:`unit_distance_check`): for unit vectors ``||a - b||^2 = 2 - 2 cos(a, b)``, checked
  on random pairs whose cosines cover [-1, 1].
- Margin geometry (:func:`target_logits`, :func:`decision_regions`, :func:`margin_explorer`):
  the target logit against the angle, and the binary decision boundaries in the
  (theta_1, theta_2) plane (ArcFace paper, Fig. 5), computed by calling the real heads'
  ``apply_margin``, so the figures show what the training code does, fallback past
  ``m1*theta + m2 > pi`` included. :func:`document_arcface_logit` is the document's
  ``ArcMarginModel`` formula (its listing, in numpy) to compare the library head with.
- Model cost (:func:`complexity_table`): parameters and MACs of the backbones (C15).
- C14 / C15 set-up: the margin scale rule (:func:`adacos_scale`), the grid's variants
  (:func:`margin_variants`: softmax vs CosFace vs ArcFace at the rule's scale and at other
  scales, and a MobileFaceNet with the IResNet's recipe) and the claims' rules
  (:func:`c14_rule`, :func:`c15_rule`), which the notebook states before training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nbfacelib.report.stats import AllOf, AtLeast, Below, Greater, Rule

# --------------------------------------------------------------------------------------- C13


def unit_distance_check(
    n: int = 100_000, dim: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Measure ``| ||a - b||^2 - (2 - 2 a.b) |`` over ``n`` random pairs of unit vectors.

    ``a`` is uniform on the sphere; ``b = t a + sqrt(1 - t^2) u`` with ``u`` a random unit vector
    orthogonal to ``a`` and ``t ~ U(-1, 1)``, so the cosines cover [-1, 1] evenly (two random
    vectors in 512-d would all have cosines near 0). Both are L2-normalised in ``dtype`` and the
    two sides are computed in ``dtype`` as written (difference then squared norm; dot product).

    Returns ``cos``, ``d2`` and ``abs_err`` (numpy, length n), ``max_abs_err``,
    ``mean_abs_err``, ``max_norm_err`` (max | ||a|| - 1 | after normalisation in ``dtype``),
    ``eps`` (machine epsilon of ``dtype``), ``n``, ``dim``, ``dtype``.
    """
    g = torch.Generator().manual_seed(int(seed))
    a = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    u = torch.randn(n, dim, generator=g, dtype=torch.float64)
    u = F.normalize(u - (u * a).sum(1, keepdim=True) * a, dim=1)
    t = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    b = t * a + (1 - t.square()).sqrt() * u
    a, b = F.normalize(a.to(dtype), dim=1), F.normalize(b.to(dtype), dim=1)
    d2 = (a - b).square().sum(1)
    cos = (a * b).sum(1)
    err = (d2 - (2 - 2 * cos)).abs()
    norm_err = torch.cat([a.norm(dim=1), b.norm(dim=1)]).sub(1).abs().max()
    return {
        "cos": cos.double().numpy(),
        "d2": d2.double().numpy(),
        "abs_err": err.double().numpy(),
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
        "max_norm_err": float(norm_err),
        "eps": float(torch.finfo(dtype).eps),
        "n": int(n),
        "dim": int(dim),
        "dtype": str(dtype).replace("torch.", ""),
    }


# ------------------------------------------------------------------------- margin geometry

#: Margins of the geometry figures: insightface's combined-margin settings (REFERENCE.md).
DEFAULT_MARGINS = {"m_sphere": 1.35, "m_cos": 0.4, "m_arc": 0.5, "m_comb": (1.0, 0.3, 0.2)}


def geometry_heads(
    m_sphere: float = 1.35,
    m_cos: float = 0.4,
    m_arc: float = 0.5,
    m_comb: Sequence[float] | None = (1.0, 0.3, 0.2),
) -> dict[str, Any]:
    """The heads drawn in the geometry figures, built by name from ``nbfacelib.losses``:
    softmax (no margin), SphereFace ``cos(m_sphere*theta)``, CosFace ``cos(theta) - m_cos``,
    ArcFace ``cos(theta + m_arc)`` (radians), and the combined ``cos(m1 theta + m2) - m3``
    (left out when ``m_comb`` is None). Units as in :class:`~nbfacelib.losses.CombinedMargin`."""
    from nbfacelib.losses import build_margin

    heads = {
        "softmax": build_margin("softmax"),
        f"SphereFace m1={m_sphere:g}": build_margin("sphereface", m=m_sphere),
        f"CosFace m3={m_cos:g}": build_margin("cosface", m=m_cos),
        f"ArcFace m2={m_arc:g}": build_margin("arcface", m=m_arc),
    }
    if m_comb is not None:
        m1, m2, m3 = m_comb
        heads[f"combined ({m1:g}, {m2:g}, {m3:g})"] = build_margin("combined", m1=m1, m2=m2, m3=m3)
    return heads


def _head_logits(head, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``head.apply_margin`` divided by the head's scale: the logits in cosine units.

    Plain softmax takes raw inner products; for unit embeddings and centres (as drawn here)
    they are the cosines, so the same input serves every head."""
    with torch.no_grad():
        return head.apply_margin(cos, labels) / head.s


def target_logits(heads: dict[str, Any], thetas_deg: np.ndarray | None = None) -> dict[str, Any]:
    """Target logit (before the scale s) of each head against the angle theta_y to the class
    centre, from ``head.apply_margin``. Returns ``{"theta_deg": (n,), name: (n,) ...}``."""
    theta = np.linspace(0.0, 180.0, 361) if thetas_deg is None else np.asarray(thetas_deg, float)
    cos = torch.as_tensor(np.cos(np.deg2rad(theta)), dtype=torch.float64).unsqueeze(1)
    labels = torch.zeros(len(theta), dtype=torch.long)
    out: dict[str, Any] = {"theta_deg": theta}
    for name, head in heads.items():
        out[name] = _head_logits(head, cos, labels)[:, 0].numpy()
    return out


def decision_regions(heads: dict[str, Any], n: int = 181, max_deg: float = 180.0) -> dict[str, Any]:
    """Binary decision boundaries in the (theta_1, theta_2) plane (ArcFace paper, Fig. 5).

    A feature at angle theta_1 to centre W_1 and theta_2 to W_2 is "class 1 with margin" when
    ``apply_margin`` with label 1 gives it the larger logit: ``h(cos theta_1) > cos theta_2``; and
    symmetrically for class 2. Returns ``{"theta_deg": (n,), name: (f1, f2)}`` where ``f1[i, j] =
    logit_1 - logit_2`` with label 1 at ``theta_1 = theta[j]``, ``theta_2 = theta[i]`` (rows are
    theta_2), ``f2`` the same with label 2. Boundaries are the zero contours; where both are
    negative neither class is accepted: the decision margin (grey in the paper)."""
    theta = np.linspace(0.0, max_deg, n)
    t1, t2 = np.meshgrid(np.deg2rad(theta), np.deg2rad(theta))  # t1 varies along columns
    cos = torch.as_tensor(np.stack([np.cos(t1).ravel(), np.cos(t2).ravel()], 1), dtype=torch.float64)
    out: dict[str, Any] = {"theta_deg": theta}
    for name, head in heads.items():
        z1 = _head_logits(head, cos, torch.zeros(len(cos), dtype=torch.long))
        z2 = _head_logits(head, cos, torch.ones(len(cos), dtype=torch.long))
        out[name] = ((z1[:, 0] - z1[:, 1]).reshape(n, n).numpy(), (z2[:, 1] - z2[:, 0]).reshape(n, n).numpy())
    return out


def document_arcface_logit(cos: np.ndarray, m: float = 0.5, easy_margin: bool = False) -> np.ndarray:
    """The target logit of the document's ``ArcMarginModel`` (foamliu/InsightFace-v2), in numpy:
    ``phi = cos*cos(m) - sin*sin(m)``; ``easy_margin``: phi where cos > 0 else cos; otherwise
    phi where ``cos > cos(pi - m)`` else ``cos - sin(pi - m)*m``. Used to check our head
    against the document's code (and the InsightFace_Pytorch listing, whose ``mm = sin(m)*m`` is
    the same number)."""
    cos = np.asarray(cos, dtype=np.float64)
    sine = np.sqrt(np.clip(1.0 - cos**2, 0.0, None))
    phi = cos * math.cos(m) - sine * math.sin(m)
    if easy_margin:
        return np.where(cos > 0, phi, cos)
    return np.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


def compare_with_document(m: float = 0.5, n: int = 2001) -> float:
    """Max |our ArcFace target logit - the document's ``ArcMarginModel``| over cos in [-1, 1]."""
    from nbfacelib.losses import build_margin

    cos = np.linspace(-1.0, 1.0, n)
    ours = _head_logits(
        build_margin("arcface", m=m), torch.as_tensor(cos).unsqueeze(1), torch.zeros(n, dtype=torch.long)
    )[:, 0].numpy()
    return float(np.abs(ours - document_arcface_logit(cos, m)).max())


# ------------------------------------------------------------------------------- complexity


def complexity_table(
    backbones: Sequence[str], input_size: int = 112, embedding_size: int = 512
) -> list[dict]:
    """Parameters and MACs (insightface's "FLOPs") of each backbone at ``input_size``, counted
    on the meta device (shapes only), so r100 costs nothing. One dict per backbone."""
    from nbfacelib.models import build_backbone
    from nbfacelib.models.complexity import count_macs, count_parameters

    rows = []
    for name in backbones:
        with torch.device("meta"):
            model = build_backbone(name, embedding_size=embedding_size, input_size=input_size)
        rows.append(
            {
                "backbone": name,
                "input_size": input_size,
                "params_m": count_parameters(model) / 1e6,
                "gmacs": count_macs(model) / 1e9,
            }
        )
    return rows


def margin_explorer(m_sphere: float = 1.35, m_cos: float = 0.4, m_arc: float = 0.5, m_comb2: float = 0.3,
                    m_comb3: float = 0.2):  # fmt: skip
    """The figure behind the notebook's margin sliders: target logits (left) and the decision
    boundaries (right) of heads built with these margins (SphereFace m1, CosFace m3 cosine
    units, ArcFace m2 radians, combined (1, m_comb2, m_comb3))."""
    import matplotlib.pyplot as plt

    from nbfacelib.viz.margins import decision_boundary_figure, target_logit_figure

    heads = geometry_heads(m_sphere, m_cos, m_arc, (1.0, m_comb2, m_comb3))
    fig = plt.figure(figsize=(13, 4.4))
    grid = fig.add_gridspec(2, 5, width_ratios=[2.2, 1, 1, 1, 0.05])
    target_logit_figure(target_logits(heads), ax=fig.add_subplot(grid[:, 0]))
    names = list(heads)[1:]  # softmax's boundary is the diagonal drawn in every panel
    axes = [fig.add_subplot(grid[r, c]) for r in range(2) for c in (1, 2)]
    decision_boundary_figure(decision_regions({k: heads[k] for k in names}, n=121), axes=axes)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- C14 / C15 set-up

#: the heads whose logits the scale s multiplies (softmax works on raw inner products: no s)
MARGIN_LOSSES = ("sphereface", "cosface", "arcface", "combined", "curricularface", "magface")


def adacos_scale(num_classes: int) -> float:
    """AdaCos's fixed scale (Zhang et al., CVPR 2019, Sec. 4.1): ``s = sqrt(2) * ln(C - 1)``
    for ``C`` classes, the scale at which a sample at 90 degrees from every other centre and
    at 45 degrees from its own gets a usefully large, not saturated, probability. Unitless;
    about 5.9 for 64 classes and 16.1 for MS1MV2's 85k, where the papers use 64."""
    if num_classes < 3:
        raise ValueError(f"adacos_scale: need at least 3 classes, got {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


def scale_name(loss: str, s: float) -> str:
    """The variant name of margin head ``loss`` at another scale, e.g. ``"arcface s=64"``."""
    return f"{loss} s={s:g}"


def margin_variants(
    base,
    losses: Sequence[str],
    scale: float,
    compare_scales: Sequence[float] = (),
    small_backbone: str | None = None,
    small_loss: str = "arcface",
    compare_on: Sequence[str] | None = ("synthetic",),
):
    """The grid of notebook 01, each variant a change of ``base`` (a TrainConfig):

    - one variant per loss, named by the loss, every margin head at scale ``scale``;
    - each margin head again at each of ``compare_scales``, named :func:`scale_name`,
      evaluated on ``compare_on`` only (C14 at that scale needs nothing else);
    - ``small_backbone`` (C15) trained with ``small_loss`` at ``scale``, named by the backbone.

    Labels ``backbone``, ``loss`` and ``s`` (None for softmax) go into the table."""
    from nbfacelib.experiments.grid import Variant

    def head(loss: str, s: float, backbone: str, name: str, on=None):
        kwargs = {"s": float(s)} if loss in MARGIN_LOSSES else {}
        cfg = base.replace(backbone=backbone, loss=loss, loss_kwargs=kwargs)
        return Variant(name, cfg, {"backbone": backbone, "loss": loss, "s": kwargs.get("s")}, on)

    out = [head(loss, scale, base.backbone, loss) for loss in losses]
    for s in compare_scales:
        out += [
            head(loss, s, base.backbone, scale_name(loss, s), compare_on)
            for loss in losses
            if loss in MARGIN_LOSSES
        ]
    if small_backbone:
        out.append(head(small_loss, scale, small_backbone, small_backbone))
    return out


def c14_rule(
    softmax: str = "softmax", cosface: str = "cosface", arcface: str = "arcface", tol: float = 0.005
) -> Rule:
    """C14, ArcFace >= CosFace > softmax: CosFace above softmax (paired t-interval of the
    difference above 0) and ArcFace non-inferior to CosFace by ``tol`` (interval of arc - cos
    above -tol: at most half a point worse). The arguments are the variants' names."""
    return AllOf(Greater(cosface, softmax), AtLeast(arcface, cosface, tol=tol))


def c15_rule(small: str, large: str, close: float = 0.02, max_mac_ratio: float = 0.2) -> Rule:
    """C15, MobileFaceNet close to a much larger IResNet: "much larger" = the small model has
    under ``max_mac_ratio`` of the large one's MACs (``mac_ratio``), "close" = within ``close``
    accuracy (paired t-interval of small - large above -close)."""
    return AllOf(Below("mac_ratio", max_mac_ratio), AtLeast(small, large, tol=close))


def head_settings(losses: Sequence[str], loss_kwargs: dict[str, dict[str, Any]] | None = None) -> str:
    """ "softmax s=1; cosface s=16 m3=0.4; ..." read from the heads built as the runs build them."""
    from nbfacelib.losses import build_margin

    parts = []
    for loss in losses:
        head = build_margin(loss, **(loss_kwargs or {}).get(loss, {}))
        keys = [k for k in ("m1", "m2", "m3") if hasattr(head, k)]
        margins = "".join(
            f" {k}={getattr(head, k):g}" for k in keys if getattr(head, k) != (1.0 if k == "m1" else 0.0)
        )
        parts.append(f"{loss} s={head.s:g}{margins}")
    return "; ".join(parts)

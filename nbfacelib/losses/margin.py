"""Margin heads: the shared base :class:`MarginHead`, plain and normalised softmax, and the
combined (SphereFace m1, ArcFace m2, CosFace m3) margin with its named presets.

A head maps cosine logits ``cos`` (B, C) and labels (B,) to scaled logits for a softmax
cross-entropy. Every head goes through :meth:`MarginHead.apply_margin`; a subclass only says
what happens to the target logit (:meth:`MarginHead.target_logit`) and, if anything, to the
negatives (:meth:`MarginHead.modulate_negatives`, CurricularFace). Labels equal to -1 mark rows
whose positive class is not among the columns of ``cos`` (another rank's shard under Partial
FC); those rows only get the scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def angular_margin(
    cos: torch.Tensor, m1: float = 1.0, m2: float | torch.Tensor = 0.0, m3: float = 0.0
) -> torch.Tensor:
    """Target logit ``cos(m1 * theta + m2) - m3`` with ``theta = arccos(cos)`` (radians).

    ``m2`` may be a tensor broadcastable with ``cos`` (MagFace's per-sample margin).

    Past ``theta_t = (pi - m2) / m1`` the angle ``m1*theta + m2`` exceeds pi and the cosine
    would rise again, rewarding a worse angle. There the logit continues as
    ``cos(theta) - delta`` (decreasing in theta), the arcface_torch ``easy_margin=False`` form
    generalised: the angular margin at theta_t is ``u = m1*theta_t + m2 - theta_t = pi - theta_t``,
    and its first-order cost there, ``cos(theta_t) - cos(theta_t + u) ~ u*sin(theta_t)``, gives
    ``delta = u*sin(u) + m3``. For ArcFace (m1=1) ``u = m2`` and this is exactly arcface_torch's
    ``cos(theta) - sin(pi - m)*m``. The logit just before theta_t is ``-1 - m3`` and just after it
    is ``-cos(u) - delta``, which is lower as long as ``u*sin(u) >= 1 - cos(u)`` (u < ~2.33 rad,
    any margin in use); beyond that ``delta`` is raised to ``1 - cos(u) + m3`` so the target logit
    never increases with theta. With ``m1*pi + m2 <= pi`` (CosFace, m1 <= 1 - m2/pi) there is
    no fallback.
    """
    if m1 == 1.0 and isinstance(m2, int | float) and m2 == 0.0:
        return cos - m3  # CosFace: no angle needed (and exact, no arccos round trip)
    m2 = torch.as_tensor(m2, dtype=cos.dtype, device=cos.device)
    # arccos has an infinite slope at +-1: keep the angle strictly inside so the gradient
    # stays finite when an embedding sits exactly on its class centre.
    eps = torch.finfo(cos.dtype).eps
    theta = torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))
    main = torch.cos(m1 * theta + m2) - m3
    theta_t = ((math.pi - m2) / m1).clamp(max=math.pi)
    u = math.pi - theta_t
    delta = torch.maximum(u * torch.sin(u), 1.0 - torch.cos(u)) + m3
    return torch.where(cos > torch.cos(theta_t), main, cos - delta)


class MarginHead(nn.Module):
    """Base of every margin head: ``logits = s * h(cos)``, h changing the target logit (and,
    for some heads, the negatives).

    Class attributes a caller (Partial FC) reads:

    - ``normalize`` (True): ``cos`` are cosines of L2-normalised embeddings and centres. False
      (plain :class:`Softmax`): the caller passes raw inner products ``w_j . x`` instead.
    - ``needs_norms`` (False): :meth:`apply_margin` needs the embeddings' L2 norms (MagFace).

    ``margin_grad=False`` keeps the forward and makes the backward see no margin on the target
    logit (a straight-through copy), which is what arcface_torch's ``torch.no_grad()`` margin does.
    """

    normalize: bool = True
    needs_norms: bool = False

    def __init__(self, s: float = 64.0, margin_grad: bool = True):
        super().__init__()
        if not s > 0:
            raise ValueError(f"s (logit scale) must be > 0, got {s}")
        self.s = float(s)
        self.margin_grad = bool(margin_grad)

    # -- what a subclass changes ---------------------------------------------------------
    def target_logit(self, cos_y: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """The target logit before scaling, from the target cosine (B,). Default: no margin."""
        return cos_y

    def modulate_negatives(
        self, cos: torch.Tensor, cos_y: torch.Tensor, has_pos: torch.Tensor, all_reduce: AllReduce | None
    ) -> torch.Tensor:
        """The (B, C) logits before the target is written and before scaling. Default: ``cos``."""
        return cos

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor | None:
        """Per-sample term added to the loss (B,), from the embeddings' norms; None if none."""
        return None

    # -- shared --------------------------------------------------------------------------
    def apply_margin(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        norms: torch.Tensor | None = None,
        all_reduce: AllReduce | None = None,
    ) -> torch.Tensor:
        """Scaled logits (B, C) from cosine logits ``cos`` (B, C) and ``labels`` (B,).

        ``labels[i] = -1``: row i's positive is not a column of ``cos`` (row only scaled).
        ``norms`` (B,): L2 norms of the embeddings before normalisation (MagFace needs them).
        ``all_reduce``: sums a tensor over the ranks that hold the other column shards of the
        same rows (Partial FC passes it; None = ``cos`` holds every class). Only heads whose
        negatives depend on the target (CurricularFace) use it.
        """
        if cos.dim() != 2 or labels.shape != cos.shape[:1]:
            raise ValueError(
                f"cos must be (B, C) and labels (B,), got {tuple(cos.shape)} and {tuple(labels.shape)}"
            )
        if self.needs_norms and norms is None:
            raise ValueError(f"{type(self).__name__} needs the embeddings' norms: pass norms=(B,) tensor")
        has_pos = labels >= 0
        # Gather with -1 clamped to column 0 instead of indexing the positive rows, so no
        # device->host sync is needed; rows without a positive write their column 0 back.
        col = labels.clamp_min(0).unsqueeze(1)
        cos_y = cos.gather(1, col).squeeze(1)
        target = self.target_logit(cos_y, norms)
        if not self.margin_grad:
            # Forward value of the margin, gradient of the identity (arcface_torch's no-grad margin).
            target = target.detach() + (cos_y - cos_y.detach())
        logits = self.modulate_negatives(cos, cos_y, has_pos, all_reduce)
        target = torch.where(has_pos, target, logits.gather(1, col).squeeze(1))
        # Scale first, then write the targets in place: one (B, C) copy instead of two.
        return (logits * self.s).scatter_(1, col, (target * self.s).unsqueeze(1))

    def forward(self, cos, labels, norms=None, all_reduce=None) -> torch.Tensor:
        return self.apply_margin(cos, labels, norms, all_reduce)

    def loss(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Single-process loss: mean softmax cross-entropy over rows with a label (-1 ignored),
        plus the mean regulariser when the head has one (MagFace)."""
        out = F.cross_entropy(self.apply_margin(cos, labels, norms), labels, ignore_index=-1)
        reg = self.regularizer(norms) if norms is not None else None
        return out if reg is None else out + reg.mean()

    def extra_repr(self) -> str:
        return f"s={self.s}" + ("" if self.margin_grad else ", margin_grad=False")


class Softmax(MarginHead):
    """Plain softmax cross-entropy baseline (the "Softmax" row of the ArcFace paper, no bias).

    ``logits_j = s * w_j . x`` on raw (not normalised) embeddings and centres, no margin.
    ``s`` is a plain multiplier (1 = the textbook softmax).
    """

    normalize = False

    def __init__(self, s: float = 1.0):
        super().__init__(s)


class NormSoftmax(MarginHead):
    """Normalised softmax, NormFace (Wang et al., ACM MM 2017; "Norm-Softmax" in ArcFace).

    ``logits_j = s * cos(theta_j)``, no margin. ``s``: logit scale (inverse temperature).
    """

    def __init__(self, s: float = 64.0):
        super().__init__(s)


class CombinedMargin(MarginHead):
    """Combined margin (the ArcFace paper's combined form, Deng et al., CVPR 2019; insightface's
    CombinedMarginLoss): target logit ``s * (cos(m1 * theta_y + m2) - m3)``, others ``s * cos``.

    - ``s``: logit scale (inverse temperature, 64 in the papers);
    - ``m1``: SphereFace multiplicative angular margin (dimensionless; 1 = none);
    - ``m2``: ArcFace additive angular margin, radians (0.5 ~ 28.6 deg);
    - ``m3``: CosFace additive cosine margin, in cosine units (0.35-0.4).

    Past ``m1*theta + m2 > pi`` the target continues monotone decreasing, see
    :func:`angular_margin`. The gradient flows through the margin (the papers);
    ``margin_grad=False`` reproduces arcface_torch's ArcFace branch, which applies the margin
    under ``torch.no_grad()`` (forward identical, backward as if there were no margin). Two
    official deviations we do not copy: that branch also drops the fallback (the logit wraps
    back up past pi), and its combined config (1, 0.3, 0.2) takes the CosFace branch
    (``m3 > 0``) and silently ignores m2.
    """

    def __init__(
        self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, margin_grad: bool = True
    ):
        super().__init__(s, margin_grad)
        if not m1 > 0:
            raise ValueError(f"m1 (multiplicative angular margin) must be > 0, got {m1}")
        if not 0.0 <= m2 < math.pi:
            raise ValueError(f"m2 (additive angular margin, radians) must be in [0, pi), got {m2}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target_logit(self, cos_y, norms):
        return angular_margin(cos_y, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


# -- named presets (registered in nbfacelib.losses) ---------------------------------------
# Each takes CombinedMargin's keywords (s, m1, m2, m3), so a config overrides any of them by
# the same names whatever the preset, and also ``m``: the paper's own margin of that preset
# (arcface m = m2, cosface m = m3, sphereface m = m1).
def _own(m: float | None, mi: float | None, default: float, name: str) -> float:
    if m is not None and mi is not None:
        raise ValueError(f"give m or {name}, not both (m is {name} for this preset)")
    return default if m is None and mi is None else (m if m is not None else mi)


def arcface(
    s: float = 64.0,
    m: float | None = None,
    m1: float = 1.0,
    m2: float | None = None,
    m3: float = 0.0,
    margin_grad: bool = True,
) -> CombinedMargin:
    """ArcFace (Deng et al., CVPR 2019): ``cos(theta_y + m)``, m = m2 = 0.5 rad; (1, 0.5, 0)."""
    return CombinedMargin(s, m1, _own(m, m2, 0.5, "m2"), m3, margin_grad)


def cosface(
    s: float = 64.0,
    m: float | None = None,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float | None = None,
    margin_grad: bool = True,
) -> CombinedMargin:
    """CosFace / AM-Softmax (Wang et al., CVPR 2018): ``cos(theta_y) - m``, m = m3 = 0.4 in
    cosine units; (1, 0, 0.4). A constant shift: its gradient is the identity either way."""
    return CombinedMargin(s, m1, m2, _own(m, m3, 0.4, "m3"), margin_grad)


def sphereface(
    s: float = 64.0,
    m: float | None = None,
    m1: float | None = None,
    m2: float = 0.0,
    m3: float = 0.0,
    margin_grad: bool = True,
) -> CombinedMargin:
    """SphereFace (Liu et al., CVPR 2017) in the combined form ``cos(m * theta_y)``, m = m1 =
    1.35, insightface's combined-margin setting; (1.35, 0, 0). The original uses an integer
    m = 4 with the piecewise psi(theta) = (-1)^k cos(m theta) - 2k and an annealed mix with
    plain softmax; the combined form replaces both by a small m1 and the monotone fallback of
    :func:`angular_margin` (here past theta = pi / 1.35 ~ 133 deg)."""
    return CombinedMargin(s, _own(m, m1, 1.35, "m1"), m2, m3, margin_grad)


def combined(
    s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2, margin_grad: bool = True
) -> CombinedMargin:
    """insightface's combined margin ``cos(m1 theta_y + m2) - m3``, default (1, 0.3, 0.2)."""
    return CombinedMargin(s, m1, m2, m3, margin_grad)

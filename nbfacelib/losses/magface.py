"""MagFace: a universal representation for face recognition and quality assessment
(Meng et al., CVPR 2021)."""

from __future__ import annotations

import torch

from .margin import MarginHead, angular_margin


class MagFace(MarginHead):
    """MagFace (Meng et al., CVPR 2021): ArcFace whose margin grows with the feature norm, plus
    a regulariser that pulls high-quality faces to larger norms.

    With ``a = clamp(||x||, l_a, u_a)`` (the embedding's L2 norm before normalisation):

    - ``m(a) = l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a)`` (radians, linear, increasing);
    - target logit ``s * cos(theta_y + m(a))`` (ArcFace fallback past ``pi - m(a)``, per sample);
    - ``g(a) = a / u_a^2 + 1 / a`` (convex, decreasing on [l_a, u_a]);
    - ``loss = CE + lambda_g * mean g(a)``: :meth:`regularizer` returns ``lambda_g * g(a)`` per
      sample and Partial FC (or :meth:`MarginHead.loss`) adds its mean.

    Gradients flow through ``m(a)`` and ``g(a)`` into the norm inside [l_a, u_a] (the official
    code); the clamp stops them outside. Hyper-parameters: ``s`` logit scale (64); ``l_a, u_a``
    norm bounds (feature-norm units, 10 and 110); ``l_m, u_m`` margins at those bounds (radians,
    0.45 and 0.8); ``lambda_g`` weight of g (35). The paper's Theorem needs
    ``lambda_g >= s * k * u_a^2 * l_a^2 / (u_a^2 - l_a^2)``, ``k = (u_m - l_m) / (u_a - l_a)``
    (~22.6 for the defaults) for a unique optimal norm; the constructor enforces it.

    :meth:`apply_margin` needs ``norms`` (B,) -- ``needs_norms`` tells Partial FC to pass them.
    """

    needs_norms = True

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
    ):
        super().__init__(s)
        if not 0 < l_a < u_a:
            raise ValueError(f"need 0 < l_a < u_a (feature-norm bounds), got l_a={l_a}, u_a={u_a}")
        if not 0 <= l_m <= u_m:
            raise ValueError(f"need 0 <= l_m <= u_m (margins, radians), got l_m={l_m}, u_m={u_m}")
        bound = self.lambda_g_lower_bound(s, l_a, u_a, l_m, u_m)
        if lambda_g < bound:
            raise ValueError(
                f"lambda_g={lambda_g} is below MagFace's lower bound s*k*u_a^2*l_a^2/(u_a^2-l_a^2) = "
                f"{bound:.4g} (k=(u_m-l_m)/(u_a-l_a)) for s={s}, l_a={l_a}, u_a={u_a}, l_m={l_m}, "
                f"u_m={u_m}: the optimal feature norm would not be unique; raise lambda_g"
            )
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)

    @staticmethod
    def lambda_g_lower_bound(s: float, l_a: float, u_a: float, l_m: float, u_m: float) -> float:
        k = (u_m - l_m) / (u_a - l_a)
        return s * k * u_a**2 * l_a**2 / (u_a**2 - l_a**2)

    def clamp_norm(self, norms: torch.Tensor) -> torch.Tensor:
        return norms.clamp(self.l_a, self.u_a)

    def margin(self, norms: torch.Tensor) -> torch.Tensor:
        """m(a) in radians for (unclamped) norms."""
        a = self.clamp_norm(norms)
        return self.l_m + (self.u_m - self.l_m) * (a - self.l_a) / (self.u_a - self.l_a)

    def g(self, norms: torch.Tensor) -> torch.Tensor:
        """g(a) = a / u_a^2 + 1 / a on the clamped norms."""
        a = self.clamp_norm(norms)
        return a / self.u_a**2 + 1.0 / a

    def target_logit(self, cos_y, norms):
        return angular_margin(cos_y, 1.0, self.margin(norms.to(cos_y.dtype)), 0.0)

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor:
        return self.lambda_g * self.g(norms)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
            f"lambda_g={self.lambda_g}"
        )

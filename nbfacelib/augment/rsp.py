"""RSP, random structure perturbation (TopoFR, NeurIPS 2024, Sec. 3.2): each training image is,
with probability ``p``, replaced by ``A_r(x)`` with ``A_r`` drawn uniformly from
{Gaussian blur, grayscale, colour jitter, random erasing}.

Ranges as the official training script (torchvision / timm transforms applied one image at a
time in a Python loop on the host): blur with a 5 (wide) x 9 (tall) kernel and sigma ~ U(0.1, 5)
(torchvision's ``GaussianBlur(kernel_size=(5, 9))`` is a fixed 5x9 kernel, not a 5..9 range);
grayscale to three channels (ITU-R 601-2 luma); colour jitter with brightness ~ U(0.1, 0.5),
contrast ~ U(0.3, 0.6), saturation ~ U(0.2, 0.5), hue ~ U(-0.1, 0.3), in a random order per
image; random erasing (timm, probability 1, 'const' mode: one rectangle of 2%..1/3 of the
area, aspect ratio log-uniform in [0.3, 1/0.3], set to 0 in normalised space = mid grey).

Here the whole batch is perturbed at once on its own device: every image draws its choice
and its parameters as tensors, each operation runs on the images that drew it. Images are the
model input, normalised to [-1, 1] (``x / 127.5 - 1``); the photometric operations work in
[0, 1] like torchvision's and map back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("blur", "grayscale", "color_jitter", "erase")
BLUR_KERNEL = (5, 9)  # (width, height), torchvision's order
BLUR_SIGMA = (0.1, 5.0)
BRIGHTNESS = (0.1, 0.5)
CONTRAST = (0.3, 0.6)
SATURATION = (0.2, 0.5)
HUE = (-0.1, 0.3)
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_ASPECT = (0.3, 1.0 / 0.3)
ERASE_ATTEMPTS = 10
_LUMA = (0.2989, 0.587, 0.114)


class RandomStructurePerturbation:
    """``rsp(images) -> (perturbed, op)``: a new (B, 3, H, W) batch and the (B,) int64 index
    into :data:`OPS` of the operation each image received (-1: left unchanged).

    ``p``: probability that an image is perturbed (the paper's xi = 0.2). ``ops``: the
    operations to draw from (all four by default). Random numbers come from the global torch
    generator of the images' device (the engine seeds it).
    """

    def __init__(self, p: float = 0.2, ops: tuple[str, ...] = OPS):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RSP probability p must be in [0, 1], got {p}")
        unknown = [o for o in ops if o not in OPS]
        if unknown or not ops:
            raise ValueError(f"RSP ops must be a non-empty subset of {OPS}, got {ops}")
        self.p = float(p)
        self.ops = tuple(ops)

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"RSP expects a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        b, dev = images.shape[0], images.device
        chosen = torch.randint(len(self.ops), (b,), device=dev)
        op_index = torch.tensor([OPS.index(o) for o in self.ops], device=dev)[chosen]
        op = torch.where(torch.rand(b, device=dev) < self.p, op_index, -1)
        out = images.clone()
        for k, name in enumerate(OPS):
            idx = torch.nonzero(op == k).squeeze(1)
            if idx.numel() == 0:
                continue
            out[idx] = _APPLY[name](images[idx])
        return out, op


# -- operations on a (n, 3, H, W) sub-batch in [-1, 1] -------------------------------------------
def _to01(x: Tensor) -> Tensor:
    return x * 0.5 + 0.5


def _from01(x: Tensor) -> Tensor:
    return x * 2.0 - 1.0


def _uniform(n: int, lo_hi: tuple[float, float], like: Tensor) -> Tensor:
    lo, hi = lo_hi
    return torch.rand(n, device=like.device, dtype=like.dtype) * (hi - lo) + lo


def gaussian_blur(x: Tensor, sigma: Tensor | None = None) -> Tensor:
    """Per-image Gaussian blur with a 5 x 9 (w x h) kernel, reflect padding (torchvision's);
    ``sigma`` (n,) defaults to U(0.1, 5) per image. Separable: one grouped conv per axis."""
    n, c, h, w = x.shape
    if sigma is None:
        sigma = _uniform(n, BLUR_SIGMA, x)

    def kernel(size: int) -> Tensor:
        t = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
        k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
        return (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, size)

    kw, kh = BLUR_KERNEL
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    y = F.conv2d(y, kernel(kw)[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel(kh)[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _luma(x01: Tensor) -> Tensor:
    r, g, b = x01.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def grayscale(x: Tensor) -> Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` on all three channels (torchvision's)."""
    return _from01(_luma(_to01(x)).expand_as(x))


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # the six sectors of the hue circle, as colorsys / torchvision
    table = torch.stack(
        [torch.stack(c, dim=1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    )  # (6, n, 3, H, W)
    return table.gather(0, i[None, :, None].expand(1, -1, 3, -1, -1)).squeeze(0)


def color_jitter(x: Tensor, factors: Tensor | None = None, order: Tensor | None = None) -> Tensor:
    """Brightness, contrast, saturation and hue adjustment (torchvision's formulas) with
    per-image ``factors`` (n, 4) (default: the RSP ranges) applied in a per-image random
    ``order`` (n, 4) (a permutation of 0..3), as ``ColorJitter`` does."""
    n = x.shape[0]
    y = _to01(x)
    if factors is None:
        factors = torch.stack(
            [_uniform(n, r, x) for r in (BRIGHTNESS, CONTRAST, SATURATION, HUE)], dim=1
        )  # (n, 4)
    if order is None:
        order = torch.argsort(torch.rand(n, 4, device=x.device), dim=1)
    f = factors[:, :, None, None, None]  # (n, 4, 1, 1, 1)

    def adjust(k: int, img: Tensor) -> Tensor:
        a = f[:, k]
        if k == 0:  # brightness: blend with black
            return (img * a).clamp(0, 1)
        if k == 1:  # contrast: blend with the mean grey level of the image
            mean = _luma(img).mean(dim=(1, 2, 3), keepdim=True)
            return (a * img + (1 - a) * mean).clamp(0, 1)
        if k == 2:  # saturation: blend with the grey image
            return (a * img + (1 - a) * _luma(img)).clamp(0, 1)
        hsv = _rgb_to_hsv(img)  # hue: rotate the hue channel
        hsv = torch.cat([(hsv[:, :1] + a[:, :1]) % 1.0, hsv[:, 1:]], dim=1)
        return _hsv_to_rgb(hsv)

    for position in range(4):
        step = order[:, position]
        new = y
        for k in range(4):
            new = torch.where((step == k)[:, None, None, None], adjust(k, y), new)
        y = new
    return _from01(y)


def random_erase(x: Tensor) -> Tensor:
    """One rectangle per image set to 0 (timm's ``RandomErasing(probability=1)``, 'const'
    mode): area ~ U(2%, 1/3) of the image, aspect ratio log-uniform in [0.3, 1/0.3], the first
    of 10 draws that fits; an image with no fitting draw is left unchanged (as timm)."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, ERASE_ATTEMPTS, device=dev).uniform_(*ERASE_AREA) * (h * w)
    log_ar = torch.empty(n, ERASE_ATTEMPTS, device=dev).uniform_(
        math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    )
    ar = log_ar.exp()
    eh = torch.sqrt(area * ar).round().long()
    ew = torch.sqrt(area / ar).round().long()
    fits = (eh < h) & (ew < w)
    first = torch.argmax(fits.int(), dim=1)  # first fitting attempt (0 when none fits)
    any_fit = fits.any(dim=1)
    eh = eh.gather(1, first[:, None]).squeeze(1)
    ew = ew.gather(1, first[:, None]).squeeze(1)
    top = (torch.rand(n, device=dev) * (h - eh + 1).clamp_min(1)).long()
    left = (torch.rand(n, device=dev) * (w - ew + 1).clamp_min(1)).long()
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & any_fit[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


_APPLY = {"blur": gaussian_blur, "grayscale": grayscale, "color_jitter": color_jitter, "erase": random_erase}

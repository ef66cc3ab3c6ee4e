"""Pixel conventions shared by every reader, model and evaluator.

Readers yield ``uint8`` tensors shaped ``(3, H, W)`` (RGB). Models take float tensors
normalised as in arcface_torch: ``(x / 255 - 0.5) / 0.5``, i.e. in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    return images.float().div_(127.5).sub_(1.0)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255] (rounded, clipped)."""
    return images.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size): bilinear with antialiasing, rounded. The
    one rule used by training and evaluation alike, so train and test pixels match."""
    if images.shape[-2:] == (size, size):
        return images
    x = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)


class TrainAugment:
    """Random resized crop (to ``size``) and colour jitter of a uint8 batch, one draw per image.

    Crop (Szegedy et al. 2015, torchvision's ``RandomResizedCrop``): an area fraction
    ``a ~ U(crop_scale)`` and a log-uniform aspect ``r ~ crop_ratio`` give a box of width
    ``W sqrt(a r)`` and height ``H sqrt(a / r)`` (clipped to the image) at a uniform position
    (``crop_shift`` c < 1: uniform within the middle fraction c of the free margin, so the box
    stays near the centre, as a zoom of an aligned face; 0: centred),
    resampled to ``size x size`` bilinearly (``F.affine_grid`` + ``F.grid_sample``: one call
    for the batch, 45x faster on a CPU than ``torchvision.ops.roi_align``'s antialiased
    sampling). It does not antialias, so the engine stores images at
    :func:`crop_source_size` (a crop then shrinks by at most ``1 / sqrt(crop_scale[0])``).
    Jitter (torchvision's ``ColorJitter(c, c, c)``): factors ``b, k, t ~ U(1 - c, 1 + c)`` per
    image; brightness ``x b``, then contrast (blend with the image's mean grey level), then
    saturation (blend with its grey image), clamped to [0, 255] after each, exactly
    torchvision's ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` on float
    images (the test checks it image by image). Hue (``hue`` h > 0, torchvision's
    ``ColorJitter(hue=h)``): a shift ``u ~ U(-h, h)`` of each image's HSV hue, after the other
    three, torchvision's ``adjust_hue`` batched with one shift per image (:func:`shift_hue`).
    Hand-written because torchvision's transforms draw one set of parameters per call: per-image
    draws over a batch would be a Python loop of single-image calls, on a CPU as slow as the
    training step itself. The draws come from ``generator`` only, so a batch stays a pure
    function of (seed, step), as resume needs.

    Random convolution (RandConv, Xu et al., ICLR 2021, "Robust and Generalizable Visual
    Representation Learning via Random Convolutions", the mixing variant RC_mix), last, with
    probability ``rand_conv`` per image: a kernel of size ``k`` drawn from
    :data:`RAND_CONV_SIZES`, weights ``w ~ N(0, 1 / (3 k^2))`` (He-normal, as the paper), no
    bias, applied to the image in the model's [-1, 1] range with reflected borders, and blended
    ``a x + (1 - a) conv(x)``, ``a ~ U(0, 1)``; clamped back to [0, 255]. It keeps shapes and
    scrambles local texture and colour. On notebook 00's synthetic-to-photograph recipe it cost
    6-8 points of LFW (BENCHMARKS.md, "Domain generalisation methods"). Hand-written: no
    well-kept library has it (the authors' code is a research script). The paper's
    consistency loss between two random convolutions of one image is left out.
    ``crop_scale`` None: no crop (a plain resize to ``size``); ``color_jitter`` 0: no jitter;
    ``hue`` / ``rand_conv`` 0: no hue shift / random convolution, and no draws for them, so the
    batches of a config without them are unchanged.
    """

    def __init__(
        self,
        size: int,
        crop_scale=None,
        crop_ratio=(0.9, 1.1),
        color_jitter: float = 0.0,
        rand_conv: float = 0.0,
        hue: float = 0.0,
        crop_shift: float = 1.0,
    ):
        self.size = int(size)
        self.crop_scale = None if crop_scale is None else tuple(float(v) for v in crop_scale)
        self.crop_ratio = tuple(float(v) for v in crop_ratio)
        self.crop_shift = float(crop_shift)
        if not 0.0 <= self.crop_shift <= 1.0:
            raise ValueError(f"crop_shift={crop_shift}: a fraction of the crop's free margin in [0, 1]")
        self.color_jitter = float(color_jitter)
        self.rand_conv = float(rand_conv)
        if not 0.0 <= self.rand_conv <= 1.0:
            raise ValueError(f"rand_conv={rand_conv}: a probability in [0, 1]")
        self.hue = float(hue)
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={hue}: a hue shift range in [0, 0.5] (torchvision's ColorJitter)")

    @property
    def active(self) -> bool:
        return self.crop_scale is not None or self.color_jitter > 0 or self.rand_conv > 0 or self.hue > 0

    def sample(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image parameters: ``boxes`` (N, 4) x1, y1, x2, y2 in pixels (None: no crop) and
        ``factors`` (N, 3) brightness, contrast, saturation (None: no jitter); with
        ``rand_conv``, ``conv_on`` (N,) bool, ``conv_size`` (N,) kernel sizes, ``conv_alpha`` (N,)
        blend weights and ``conv_weights`` (N, 3, 3, K, K) at the largest size K, scaled to their
        own size's variance (the centre k x k is used); with ``hue``, ``hue_shift`` (N,)."""
        import math

        n, (h, w) = len(images), images.shape[-2:]
        out: dict[str, torch.Tensor | None] = {"boxes": None, "factors": None}
        if self.crop_scale is not None:
            u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
            lo, hi = self.crop_scale
            area = lo + (hi - lo) * u[:, 0]
            rlo, rhi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
            ratio = torch.exp(rlo + (rhi - rlo) * u[:, 1])
            bw = (w * torch.sqrt(area * ratio)).clamp(max=w)
            bh = (h * torch.sqrt(area / ratio)).clamp(max=h)
            where = u[:, 2:4]
            if self.crop_shift < 1:  # (at 1 the draw is used as it is: the same boxes as before)
                where = 0.5 + self.crop_shift * (where - 0.5)
            x1, y1 = (w - bw) * where[:, 0], (h - bh) * where[:, 1]
            out["boxes"] = torch.stack([x1, y1, x1 + bw, y1 + bh], 1).float()
        if self.color_jitter:
            c = self.color_jitter
            out["factors"] = (1 - c + 2 * c * torch.rand(n, 3, generator=generator)).clamp(min=0)
        if self.hue:
            out["hue_shift"] = self.hue * (2 * torch.rand(n, generator=generator) - 1)
        if self.rand_conv:
            sizes = torch.tensor(RAND_CONV_SIZES)
            out["conv_on"] = torch.rand(n, generator=generator) < self.rand_conv
            out["conv_size"] = sizes[torch.randint(len(sizes), (n,), generator=generator)]
            out["conv_alpha"] = torch.rand(n, generator=generator)
            big = int(sizes.max())
            w = torch.randn(n, 3, 3, big, big, generator=generator)
            out["conv_weights"] = (
                w / torch.sqrt(3.0 * out["conv_size"].float() ** 2)[:, None, None, None, None]
            )
        return out

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size) with the drawn ``params``."""
        x = images.float()
        if params["boxes"] is not None:
            h, w = x.shape[-2:]
            b = params["boxes"].to(x.device)
            theta = torch.zeros(len(x), 2, 3, device=x.device)
            theta[:, 0, 0] = (b[:, 2] - b[:, 0]) / w  # box width / image width
            theta[:, 1, 1] = (b[:, 3] - b[:, 1]) / h
            theta[:, 0, 2] = (b[:, 0] + b[:, 2]) / w - 1  # box centre in [-1, 1]
            theta[:, 1, 2] = (b[:, 1] + b[:, 3]) / h - 1
            grid = F.affine_grid(theta, [len(x), 3, self.size, self.size], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        else:
            x = resize(images, self.size).float()
        if params["factors"] is not None:
            f = params["factors"].to(x.device)[:, :, None, None, None]  # (N, 3, 1, 1, 1)
            x = (x * f[:, 0]).clamp_(0, 255)
            grey = _grey(x)
            mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
            x = (x * f[:, 1] + mean * (1 - f[:, 1])).clamp_(0, 255)
            x = (x * f[:, 2] + _grey(x) * (1 - f[:, 2])).clamp_(0, 255)
        if params.get("hue_shift") is not None:
            x = shift_hue(x / 255.0, params["hue_shift"].to(x.device)) * 255.0
        if params.get("conv_on") is not None:
            x = _rand_conv(x, params)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size)."""
        return self.apply(images, self.sample(images, generator))


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` on float (N, 3, H, W) images in [0, 1] with one hue shift
    per image: its own RGB -> HSV -> RGB (Pillow's formulas, as torchvision writes them) with
    the shift broadcast over the batch. Hand-written because ``adjust_hue`` takes one factor
    per call; the test checks it against ``adjust_hue`` image by image."""
    r, g, _ = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    eqc = maxc == minc
    ones = torch.ones_like(maxc)
    sat = (maxc - minc) / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, maxc - minc).unsqueeze(-3)
    rc, gc, bc = ((maxc.unsqueeze(-3) - x) / divisor).unbind(dim=-3)
    not_r, is_g = maxc != r, maxc == g
    h = (bc - gc) * ~not_r + (rc + 2.0 - bc) * (is_g & not_r) + (gc + 4.0 - rc) * (not_r & ~is_g)
    h = (h / 6.0 + 1.0).fmod(1.0)
    h = (h + shift.view(-1, 1, 1)).remainder(1.0)
    # HSV -> RGB
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64).remainder(6)
    v = maxc
    q = ((1.0 - sat * f) * v).clamp(0.0, 1.0)
    t = ((sat * f + 1.0 - sat) * v).clamp(0.0, 1.0)
    p = ((1.0 - sat) * v).clamp(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)
    return vpqt.gather(-3, select[:, i].moveaxis(0, -3))


RAND_CONV_SIZES = (1, 3, 5, 7)  # RandConv's kernel sizes (the paper's multi-scale "1-7")


def _rand_conv(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """RandConv's blend on float [0, 255] images: each image its own kernel (a grouped
    convolution per kernel size), in the [-1, 1] range the model sees."""
    on, size = params["conv_on"].to(x.device), params["conv_size"].to(x.device)
    alpha, weights = params["conv_alpha"].to(x.device), params["conv_weights"].to(x.device)
    big = weights.shape[-1]
    out = x.clone()
    for k in torch.unique(size[on]).tolist():
        idx = torch.nonzero(on & (size == k)).flatten()
        lo = (big - k) // 2
        w = weights[idx][..., lo : lo + k, lo : lo + k].reshape(len(idx) * 3, 3, k, k)
        src = x[idx] / 127.5 - 1.0
        h, wd = src.shape[-2:]
        padded = F.pad(src, (k // 2,) * 4, mode="reflect") if k > 1 else src
        conv = F.conv2d(padded.reshape(1, len(idx) * 3, *padded.shape[-2:]), w, groups=len(idx))
        conv = conv.reshape(len(idx), 3, h, wd)
        a = alpha[idx][:, None, None, None]
        out[idx] = ((a * src + (1 - a) * conv).clamp(-1.0, 1.0) + 1.0) * 127.5
    return out


def crop_source_size(size: int, crop_scale) -> int:
    """Stored image size for random crops to ``size``: the smallest crop (area fraction
    ``crop_scale[0]``) then spans about ``size`` pixels, so the bilinear crop hardly shrinks."""
    import math

    return math.ceil(size / math.sqrt(crop_scale[0]))


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (torchvision's rgb_to_grayscale weights), (N, 1, H, W)."""
    return (x[:, 0] * 0.2989 + x[:, 1] * 0.587 + x[:, 2] * 0.114)[:, None]

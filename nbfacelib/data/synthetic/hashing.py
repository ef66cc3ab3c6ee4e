"""Counter-based hashing: uniforms from (seed, identity, sample, stream).

Done in int64 torch arithmetic on 32-bit values (the multiply is split in 16-bit halves so
nothing overflows), hence identical on every device and independent of batch composition:
any image renders on its own, in any batch, in any order. :func:`batch_invariant` keeps the
float maths that follows just as independent of the batch.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
# ATen's CPU loops run whole pairs of SIMD vectors (2 x 16 float lanes with AVX-512, 2 x 8 with
# AVX2) and finish the last < 32 elements of each thread's share with the scalar function. For
# pow (but squares and roots), sigmoid and atan2 the vector (Sleef) and scalar (libm) functions
# round differently, so an element's value would hang on its place in the tensor, that is on the
# batch it was rendered in (measured: 256 images rendered as one batch and in pieces of 1-171 gave
# yaws 4e-6 degrees apart and up to 255 values up to 4 grey levels apart; BENCHMARKS.md, "One
# image, the same bytes in any batch"). Whole vectors on one thread send every element one path.
_LANES = 32
_ONE_THREAD = 32768  # ATen's parallel grain: a loop this long or shorter is not split


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def batch_invariant(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an elementwise ``fn``, each element computed as it would be anywhere in any
    batch (see ``_LANES``): x is flattened, padded with ones to whole vectors, and run in pieces
    that one thread takes whole. Elsewhere than on a CPU every element takes one path already."""
    if x.device.type != "cpu":
        return fn(x)
    flat = x.reshape(-1)
    n = flat.numel()
    if n % _LANES:
        flat = torch.cat([flat, flat.new_ones(_LANES - n % _LANES)])
    out = torch.cat([fn(piece) for piece in flat.split(_ONE_THREAD)])  # an empty x: one empty piece
    return out[:n].view(x.shape)


def uniforms(seed: int, keys: list[torch.Tensor], n: int, domain: int) -> torch.Tensor:
    """(B, n) float32 uniforms in (0, 1) hashed from ``seed``, a ``domain`` tag and the
    integer key tensors (B,) (identity, sample, ...)."""
    dev = keys[0].device
    h = _mix32(torch.full_like(keys[0], (seed * 0x9E3779B1 + domain * 0x85EBCA77) & _M32))
    for k in keys:
        h = _mix32(h ^ (k.long() & _M32))
        h = _mix32(h ^ ((k.long() >> 32) & _M32))
    streams = torch.arange(n, device=dev, dtype=torch.long)
    h = _mix32(_mix32(h[:, None] ^ (streams[None] * 0x632BE5AB & _M32)))
    return ((h.double() + 0.5) / 2.0**32).float()

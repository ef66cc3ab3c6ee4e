"""Counter-based hashing: uniforms from (seed, identity, sample, stream).

Done in int64 torch arithmetic on 32-bit values (the multiply is split in 16-bit halves so
nothing overflows), hence identical on every device and independent of batch composition:
any image renders on its own, in any batch, in any order.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


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

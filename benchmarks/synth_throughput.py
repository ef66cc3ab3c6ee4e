"""Synthetic-face rendering throughput vs decoding the same number of 112x112 JPEGs with PIL.

    python benchmarks/synth_throughput.py [--quick] [--n 2048] [--device cuda] [--stages]
        [--styles flat,shaded] [--cpu-chunk 128]

Baseline, in the same run: what a disk-backed pipeline does per image (PIL decode of a
112x112 JPEG to a uint8 tensor). ``warm`` = the identities' frontal faces are in the LRU cache
(every epoch after the first with <= a few thousand identities); ``cold`` = every identity is
new (e.g. Partial FC with a million classes), so the base face is drawn too. ``--stages``
prints where the time goes (CPU time per image of each rendering stage). ``--styles`` renders
each renderer style (``nbfacelib.data.synthetic.STYLES``, or a mix of ``MIXES``) warm,
interleaved with the others and the decoder, so that their rates compare under the same load.
Freed memory is kept for reuse (``nbfacelib.machine.keep_freed_memory``, as in ``nbface`` and
its notebook kernels) unless ``--default-malloc``.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch

from nbfacelib.machine import describe_machine as machine
from nbfacelib.machine import keep_freed_memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def styles_of(name: str) -> tuple:
    """The Styles a name renders in: a mix's members, or the one style. (Not
    ``MIXES.get(name, (STYLES[name],))``: that default is looked up first and fails for a mix.)"""
    from nbfacelib.data import synthetic as S

    return S.MIXES[name] if name in S.MIXES else (S.STYLES[name],)


class Renderer:
    """Renders batches of ``batch`` faces; ``warm``: ``warm_ids`` identities whose frontal faces
    are cached; cold: a new identity for every image."""

    def __init__(
        self,
        batch: int,
        device: torch.device,
        size: int,
        difficulty: str,
        warm: bool,
        warm_ids: int = 1000,
        style: str = "flat",
    ):
        from nbfacelib.data import synthetic as S

        self.S, self.batch, self.device, self.size, self.difficulty, self.warm = (
            S,
            batch,
            device,
            size,
            difficulty,
            warm,
        )
        self.g = torch.Generator().manual_seed(0)
        self.next_id = 10**6
        self.warm_ids = warm_ids
        self.style = style
        if warm:  # (each style's base faces are cached under their own key; both haircuts; a
            # mix's images are its styles' images, so a mix is warm when its styles are)
            for member in styles_of(style):
                cuts = (0.0, 1.0) if member.haircuts else (None,)
                for i in range(0, warm_ids, batch):
                    ids = torch.arange(i, min(i + batch, warm_ids))
                    for cut in cuts:
                        S.render(
                            ids,
                            torch.zeros_like(ids),
                            size=size,
                            difficulty=difficulty,
                            device=device,
                            style=member,
                            overrides=None if cut is None else {"haircut": cut},
                        )

    def __call__(self) -> float:
        b = self.batch
        if self.warm:
            ids = torch.randint(self.warm_ids, (b,), generator=self.g)
        else:
            ids = torch.arange(self.next_id, self.next_id + b)
            self.next_id += b
        samples = torch.randint(10**6, (b,), generator=self.g)
        _sync(self.device)
        t0 = time.perf_counter()
        self.S.render(
            ids, samples, size=self.size, difficulty=self.difficulty, device=self.device, style=self.style
        )
        _sync(self.device)
        return time.perf_counter() - t0


class Decoder:
    """Decodes ``batch`` 112x112 JPEGs (rendered faces saved at quality 90) to uint8 tensors,
    as a disk-backed DataLoader does per image."""

    def __init__(self, batch: int, size: int):
        from PIL import Image

        from nbfacelib.data.synthetic import render

        self.Image, self.batch = Image, batch
        imgs, _ = render(torch.arange(64), torch.zeros(64, dtype=torch.long), size=size)
        self.blobs = []
        for im in imgs.permute(0, 2, 3, 1).numpy():
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, "JPEG", quality=90)
            self.blobs.append(buf.getvalue())

    def __call__(self) -> float:
        t0 = time.perf_counter()
        for i in range(self.batch):
            a = np.array(self.Image.open(io.BytesIO(self.blobs[i % 64])).convert("RGB"))
            torch.from_numpy(a).permute(2, 0, 1).contiguous()
        return time.perf_counter() - t0


def interleaved(jobs: dict, rounds: int) -> dict[str, float]:
    """Run the jobs in turn, round after round, so that a machine shared with other work
    slows them alike; returns images/s of each (total images / total seconds)."""
    spent = dict.fromkeys(jobs, 0.0)
    for _ in range(rounds):
        for name, job in jobs.items():
            spent[name] += job()
    return {name: rounds * jobs[name].batch / t for name, t in spent.items()}


def stages(batch: int, size: int, difficulty: str, reps: int = 5) -> list[tuple[str, float]]:
    """CPU milliseconds per image of each stage of ``synthetic.renderer._render_chunk`` (warm cache)."""
    import torch.nn.functional as F

    from nbfacelib.data import degrade
    from nbfacelib.data import synthetic as S
    from nbfacelib.data.synthetic import face, nuisances, renderer

    dev = torch.device("cpu")
    g = torch.Generator().manual_seed(1)
    S.render(torch.arange(500), torch.zeros(500, dtype=torch.long), size=size)
    T: dict[str, float] = {}
    clock = [time.process_time()]

    def tick(name):
        c = time.process_time()
        T[name] = T.get(name, 0.0) + c - clock[0]
        clock[0] = c

    for _ in range(reps):
        ids, samples = torch.randint(500, (batch,), generator=g), torch.randint(10**6, (batch,), generator=g)
        clock[0] = time.process_time()
        u = nuisances.nuisance_streams(0, ids, samples)
        n = nuisances.nuisances_from_streams(u, difficulty)
        p = S.identity_params(ids, 0)
        tick("hash nuisances + identity params")
        canon = renderer.base_faces(0, ids, size, dev)
        tick("base faces (cache lookup)")
        face.draw_mouth(canon, p, n, size)
        face.draw_eyelids(canon, p, n, size)
        tick("expression overlays")
        occ = face.draw_occluders(canon, p, n, u, size)
        n["occluded"] = (occ * canon[:, 4]).sum((1, 2)) / canon[:, 4].sum((1, 2))
        tick("occluders + occluded fraction")
        rgba = F.grid_sample(canon[:, :4], renderer.pose_grid(n, size, dev), align_corners=False)
        tick("pose grid + grid_sample")
        gain = torch.stack([n["cast_r"], n["cast_g"], n["cast_b"]], 1) * n["exposure"][:, None]
        img = (rgba[:, :3] * renderer.lighting(n, size, dev)).mul_(gain[:, :, None, None])
        img.addcmul_(1 - rgba[:, 3:4], renderer.background(n, u, size, dev, gain))
        tick("lighting + background")
        k = size / 112
        img = degrade.blur(img, n["blur_sigma"] * k, n["motion_length"] * k, n["motion_angle"], inplace=True)
        tick("blur")
        img = degrade.downsample(img, n["downsample"], inplace=True)
        tick("down-sampling")
        idx = (n["noise_sigma"] > 0).nonzero().flatten()
        img.index_copy_(
            0,
            idx,
            degrade.add_noise(img[idx], n["noise_sigma"][idx], renderer.noise_fields(u[idx], size, dev)),
        )
        tick("noise")
        img = degrade.jpeg(img.clamp_(0, 1), n["jpeg_quality"], inplace=True)
        tick("jpeg")
        img.mul_(255).round_().to(torch.uint8)
        S.quality_from_nuisances(n)
        tick("uint8 + quality")
    return [(k, v / reps / batch * 1e3) for k, v in T.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N (CI smoke)")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=112, choices=(112, 160))
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", action="store_true", help="also print the per-stage CPU profile")
    ap.add_argument("--styles", default="flat", help="renderer styles, comma-separated (default flat)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's, = cores)"
    )
    ap.add_argument(
        "--cpu-chunk",
        type=int,
        default=None,
        help="most images per CPU chunk (default: the renderer's CPU_CHUNK)",
    )
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory, as nbface and its kernels do)",
    )
    args = ap.parse_args()
    kept = False if args.default_malloc else keep_freed_memory()
    if args.cpu_chunk:
        from nbfacelib.data.synthetic import renderer

        renderer.CPU_CHUNK = args.cpu_chunk
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 256 if args.quick else args.n
    device = torch.device(args.device)
    print(f"machine: {machine()}; device {device}; freed memory kept: {kept}")
    rounds = max(1, n // args.batch_size)
    from nbfacelib.data.synthetic import BASE_CACHE

    BASE_CACHE.clear()
    styles = args.styles.split(",")
    # Every style caches its own base faces (uint8, 5 channels, 8 with relief): room for the 1,000
    # warm identities of each, or interleaved styles evict each other and "warm" is partly cold.
    # (a style with haircuts caches two faces per identity)
    faces = sum(2 if m.haircuts else 1 for s in styles for m in styles_of(s))
    BASE_CACHE.max_bytes = max(BASE_CACHE.max_bytes, faces * 1000 * 8 * args.size**2 * 5 // 4)
    jobs = {
        ("render, warm cache" if s == "flat" else f"render {s}, warm"): Renderer(
            args.batch_size, device, args.size, args.difficulty, warm=True, style=s
        )
        for s in styles
    }
    jobs["PIL JPEG decode"] = Decoder(args.batch_size, args.size)
    interleaved(jobs, 1)  # warm-up
    rates = interleaved(jobs, rounds)
    cold = interleaved(
        {"c": Renderer(args.batch_size, device, args.size, args.difficulty, warm=False)}, max(1, rounds // 4)
    )
    pil = rates["PIL JPEG decode"]
    print(
        f"N = {rounds * args.batch_size} images {args.size}x{args.size}, {args.difficulty}, "
        f"batch {args.batch_size}"
    )
    for name, r in rates.items():
        print(f"{name:22s}: {r:8.0f} images/s")
    print(f"{'render, cold (new ids)':22s}: {cold['c']:8.0f} images/s (not interleaved)")
    for name in [k for k in rates if k.startswith("render")]:
        print(f"ratio {name} / decode: {rates[name] / pil:.2f}x")
    if args.stages:
        print("CPU ms per image by stage (1 batch of 64, warm cache):")
        rows = stages(64, args.size, args.difficulty)
        for name, ms in rows:
            print(f"  {name:34s} {ms:6.3f}")
        print(f"  {'total':34s} {sum(ms for _, ms in rows):6.3f}")


if __name__ == "__main__":
    main()

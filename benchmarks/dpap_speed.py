"""DPAP: the batched tensor version (nbfacelib.augment.dpap) against the official loop.

    python benchmarks/dpap_speed.py [--quick] [--device cpu] [--rounds 5] [--threads 1]

The official loop is re-typed here from its description (REFERENCE.md, seed 000): the batch
is copied off the device as uint8 HWC numpy, the patch weights are argsorted and copied to
the host, then for each image (with probability p) and each of its K top patches a random 9x9
patch of a random image is drawn (the official ``random`` / ``np.random`` calls; one numpy
Generator here), both patches go
through ``np.fft.fft2`` per channel, the amplitudes (fftshifted, the whole 9x9 "crop" mixed:
ratio 1) are mixed with lam ~ U(0, 1), the source phase kept, ``np.real(ifft2)`` clipped and
cast with ``np.uint8``, and written back into the batch, which then goes back to the device
and is normalised. (Its ``int(np.random.randint(0, B, 1))`` converts a 1-element array to an
int, which numpy 2 deprecates; a scalar draw is used here.)

Both run on the same 112 px batch with 144 patch weights, K = 7, at p = 0.2 and p = 1, at
batch 128 and 512, round by round in one process (the same machine load for both), median
of ``rounds`` after one warm-up. ``--threads`` sets torch's CPU threads for both (the official
loop's numpy FFTs run on one core whatever it is; its round trip of the batch uses them). On a
CPU a third column, the floor (``floor_call``), times only the memory traffic and the two DFT
GEMMs that the batched version cannot avoid, on as many patches, after the same official loop
(which leaves the caches cold for whatever runs next, as a training step's forward does):
official / floor bounds the speed-up any batched version of this design can reach on the machine.
``dpap_timings(device)`` returns the dict, for the GPU check.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nbfacelib.machine import describe_machine

K = 7
GRID, PATCH = 12, 9


def _amplitude_mix(src: np.ndarray, rnd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official ``amplitude_spectrum_mix(img_src, img_random, alpha=1, ratio=1.0)``."""
    lam = rng.uniform(0, 1.0)
    h, w, _ = src.shape
    h_crop, w_crop = int(h * np.sqrt(1.0)), int(w * np.sqrt(1.0))
    h_start, w_start = h // 2 - h_crop // 2, w // 2 - w_crop // 2
    f1, f2 = np.fft.fft2(src, axes=(0, 1)), np.fft.fft2(rnd, axes=(0, 1))
    a1, p1 = np.abs(f1), np.angle(f1)
    a1 = np.fft.fftshift(a1, axes=(0, 1))
    a2 = np.fft.fftshift(np.abs(f2), axes=(0, 1))
    a1_, a2_ = np.copy(a1), np.copy(a2)
    a1[h_start : h_start + h_crop, w_start : w_start + w_crop] = (
        lam * a2_[h_start : h_start + h_crop, w_start : w_start + w_crop]
        + (1 - lam) * a1_[h_start : h_start + h_crop, w_start : w_start + w_crop]
    )
    a1 = np.fft.ifftshift(a1, axes=(0, 1))
    out = np.real(np.fft.ifft2(a1 * np.e ** (1j * p1), axes=(0, 1)))
    return np.uint8(np.clip(out, 0, 255))


def official_dpap(images, weights, p: float, rng: np.random.Generator, k: int = K):
    """The official loop on a normalised device batch -> a normalised device batch."""
    import torch

    dev = images.device
    batch = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    top = torch.argsort(weights, dim=1, descending=True).cpu().numpy()[:, :k]
    for b, index in enumerate(top):
        if rng.random() < p:
            for j in range(index.shape[0]):
                h, w = int(index[j] // GRID), int(index[j] % GRID)
                src = batch[b, PATCH * h : PATCH * (h + 1), PATCH * w : PATCH * (w + 1), :]
                r = int(rng.integers(0, batch.shape[0]))
                rh, rw = int(rng.integers(0, GRID)), int(rng.integers(0, GRID))
                rnd = batch[r, PATCH * rh : PATCH * (rh + 1), PATCH * rw : PATCH * (rw + 1), :]
                mixed = _amplitude_mix(src, rnd, rng)
                batch[b, PATCH * h : PATCH * (h + 1), PATCH * w : PATCH * (w + 1), :] = mixed
    out = torch.tensor(batch).to(dev).permute(0, 3, 1, 2)
    return (out.float() / 255 - 0.5) / 0.5


def floor_call(images, patches: int, generator):
    """What any batched DPAP on this batch must do at least, with none of the mixing: gather
    ``patches`` random 9x9 patches (all channels) and as many more, both DFT GEMMs (forward of
    all, inverse of the first half) and write the first half back. Its time bounds the batched
    version's from below, and so its speed-up from above."""
    import torch

    from nbfacelib.augment.dpap import _dft_pair

    b, c, h, w = images.shape
    cells = torch.randint(GRID * GRID, (2 * patches,), generator=generator)
    image = torch.randint(b, (2 * patches,), generator=generator)
    base = image * (c * h * w) + (cells // GRID) * (PATCH * w) + (cells % GRID) * PATCH
    rows_of_patch = (torch.arange(c)[:, None] * (h * w) + torch.arange(PATCH) * w).view(1, -1)
    starts = (base[:, None] + rows_of_patch).view(-1)
    forward, inverse = _dft_pair(PATCH, "cpu")
    rows = images.as_strided((images.numel() - PATCH + 1, PATCH), (1, 1), 0)

    def run():
        patches_ = rows.index_select(0, starts).view(-1, PATCH * PATCH)
        spectra = patches_ @ forward
        out = spectra[: len(spectra) // 2] @ inverse
        rows.index_copy_(0, starts[: len(starts) // 2], out.view(-1, PATCH))

    return run


def dpap_timings(device: str = "cpu", batch_sizes=(128, 512), ps=(0.2, 1.0), rounds: int = 5) -> dict:
    import torch

    from nbfacelib.augment.dpap import DominantPatchAmplitudePerturbation

    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rows = []
    for b in batch_sizes:
        g = torch.Generator().manual_seed(0)
        images = (torch.randint(0, 256, (b, 3, 112, 112), generator=g).float() / 127.5 - 1).to(dev)
        weights = torch.rand(b, GRID * GRID, generator=g).softmax(1).to(dev)
        for p in ps:
            dpap = DominantPatchAmplitudePerturbation(p=p, k=K)
            rng = np.random.default_rng(0)
            work = images.clone()  # perturbed in place round after round (timing only)
            floor = floor_call(work, round(b * p) * K, g) if dev.type == "cpu" else None
            t_ours, t_inplace, t_official, t_floor = [], [], [], []
            for r in range(rounds + 1):
                sync()
                t0 = time.perf_counter()
                dpap(images, weights)
                sync()
                t1 = time.perf_counter()
                dpap(work, weights, inplace=True)
                sync()
                t2 = time.perf_counter()
                official_dpap(images, weights, p, rng)
                sync()
                t3 = time.perf_counter()
                if floor is not None:
                    official_dpap(images, weights, p, rng)  # the same cold caches as the others
                    t4 = time.perf_counter()
                    floor()
                    t_floor.append(time.perf_counter() - t4)
                if r:  # the first round warms up (DFT matrices, allocations)
                    t_ours.append(t1 - t0)
                    t_inplace.append(t2 - t1)
                    t_official.append(t3 - t2)
            ours, inplace = statistics.median(t_ours), statistics.median(t_inplace)
            official = statistics.median(t_official)
            floor_s = statistics.median(t_floor[1:]) if t_floor else None  # round 0 warms up
            rows.append(
                {
                    "batch": b,
                    "p": p,
                    "batched_ms": ours * 1e3,
                    "inplace_ms": inplace * 1e3,
                    "official_ms": official * 1e3,
                    "speedup": official / ours,
                    "speedup_inplace": official / inplace,
                    "floor_ms": floor_s * 1e3 if floor_s is not None else None,
                    "speedup_bound": official / floor_s if floor_s is not None else None,
                }
            )
    return {"device": str(dev), "k": K, "rounds": rounds, "machine": describe_machine(), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 128 only, 3 rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads on a CPU, for both versions (default 1)"
    )
    args = ap.parse_args()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    res = dpap_timings(
        args.device, (128,) if args.quick else (128, 512), rounds=args.rounds or (3 if args.quick else 5)
    )
    print(res["machine"])
    print(f"device {res['device']}, K = {res['k']}, median of {res['rounds']} rounds")
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        "| batch | p | batched DPAP (a copy) | batched, in place | official loop "
        "| speed-up (copy) | speed-up (in place) | floor | speed-up bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        floor = "-" if r["floor_ms"] is None else f"{r['floor_ms']:.2f} ms | {r['speedup_bound']:.0f}x"
        print(
            f"| {r['batch']} | {r['p']:g} | {r['batched_ms']:.2f} ms | {r['inplace_ms']:.2f} ms | "
            f"{r['official_ms']:.1f} ms | **{r['speedup']:.0f}x** | **{r['speedup_inplace']:.0f}x** "
            f"| {floor} |"
        )


if __name__ == "__main__":
    main()

"""TopoFR topology: H0 persistence pairs vs gudhi and vs a Python union-find, and the peak
memory of input-space distances vs the official B x B x D broadcast.

    python benchmarks/topology_speed.py [--quick] [--device cpu|cuda] [--sizes 128,256,512,1024]

H0 timing: the same distance matrix (B random points in 64-d, float32 for ``h0_pairs``, the
float64 copy for the libraries) goes through, round by round in one process so that all three
see the same machine load, best of ``repeat``:
- ``h0_pairs`` (ours; prim on the CPU, boruvka on a GPU; input validation included);
- gudhi ``RipsComplex(distance_matrix).create_simplex_tree(max_dimension=1)`` +
  ``compute_persistence`` (the H0 diagram, no pairs);
- a Python union-find over every edge of the stable-sorted upper triangle, the algorithm of
  the official TopoFR ``PersistentHomologyCalculation`` (re-written here, same steps).
On a GPU the two baselines run on the host of the same machine, so the ratio is what moving
to ``h0_pairs`` saves a training step there.

Memory: each (B, method) runs in a fresh subprocess; peak = ``ru_maxrss`` after the call minus
``ru_maxrss`` just before it (CPU; an upper bound on live tensors), or
``torch.cuda.max_memory_allocated`` minus the memory allocated before it (CUDA). The batch of
B x 3 x 112 x 112 float32 images exists before the call and is not counted. The official
broadcast ``norm(x[:, None] - x, dim=2)`` is run at B = 128 only (2.5 GB); at B = 1024 it would
need B*B*D*4 bytes = 158 GB, reported as computed.

``h0_timings(device)`` and ``input_distance_memory(device)`` return plain dicts, for the GPU
check script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from nbfacelib.machine import describe_machine

IMAGE_SHAPE = (3, 112, 112)


def official_union_find_pairs(dist: np.ndarray) -> np.ndarray:
    """The official TopoFR H0 pairing: stable argsort of the upper triangle, then one Python
    union-find step (find with path compression, merge of the younger root) per edge, over
    every edge. Returns the (B-1, 2) pairs in order."""
    n = dist.shape[0]
    parent = np.arange(n)

    def find(u):
        if parent[u] == u:
            return u
        parent[u] = find(parent[u])
        return parent[u]

    rows, cols = np.triu_indices_from(dist)
    weights = dist[rows, cols]
    pairs = []
    for e in np.argsort(weights, kind="stable"):
        u, v = rows[e], cols[e]
        ru, rv = find(u), find(v)
        if ru == rv:
            continue
        if ru > rv:
            parent[find(v)] = find(u)
        else:
            parent[find(u)] = find(v)
        pairs.append((min(u, v), max(u, v)))
    return np.array(pairs)


def gudhi_h0(dist: np.ndarray) -> np.ndarray:
    import gudhi

    tree = gudhi.RipsComplex(distance_matrix=dist).create_simplex_tree(max_dimension=1)
    tree.compute_persistence(min_persistence=-1.0)
    return tree.persistence_intervals_in_dimension(0)


def h0_timings(
    device: str = "cpu", sizes=(128, 256, 512, 1024), repeat: int = 5, baselines: bool = True
) -> dict:
    """Best-of-``repeat`` seconds per B for ``h0_pairs`` on ``device`` and (``baselines``) for
    gudhi and the Python union-find on the host, interleaved; the deaths are checked to agree
    (1e-6) before timing. Returns {"device", "machine", "rows": [{B, ours_s, gudhi_s, uf_s,
    gudhi_over_ours, uf_over_ours}]}."""
    import torch

    from nbfacelib.topology import h0_pairs, pairwise_distances

    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        d = pairwise_distances(torch.randn(n, 64, generator=g))
        host = d.double().numpy()
        dd = d.to(dev)
        ours = h0_pairs(dd)  # warm-up (kernels, allocator) and the agreement check
        sync()
        if baselines:
            ref = np.sort(gudhi_h0(host)[:, 1])[:-1]
            assert np.abs(ours.deaths.double().cpu().numpy() - ref).max() < 1e-6, "h0_pairs != gudhi"
        best = {"ours": math.inf, "gudhi": math.inf, "uf": math.inf}
        uf_repeat = max(1, repeat // 2) if n >= 1024 else repeat
        for r in range(repeat):
            sync()
            t0 = time.perf_counter()
            h0_pairs(dd)
            sync()
            best["ours"] = min(best["ours"], time.perf_counter() - t0)
            if baselines:
                t0 = time.perf_counter()
                gudhi_h0(host)
                best["gudhi"] = min(best["gudhi"], time.perf_counter() - t0)
                if r < uf_repeat:
                    t0 = time.perf_counter()
                    official_union_find_pairs(host)
                    best["uf"] = min(best["uf"], time.perf_counter() - t0)
        row = {"B": n, "ours_s": best["ours"]}
        if baselines:
            row.update(
                gudhi_s=best["gudhi"],
                uf_s=best["uf"],
                gudhi_over_ours=best["gudhi"] / best["ours"],
                uf_over_ours=best["uf"] / best["ours"],
            )
        rows.append(row)
    return {"device": str(dev), "machine": describe_machine(), "rows": rows}


def memory_point(n: int, method: str, device: str) -> dict:
    """Peak extra memory (MiB) of one input-distance computation on a batch of ``n`` images."""
    import resource

    import torch

    from nbfacelib.topology import input_distances

    dev = torch.device(device)
    # filled in place: a temporary batch-sized tensor would raise the high-water mark before
    # the measurement and hide what the call itself allocates
    images = torch.empty(n, *IMAGE_SHAPE, device=dev).uniform_(-1, 1)
    input_distances(images[:4])  # load kernels outside the measurement
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method == "ours":
        d = input_distances(images)
    else:  # the official broadcast: (B, B, D) differences, then their norm
        flat = images.view(n, -1)
        d = torch.norm(flat[:, None] - flat, dim=2, p=2) / math.sqrt(4 * flat.shape[1])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        how = "cuda.max_memory_allocated"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        how = "ru_maxrss delta"
    return {"B": n, "method": method, "peak_mib": peak, "seconds": time.perf_counter() - t0, "memory": how,
            "checksum": float(d.double().sum())}  # fmt: skip


def input_distance_memory(device: str = "cpu", sizes=(128, 1024), official_max_b: int = 128) -> dict:
    """Each (B, method) in a fresh subprocess; the official broadcast only up to
    ``official_max_b`` (its B*B*D*4 bytes are reported for every B)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for n in sizes:
        for method in ("ours", "official"):
            if method == "official" and n > official_max_b:
                continue
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--memory-point",
                f"{n}:{method}",
                "--device",
                device,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode:
                rows.append({"B": n, "method": method, "error": res.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    broadcast = {n: n * n * math.prod(IMAGE_SHAPE) * 4 / 2**20 for n in sizes}
    return {"device": device, "rows": rows, "official_tensor_mib": broadcast}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B = 128, 256 and 3 repeats")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default=None, help="comma-separated batch sizes for H0")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-point", default=None, help=argparse.SUPPRESS)  # internal: one subprocess
    args = ap.parse_args()

    import torch

    if args.memory_point:
        n, method = args.memory_point.split(":")
        print(json.dumps(memory_point(int(n), method, args.device)))
        return
    torch.set_num_threads(1)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([128, 256] if args.quick else [128, 256, 512, 1024])
    )
    repeat = args.repeat or (3 if args.quick else 5)
    res = h0_timings(args.device, sizes, repeat)
    print(res["machine"])
    print(f"H0 pairs on {res['device']}, best of {repeat} (union-find: fewer at B >= 1024)")
    print("| B | h0_pairs | gudhi | Python union-find | gudhi / ours | union-find / ours |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(
            f"| {r['B']} | {r['ours_s'] * 1e3:.2f} ms | {r['gudhi_s'] * 1e3:.1f} ms "
            f"| {r['uf_s'] * 1e3:.1f} ms "
            f"| **{r['gudhi_over_ours']:.0f}x** | **{r['uf_over_ours']:.0f}x** |",
            flush=True,
        )
    if args.skip_memory:
        return
    mem = input_distance_memory(args.device, sizes=(128,) if args.quick else (128, 1024))
    print(f"\nInput-space distances, {'x'.join(map(str, IMAGE_SHAPE))} float32 images on {args.device}")
    print("| B | method | peak extra MiB | (B,B,D) tensor MiB | measured by |")
    print("|---|---|---|---|---|")
    for r in mem["rows"]:
        if "error" in r:
            print(f"| {r['B']} | {r['method']} | failed: {r['error']} | | |")
            continue
        print(
            f"| {r['B']} | {r['method']} | {r['peak_mib']:.1f} | {mem['official_tensor_mib'][r['B']]:.0f} "
            f"| {r['memory']} |"
        )


if __name__ == "__main__":
    main()

"""RecordIO reading speed: the pure-Python reader against an image folder holding the very
same JPEG bytes, run side by side; plus .idx parsing at MS1MV2 size and index rebuilding.

    python benchmarks/recordio_read.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from nbfacelib.machine import best_time as best
from nbfacelib.machine import describe_machine as machine


def faces(n: int, size: int = 112):
    """Smooth random 112x112 images as JPEG bytes (content only matters for JPEG size)."""
    from nbfacelib.data.folder import encode_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        img = np.stack([a * xx + 30 * np.sin(9 * yy + i), b * yy, c * (1 - xx)], 2)
        img += rng.normal(0, 6, img.shape)
        out.append((encode_image(np.clip(img, 0, 255).astype(np.uint8), "jpg", 95), i // 20))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 300 if args.quick else 3000
    idx_lines = 500_000 if args.quick else 5_822_653 + 85_742 + 1  # MS1MV2: images + identities + header
    repeat = 3

    from nbfacelib.data.folder import FolderDataset, write_image_folder
    from nbfacelib.data.recordio import RecDataset, RecordIOReader, read_index, scan_records, write_image_rec

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        items = faces(n)
        write_image_folder(tmp / "folder", items, ext="jpg")  # bytes copied verbatim
        write_image_rec(tmp / "rec", items)
        fol = FolderDataset(tmp / "folder", size=None)
        rec = RecDataset(tmp / "rec", size=None)
        assert [fol.raw(i)[0] for i in range(n)] == [rec.raw(i)[0] for i in range(n)]  # same JPEGs
        mean_kb = np.mean([len(b) for b, _ in items]) / 1024
        print(f"{n} images of 112x112, JPEG q95, {mean_kb:.1f} KiB each; best of {repeat}\n")

        reader = rec.reader
        t_rec = best(lambda: [reader.read(k) for k in range(1, n + 1)], repeat)
        t_fol = best(lambda: [p.read_bytes() for p in fol.paths], repeat)
        print(
            f"raw bytes   folder {n / t_fol:9.0f} /s   rec {n / t_rec:9.0f} /s   "
            f"rec/folder {t_fol / t_rec:.2f}x"
        )
        t_rec = best(lambda: [rec[i] for i in range(n)], repeat)
        t_fol = best(lambda: [fol[i] for i in range(n)], repeat)
        print(
            f"decoded     folder {n / t_fol:9.0f} /s   rec {n / t_rec:9.0f} /s   "
            f"rec/folder {t_fol / t_rec:.2f}x"
        )

        os.remove(tmp / "rec" / "train.idx")
        t_scan = best(lambda: scan_records(tmp / "rec" / "train.rec"), repeat)
        print(f"idx rebuild (scan) {len(RecordIOReader(tmp / 'rec' / 'train.rec')) / t_scan:9.0f} records/s")

        idx = tmp / "big.idx"
        offs = np.cumsum(np.full(idx_lines, 4500, np.int64)) - 4500
        with open(idx, "w") as f:
            f.write("".join(f"{k}\t{o}\n" for k, o in zip(range(idx_lines), offs)))

        def naive():  # what mxnet's MXIndexedRecordIO does: a Python dict, line by line
            d = {}
            with open(idx) as f:
                for line in f:
                    k, o = line.strip().split("\t")
                    d[int(k)] = int(o)
            return d

        t_np = best(lambda: read_index(idx), 1)
        t_naive = best(naive, 1)
        print(
            f".idx parse ({idx_lines:,} lines)  line-by-line dict {t_naive:.2f} s   "
            f"read_index {t_np:.2f} s   {t_naive / t_np:.1f}x"
        )


if __name__ == "__main__":
    main()

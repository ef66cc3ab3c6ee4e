"""``nbface synth``: write synthetic faces to disk (image folders or RecordIO) with a CSV of
every nuisance and the ground-truth quality, or a contact sheet to look at them."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PREVIEW_DEFAULT = "synth_preview.png"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic faces (folders or .rec + CSV of nuisances), or a preview sheet",
        description="Render N identities x K samples of the procedural face generator "
        "(nbfacelib.data.synthetic) into DIR: one folder per identity of lossless PNGs (JPEG is "
        "already one of the simulated nuisances) or an InsightFace train.rec/train.idx, plus "
        "DIR/images.csv with one row per image: path, identity, label, sample, every nuisance "
        "and the ground-truth quality. With --preview, write a contact sheet PNG instead.",
    )
    p.add_argument("--ids", type=int, default=None, help="number of identities (>= 1)")
    p.add_argument("--per-id", type=int, default=None, help="images per identity (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the identities and their images (default 0)")
    p.add_argument("--out", default=None, help="output directory (or the preview PNG path with --preview)")
    p.add_argument("--size", type=int, default=112, help="image side in pixels: 112 (default) or 160")
    p.add_argument(
        "--difficulty", default="medium", help="how strong the nuisances are: easy, medium (default) or hard"
    )
    p.add_argument(
        "--format",
        default="folder",
        help="output: an image folder with images.csv (default) or an InsightFace rec",
    )
    p.add_argument(
        "--style",
        default="flat",
        help="renderer style: flat (default, the calibrated faces), shaded (3-D relief, shading, "
        "cast shadows, skin texture, grey images; records specular, shadow_fraction, grey, gamma, "
        "vignette too), detailed (shaded + eyes, brows, hair strands), eyewear (detailed + clear "
        "glasses, recorded as eyeglasses) or hair (eyewear + hair as a volume: varied outline, "
        "hairline, fringe, length over the ears) or haircuts (hair + a quarter of each person's "
        "images in their other haircut, recorded as haircut); the others of "
        "nbfacelib.data.synthetic.STYLES too; or mixed (each image in one of flat, shaded, eyewear, "
        "haircuts, drawn per image and recorded as mix_style)",
    )
    p.add_argument("--offset", type=int, default=0, help="first identity, even (for disjoint splits)")
    p.add_argument(
        "--batch-size", type=int, default=256, help="images rendered at once (memory vs speed; default 256)"
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    p.add_argument(
        "--preview",
        action="store_true",
        help=f"write a contact sheet (8 identities incl. near twins x 8 samples) to --out "
        f"(default {PREVIEW_DEFAULT})",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="print the raw-pixel baseline (PCA on pixels, cosine) on held-out identities at "
        "--difficulty (nbfacelib.eval.baseline.calibrate)",
    )
    p.set_defaults(func=_run)


def _check(args) -> None:
    from nbfacelib.cli import UserError
    from nbfacelib.data.synthetic import DIFFICULTIES, SIZES
    from nbfacelib.data.synthetic.shading import check_style_name

    if args.size not in SIZES:
        raise UserError(f"--size {args.size}: expected one of {', '.join(map(str, SIZES))}")
    if args.difficulty not in DIFFICULTIES:
        raise UserError(f"--difficulty {args.difficulty!r}: expected one of {', '.join(DIFFICULTIES)}")
    try:
        check_style_name(args.style)  # a style or a mix: one list of names, in the renderer
    except ValueError as exc:
        raise UserError(f"--{exc}") from None
    if args.format not in ("folder", "rec"):
        raise UserError(f"--format {args.format!r}: expected folder or rec")
    for flag, val in (("--ids", args.ids), ("--per-id", args.per_id), ("--batch-size", args.batch_size)):
        if val is not None and val < 1:
            raise UserError(f"{flag} {val}: must be >= 1")
    if args.offset < 0 or args.offset % 2:
        raise UserError(
            f"--offset {args.offset}: must be even and >= 0 (identities 2k and 2k+1 can be near "
            "twins, so an odd first identity could be the twin of one before the split)"
        )


def _run(args: argparse.Namespace) -> int:
    _check(args)
    if args.calibrate:
        from nbfacelib.eval.baseline import calibrate, format_calibration

        print(
            format_calibration(calibrate(args.difficulty, seed=args.seed, size=args.size, style=args.style))
        )
        return 0
    if args.preview:
        out = write_preview(
            args.out or PREVIEW_DEFAULT,
            seed=args.seed,
            size=args.size,
            difficulty=args.difficulty,
            rows=args.ids or 8,
            cols=args.per_id or 8,
            style=args.style,
        )
        print(f"wrote {out}")
        return 0
    from nbfacelib.cli import UserError

    for flag, val in (("--ids", args.ids), ("--per-id", args.per_id), ("--out", args.out)):
        if val is None:
            raise UserError(f"{flag} is required (or use --preview)")
    n = write_synthetic(
        args.out,
        args.ids,
        args.per_id,
        seed=args.seed,
        size=args.size,
        difficulty=args.difficulty,
        fmt=args.format,
        identity_offset=args.offset,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        style=args.style,
    )
    print(
        f"wrote {n} images of {args.ids} identities to {args.out} ({args.format}) and {args.out}/images.csv"
    )
    return 0


def _rows(ds, batch_size: int):
    """Yield (label, sample, HxWx3 uint8 numpy, nuisance dict of floats) in index order."""
    import torch

    labels = torch.as_tensor(ds.labels)
    samples = torch.arange(len(ds)) % ds.per_identity
    for i in range(0, len(ds), batch_size):
        images, n = ds.render_batch(labels[i : i + batch_size], samples[i : i + batch_size])
        arr = images.permute(0, 2, 3, 1).contiguous().numpy()
        cols = {k: v.tolist() for k, v in n.items()}
        for j in range(arr.shape[0]):
            yield int(labels[i + j]), int(samples[i + j]), arr[j], {k: v[j] for k, v in cols.items()}


def write_synthetic(
    out_dir,
    num_identities: int,
    per_identity: int,
    seed: int = 0,
    size: int = 112,
    difficulty: str = "medium",
    fmt: str = "folder",
    identity_offset: int = 0,
    batch_size: int = 256,
    overwrite: bool = False,
    style: str = "flat",
) -> int:
    """Write the data set; returns the number of images. See ``nbface synth --help``."""
    from PIL import Image
    from tqdm import tqdm

    from nbfacelib.cli import UserError
    from nbfacelib.data.synthetic import NUISANCE_KEYS, SyntheticFaces, recorded_keys

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: directory is not empty (pass --overwrite to write into it)")
    ds = SyntheticFaces(num_identities, per_identity, seed, size, difficulty, identity_offset, style)
    out.mkdir(parents=True, exist_ok=True)
    keys = NUISANCE_KEYS + recorded_keys(style)
    header = ["path", "identity", "label", "sample", *keys]
    bar = tqdm(total=len(ds), unit="img", desc="synth", disable=None)
    with open(out / "images.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)

        def rows_and_files():
            for label, sample, img, n in _rows(ds, batch_size):
                ident = label + identity_offset
                if fmt == "folder":
                    rel = f"{ident:07d}/{sample:05d}.png"
                    (out / rel).parent.mkdir(exist_ok=True)
                    Image.fromarray(img).save(out / rel, compress_level=1)
                else:
                    rel = f"train.rec#{label * per_identity + sample + 1}"  # record key
                writer.writerow([rel, ident, label, sample, *(_fmt(n[k]) for k in keys)])
                bar.update(1)
                yield img, label

        if fmt == "folder":
            count = sum(1 for _ in rows_and_files())
        else:
            try:
                from nbfacelib.data.recordio import write_image_rec
            except ImportError as exc:  # pragma: no cover - the module ships with the package
                raise UserError(f"--format rec needs nbfacelib.data.recordio ({exc})") from exc
            # Near-lossless JPEG: the .rec format stores JPEG; quality 100 keeps the simulated
            # compression (jpeg_quality in the CSV) the dominant one.
            count = write_image_rec(out, rows_and_files(), quality=100, overwrite=overwrite)
    bar.close()
    return count


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _caption(n: dict) -> tuple[str, str]:
    from nbfacelib.data.synthetic import OCCLUDERS

    top = f"q{n['quality']:.2f} y{n['yaw']:+.0f} p{n['pitch']:+.0f}"
    bits = []
    if n["occluder"] > 0:
        bits.append(f"{OCCLUDERS[int(n['occluder'])][:5]}{100 * n['occluded']:.0f}%")
    if n["blur_sigma"] > 0:
        bits.append(f"b{n['blur_sigma']:.1f}")
    if n["motion_length"] > 0:
        bits.append(f"m{n['motion_length']:.0f}")
    if n["noise_sigma"] > 0:
        bits.append(f"n{n['noise_sigma']:.0f}")
    if n["downsample"] > 1:
        bits.append(f"d{n['downsample']:g}")
    if n["jpeg_quality"] < 100:
        bits.append(f"j{n['jpeg_quality']:.0f}")
    if n["eyes_closed"] > 0:
        bits.append("ec")
    return top, " ".join(bits)


def write_preview(
    path,
    seed: int = 0,
    size: int = 112,
    difficulty: str = "medium",
    rows: int = 8,
    cols: int = 8,
    style: str = "flat",
) -> Path:
    """Contact sheet: ``rows`` identities (the first two near-twin pairs, then others) x ``cols``
    samples; each tile is captioned with its quality and main nuisances (q quality, y/p yaw and
    pitch in degrees, occluder and occluded %, b blur sigma, m motion length, n noise sigma,
    d down-sampling factor, j JPEG quality, ec eyes closed)."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from nbfacelib.data.synthetic import render, twin_parent

    cand = torch.arange(4096)
    parents = twin_parent(cand, seed)
    twins = [(int(p), int(c)) for c, p in zip(cand, parents) if p >= 0][:2]
    chosen: list[int] = [i for pair in twins for i in pair][:rows]
    i = 0
    while len(chosen) < rows:
        if i not in chosen and int(parents[i]) < 0:
            chosen.append(i)
        i += 1
    ids = torch.tensor(chosen).repeat_interleave(cols)
    samples = torch.arange(cols).repeat(rows)
    images, n = render(ids, samples, seed=seed, size=size, difficulty=difficulty, style=style)
    cap, margin, pad = 26, 92, 4
    W = margin + cols * (size + pad)
    H = 18 + rows * (size + cap + pad)
    sheet = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (4, 3), f"nbface synth preview: seed {seed}, {difficulty}, {style}, {size}x{size}", fill=(0, 0, 0)
    )
    arr = images.permute(0, 2, 3, 1).numpy()
    for r in range(rows):
        y = 18 + r * (size + cap + pad)
        ident = chosen[r]
        parent = int(parents[ident]) if ident < len(parents) else -1
        draw.text((4, y + size // 2 - 12), f"identity {ident}", fill=(0, 0, 0))
        if parent >= 0:
            draw.text((4, y + size // 2), f"twin of {parent}", fill=(180, 0, 0))
        for c in range(cols):
            k = r * cols + c
            x = margin + c * (size + pad)
            sheet.paste(Image.fromarray(np.ascontiguousarray(arr[k])), (x, y))
            top, bottom = _caption({key: float(v[k]) for key, v in n.items()})
            draw.text((x, y + size + 1), top, fill=(0, 0, 0))
            draw.text((x, y + size + 12), bottom, fill=(60, 60, 60))
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out

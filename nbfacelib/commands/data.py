"""``nbface data``: list, inspect, verify and convert data sets (folders, RecordIO, manifests)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="list / inspect / verify / convert data sets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="list the data set manifests (data_manifests/*.yaml)")
    ls.set_defaults(func=_list)

    info = sub.add_parser(
        "info",
        help="format, identities and images of a data set",
        description="Print format, identities and images of PATH, a URI (folder:, rec:, synthetic:, "
        "manifest:) or a manifest name.",
    )
    info.add_argument(
        "target", metavar="PATH|URI|NAME", help="a folder or .rec path, a URI, or a manifest name (orl)"
    )
    info.set_defaults(func=_info)

    ver = sub.add_parser(
        "verify",
        help="check that a manifest's data set is present and unaltered",
        description="Check presence, counts and checksums of data set NAME (see `nbface data list`). "
        "Exit 1, with how to obtain it, when it is missing or altered.",
    )
    ver.add_argument("name", metavar="NAME", help="the data set's manifest name, e.g. orl or lfw")
    ver.add_argument(
        "--deep", action="store_true", help="also the expensive counts (unpickle .bin, walk big trees)"
    )
    ver.set_defaults(func=_verify)

    conv = sub.add_parser(
        "convert",
        help="convert between an image folder and an InsightFace .rec",
        description="Copy SRC (folder, .rec or any URI) to DST as an image folder or an InsightFace "
        "RecordIO (DST/train.rec, or DST itself when it ends in .rec). Without --size the stored "
        "pixels are kept (JPEG bytes copied unchanged).",
    )
    conv.add_argument("src", metavar="SRC", help="data set to copy: a path, a URI or a manifest name")
    conv.add_argument("dst", metavar="DST", help="output folder, or a .rec file path")
    conv.add_argument(
        "--to", choices=("folder", "rec"), help="output format (default: rec if DST ends in .rec)"
    )
    conv.add_argument("--size", type=int, default=None, help="apply the size rule (pad to SIZE x SIZE) first")
    conv.add_argument(
        "--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)"
    )
    conv.add_argument("--ext", default="png", help="image type of a folder output: png (default), jpg, bmp")
    conv.add_argument("--overwrite", action="store_true", help="write into a non-empty DST / replace a .rec")
    conv.add_argument(
        "--layout",
        choices=("mxnet", "dmlc-2015"),
        default="mxnet",
        help="RecordIO framing: mxnet (magic 0xced7230a, what InsightFace files use; default) or "
        "dmlc-2015 (magic 0x3ed7230a, cflag<<30, the original 2015 layout)",
    )
    conv.add_argument("--no-progress", action="store_true", help="do not draw a progress bar (e.g. in logs)")
    conv.set_defaults(func=_convert)


def _list(args: argparse.Namespace) -> int:
    from nbfacelib.data.manifest import list_manifests, load_manifest, manifest_dir

    names = list_manifests()
    if not names:
        print(f"no manifests in {manifest_dir()}", file=sys.stderr)
        return 1
    rows = []
    for n in names:
        m = load_manifest(n)
        present = "generated" if m.format == "synthetic" else ("present" if m.find() else "missing")
        count = m.pairs if m.format == "pairs-bin" else m.images
        what = "pairs" if m.format == "pairs-bin" else "images"
        rows.append((n, m.format, present, f"{m.identities or '-'}", f"{count or '-'} {what}", m.title))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    return 0


def _info(args: argparse.Namespace) -> int:
    from nbfacelib.data.datasets import describe, open_dataset
    from nbfacelib.data.manifest import list_manifests, load_manifest

    target = args.target
    if target in list_manifests():
        m = load_manifest(target)
        print(f"manifest: {m.name} - {m.title} ({m.source})")
        if m.format in ("pairs-bin", "pairs-protocol", "ijb"):
            path = m.locate()
            print(f"format: {m.format}\npath: {path}\npairs expected: {m.pairs}")
            if m.format in ("pairs-bin", "pairs-protocol"):
                from nbfacelib.data.protocols import open_pair_set

                ps = open_pair_set(target)
                print(f"pairs: {len(ps)} (same {ps.n_same}, different {ps.n_diff})\nimages: {len(ps.images)}")
            return 0
    elif target.endswith(".bin"):
        from nbfacelib.data.datasets import resolve_path
        from nbfacelib.data.pairs import load_pairs

        ps = load_pairs(resolve_path(target))
        print(
            f"format: pairs-bin\npath: {ps.path}\npairs: {len(ps)} (same {ps.n_same}, different {ps.n_diff})"
        )
        return 0
    ds = open_dataset(target, size=None)
    for k, v in describe(ds).items():
        print(f"{k}: {v}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from nbfacelib.data.manifest import DatasetIntegrityError, DatasetNotFoundError, verify

    try:
        report = verify(args.name, deep=args.deep)
    except DatasetNotFoundError as exc:
        print(f"nbface data verify: {exc}", file=sys.stderr)
        return 1
    except DatasetIntegrityError as exc:
        if exc.report is not None:
            print(exc.report)
        print(f"nbface data verify: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from nbfacelib.data.datasets import convert_dataset

    out = convert_dataset(
        args.src,
        args.dst,
        to=args.to,
        size=args.size,
        quality=args.quality,
        ext=args.ext,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        layout=args.layout,
    )
    print(f"wrote {out['images']} images as {out['format']}: {out['dst']}")
    return 0

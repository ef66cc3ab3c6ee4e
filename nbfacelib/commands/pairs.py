"""``nbface pairs``: make and inspect verification pair sets (``.bin``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("pairs", help="make / inspect verification pair sets (.bin)")
    sub = p.add_subparsers(dest="pairs_command", metavar="ACTION", required=True)

    m = sub.add_parser(
        "make",
        help="write a published protocol (lfw, cfp_fp, cfp_ff, cfp_heldout) or sample pairs from a data set",
        description="SRC a protocol name (lfw, cfp_fp, cfp_ff, cfp_heldout): write the published "
        "pairs, in the publisher's order, from the data set under the data root (so the unshuffled "
        "10-fold split is the protocol's own folds). Any other SRC: sample N balanced same/different "
        "pairs in 10 fold-ready blocks (LFW View 2 layout). Written as an insightface .bin (JPEG).",
    )
    m.add_argument(
        "src",
        metavar="SRC",
        help="a protocol name, or a data set URI or path (anything nbfacelib.data.open_dataset takes)",
    )
    m.add_argument(
        "--pairs",
        type=int,
        metavar="N",
        help="how many pairs to sample, half of them same-identity (not for a published protocol)",
    )
    m.add_argument("--out", required=True, metavar="X.bin", help="path of the .bin pair set to write")
    g = m.add_mutually_exclusive_group()
    g.add_argument(
        "--exclude-ids",
        metavar="FILE",
        help="text file of identity labels to leave out (one per line, '#' comments), "
        "e.g. the training split",
    )
    g.add_argument(
        "--train-ids",
        type=int,
        metavar="N",
        help="the first N identities (in sorted label order) are the training split: leave them out",
    )
    m.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampling: the same seed gives the same pairs (default 0)",
    )
    m.add_argument(
        "--folds", type=int, default=10, help="consecutive fold blocks the pairs are laid out in (default 10)"
    )
    m.add_argument("--quality", type=int, default=95, help="JPEG quality of the stored images (default 95)")
    m.add_argument("--no-progress", action="store_true", help="do not draw a progress bar (e.g. in logs)")
    m.set_defaults(func=_make)

    i = sub.add_parser("info", help="summarise a .bin pair set")
    i.add_argument(
        "path", metavar="X.bin", help="the pair set to summarise (read with the restricted unpickler)"
    )
    i.set_defaults(func=_info)


def _open_dataset(uri):
    from nbfacelib.data.datasets import open_dataset

    return open_dataset(uri)


def _read_ids(path: str) -> list[int]:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--exclude-ids file not found: {p}")
    ids = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ids.append(int(line))
        except ValueError:
            raise ValueError(f"{p}:{n}: not an integer identity label: {line!r}") from None
    return ids


def _make_protocol(args: argparse.Namespace) -> int:
    from nbfacelib.data.manifest import load_manifest
    from nbfacelib.data.pairs import save_pairs
    from nbfacelib.data.protocols import read_protocol

    given = [f for f in ("pairs", "exclude_ids", "train_ids") if getattr(args, f) is not None]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise ValueError(f"{args.src} is a published protocol: its pairs are fixed ({flags} not allowed)")
    m = load_manifest(args.src)
    folder = m.locate()
    if not folder.is_dir():
        raise ValueError(
            f"{args.src}: found a ready pair set {folder}, not the protocol's folder to build from"
        )
    protocol = read_protocol(m.protocol.get("reader", args.src), folder)
    ps = protocol.to_pair_set(quality=args.quality, progress=not args.no_progress)
    out = save_pairs(args.out, ps.images, ps.issame)
    print(
        f"{out}: {args.src} protocol from {folder}, {len(ps)} pairs ({ps.n_same} same, {ps.n_diff} "
        f"different) in {protocol.nfolds} folds of {len(ps) // protocol.nfolds}, in the publisher's order"
    )
    return 0


def _make(args: argparse.Namespace) -> int:
    import numpy as np

    from nbfacelib.data.pairs import make_pair_set, save_pairs
    from nbfacelib.data.protocols import PROTOCOLS

    if args.src in PROTOCOLS:
        return _make_protocol(args)
    if args.pairs is None:
        raise ValueError(
            f"--pairs N is required to sample pairs from {args.src} (protocols: {', '.join(PROTOCOLS)})"
        )
    ds = _open_dataset(args.src)
    exclude = None
    if args.exclude_ids:
        exclude = _read_ids(args.exclude_ids)
    elif args.train_ids is not None:
        ids = np.unique(np.asarray(ds.labels))
        if not 0 <= args.train_ids < len(ids):
            raise ValueError(f"--train-ids {args.train_ids}: the data set has {len(ids)} identities")
        exclude = ids[: args.train_ids].tolist()
    ps = make_pair_set(
        ds,
        args.pairs,
        seed=args.seed,
        exclude_identities=exclude,
        quality=args.quality,
        nfolds=args.folds,
        progress=not args.no_progress,
    )
    out = save_pairs(args.out, ps.images, ps.issame)
    excl = f", {len(exclude)} identities excluded" if exclude else ""
    print(f"{out}: {len(ps)} pairs ({ps.n_same} same, {ps.n_diff} different){excl}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import io
    import os

    from PIL import Image

    from nbfacelib.data.pairs import load_pairs

    ps = load_pairs(args.path)
    print(f"file:       {args.path} ({os.path.getsize(args.path):,} bytes)")
    print(f"pairs:      {len(ps)}")
    print(f"same:       {ps.n_same}")
    print(f"different:  {ps.n_diff}")
    print(f"images:     {len(ps.images)}")
    for k in range(min(2, len(ps.images))):
        try:
            with Image.open(io.BytesIO(ps.images[k])) as im:
                desc = f"{im.format} {im.size[0]}x{im.size[1]} {im.mode}"
        except Exception as exc:
            desc = f"undecodable ({exc})"
        print(f"image {k}:    {desc}, {len(ps.images[k]):,} bytes")
    return 0

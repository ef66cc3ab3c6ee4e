"""``nbface export OUT --onnx``: the trained backbone of ``OUT`` as ``OUT/model.onnx``.

The backbone is rebuilt from ``OUT/config.json`` + ``OUT/model.safetensors``, exported with a
dynamic batch axis, checked with ``onnx.checker``, then run in ONNX Runtime on random inputs
(two batch sizes, which also exercises the dynamic axis) and compared with PyTorch: the max
absolute difference is printed and the command fails above ``--tolerance``.
"""

from __future__ import annotations

import warnings
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a trained backbone (ONNX)", description=__doc__)
    p.add_argument("out", help="a `nbface train --out` folder")
    p.add_argument("--onnx", action="store_true", help="write OUT/model.onnx (the only format so far)")
    p.add_argument(
        "--opset", type=int, default=17, help="ONNX operator set version to export with (default 17)"
    )
    p.add_argument("--output", default=None, help="where to write the ONNX file (default OUT/model.onnx)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff allowed vs PyTorch")
    p.set_defaults(func=run)


def run(args) -> int:
    from nbfacelib.cli import UserError

    if not args.onnx:
        raise UserError("choose a format: --onnx")
    path = Path(args.output) if args.output else Path(args.out) / "model.onnx"
    diff = export_onnx(args.out, path, opset=args.opset, tolerance=args.tolerance)
    print(f"wrote {path}; onnxruntime vs pytorch max abs diff {diff:.3g} (tolerance {args.tolerance:g})")
    return 0


def export_onnx(out_dir, path, opset: int = 17, tolerance: float = 1e-4, batch_sizes=(1, 3)) -> float:
    """Export, verify, and return the max abs difference between ONNX Runtime and PyTorch."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from nbfacelib.cli import UserError
    from nbfacelib.models.output import EmbeddingOnly
    from nbfacelib.train import load_backbone

    backbone = load_backbone(out_dir).float().eval()
    size = backbone.input_size
    model = EmbeddingOnly(backbone).eval()  # ONNX takes tensor outputs: the embedding only
    h, w = (size, size) if isinstance(size, int) else size
    example = torch.randn(2, 3, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # dynamo=False: the TorchScript exporter needs no onnxscript (not in our environment) and
    # handles dynamic_axes; its deprecation warning is expected, so keep it out of the output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in batch_sizes:
        x = torch.rand(n, 3, h, w, generator=g) * 2 - 1  # normalised pixels in [-1, 1]
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(["embedding"], {"images": x.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if not worst <= tolerance:
        raise UserError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} > tolerance {tolerance:g}")
    return worst

"""``nbface export OUT --onnx``: ONNX Runtime output equals PyTorch's on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbfacelib.train.config import TrainConfig


@pytest.fixture
def trained_dir(tmp_path):
    """An OUT folder as `nbface train` leaves it (config.json + model.safetensors), tiny model."""
    from nbfacelib.models import build_backbone
    from nbfacelib.train.engine import save_backbone

    cfg = TrainConfig(backbone="ir_tiny", embedding_size=32, input_size=32, steps=1, out=str(tmp_path))
    torch.manual_seed(0)
    model = build_backbone("ir_tiny", embedding_size=32, input_size=32)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_backbone(model, cfg, tmp_path)
    return tmp_path


def test_export_onnx_matches_pytorch_with_dynamic_batch(trained_dir, capsys):
    import onnxruntime as ort

    from nbfacelib.cli import main
    from nbfacelib.train import load_backbone

    assert main(["export", str(trained_dir), "--onnx", "--opset", "17"]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed
    path = trained_dir / "model.onnx"
    assert path.is_file()
    # independent check: batch sizes the exporter never saw
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = load_backbone(trained_dir)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (5, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_export_fails_above_tolerance_and_without_format(trained_dir, capsys):
    from nbfacelib.cli import main

    assert main(["export", str(trained_dir), "--onnx", "--tolerance", "-1"]) == 1  # any diff > -1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert main(["export", str(trained_dir)]) == 1
    assert "--onnx" in capsys.readouterr().err


def test_export_missing_run_names_the_file(tmp_path, capsys):
    from nbfacelib.cli import main

    assert main(["export", str(tmp_path / "nope"), "--onnx"]) == 1
    assert "model.safetensors" in capsys.readouterr().err

"""``nbface eval RUN_DIR --data X``: a checkpoint and a pair set give the standard numbers."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from nbfacelib.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished ``nbface train`` run (2 steps of a tiny model on 8 synthetic identities), and
    the validation numbers training reported for it."""
    from nbfacelib.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("eval_run")
    cfg = TrainConfig(
        backbone="ir_tiny",
        embedding_size=32,
        input_size=32,
        data="synthetic:ids=8,per_id=4,seed=0",
        val=["synthetic-heldout"],
        val_ids=20,
        val_pairs=40,
        steps=2,
        batch_size=8,
        lr=0.01,
        out=str(out),
        progress=False,
    )
    result = fit(cfg)
    return out, result["eval"]


@pytest.fixture(scope="module")
def orl_bin(tmp_path_factory):
    """A pair set made by ``nbface pairs make`` (112x112 JPEG)."""
    out = tmp_path_factory.mktemp("eval_bin") / "orl.bin"
    assert main(["pairs", "make", "orl", "--pairs", "60", "--out", str(out), "--no-progress"]) == 0
    return out


def test_eval_on_a_bin_made_by_pairs_make(run_dir, orl_bin, tmp_path, capsys):
    from nbfacelib.data.pairs import load_pairs
    from nbfacelib.eval.embed import embed
    from nbfacelib.eval.verification import evaluate
    from nbfacelib.train import load_backbone

    run, _ = run_dir
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--data", str(orl_bin), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "AUC" in text and "EER" in text and "TAR@FAR=1e-01" in text
    assert "112x112 images resized to the model's 32x32" in text
    doc = json.loads(out.read_text())
    got = doc["results"]["orl"]
    assert doc["input_size"] == 32 and got["n_pairs"] == 60 and "orl.bin" in got["source"]
    assert got["native_size"] == [112, 112]
    got = got["metrics"]
    assert set(got) >= {"accuracy", "accuracy_std", "auc", "eer", "tar@far=1e-01"}
    # the same numbers as embedding and scoring the .bin by hand
    emb = embed(load_backbone(run), load_pairs(orl_bin).decode(32), progress=False, normalize=False)
    want = evaluate(emb[0::2], emb[1::2], load_pairs(orl_bin).issame)
    assert got["accuracy"] == want["accuracy"] and got["auc"] == want["auc"]
    assert f"{100 * want['accuracy']:.2f} +- {100 * want['accuracy_std']:.2f}" in text


def test_synthetic_heldout_reproduces_the_numbers_training_reported(run_dir, capsys):
    run, reported = run_dir
    assert main(["eval", str(run), "--data", "synthetic-heldout", "--data", "orl", "--pairs", "40"]) == 0
    assert "synthetic-heldout" in capsys.readouterr().out
    from nbfacelib.commands.eval import evaluate_run, load_run

    cfg, model = load_run(run)
    res = evaluate_run(model, cfg, ["synthetic-heldout", "orl"], pairs=40)
    got = res["synthetic-heldout"]["metrics"]
    assert got["accuracy"] == pytest.approx(reported["synthetic-heldout/accuracy"], abs=1e-12)
    assert got["auc"] == pytest.approx(reported["synthetic-heldout/auc"], abs=1e-12)
    assert res["synthetic-heldout"]["n_pairs"] == 40 and res["orl"]["n_pairs"] == 40
    assert res["orl"]["native_size"] == [112, 92]  # ORL's 92x112, padded then resized


def test_trunk_output_scores_the_flattened_trunk_features(run_dir, tmp_path, capsys):
    from nbfacelib.eval.evalsets import evaluate_model, orl
    from nbfacelib.models.output import TrunkFeatures
    from nbfacelib.train import load_backbone

    run, _ = run_dir
    out = tmp_path / "trunk.json"
    assert (
        main(["eval", str(run), "--data", "orl", "--pairs", "40", "--output", "trunk", "--json", str(out)])
        == 0
    )
    assert "scored by its trunk" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    want = evaluate_model(TrunkFeatures(load_backbone(run)), orl(40, 32)).metrics
    assert doc["output"] == "trunk" and doc["results"]["orl"]["metrics"]["accuracy"] == want["accuracy"]
    assert main(["eval", str(run), "--data", "orl", "--output", "pooled"]) == 1
    assert "unknown model output 'pooled'" in capsys.readouterr().err


def test_size_mismatch_is_refused_with_no_resize(run_dir, orl_bin, capsys):
    run, _ = run_dir
    assert main(["eval", str(run), "--data", str(orl_bin), "--no-resize"]) == 1
    err = capsys.readouterr().err
    assert str(orl_bin) in err and "112x112" in err and "32x32" in err and "Traceback" not in err


class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_bad_inputs_get_errors_that_name_the_file(run_dir, tmp_path, capsys):
    run, _ = run_dir
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(_Evil(os.system, (f"touch {marker}",))))
    assert main(["eval", str(run), "--data", str(evil)]) == 1
    err = capsys.readouterr().err
    assert "evil.bin" in err and "refused" in err and not marker.exists()

    assert main(["eval", str(run), "--data", str(tmp_path / "nope.bin")]) == 1
    assert "nope.bin" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", "no_such_name"]) == 1
    err = capsys.readouterr().err
    assert "no_such_name" in err and "synthetic-heldout" in err and "lfw" in err

    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["eval", str(empty), "--data", "orl"]) == 1
    assert str(empty / "config.json") in capsys.readouterr().err
    broken = tmp_path / "broken_run"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["eval", str(broken), "--data", "orl"]) == 1
    assert str(broken / "model.safetensors") in capsys.readouterr().err


def test_pair_sources_can_be_registered(run_dir):
    from nbfacelib.eval.evalsets import EvalSet
    from nbfacelib.eval.pair_sources import PAIR_SOURCES, open_pairs, register_pair_source

    @register_pair_source("tiny-protocol")
    def tiny(*, size, **_):
        import torch

        images = torch.zeros(40, 3, size, size, dtype=torch.uint8)
        same = np.arange(20) % 2 == 0
        return EvalSet("tiny-protocol", images, None, np.arange(0, 40, 2), np.arange(1, 40, 2), same), (
            size,
            size,
        )

    try:
        evalset, native = open_pairs("tiny-protocol", size=32)
        assert evalset.images.shape == (40, 3, 32, 32) and evalset.n_pairs == 20 and native == (32, 32)
        with pytest.raises(ValueError, match="already registered"):
            register_pair_source("tiny-protocol")(tiny)
    finally:
        PAIR_SOURCES.pop("tiny-protocol")

"""eval/evalsets.py: the pair-quality rule, each source of evaluation sets, and scoring (against
verification.evaluate and a hand-computed per-bin accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbfacelib.eval import evalsets as ev
from nbfacelib.eval.verification import evaluate


def test_pair_quality_is_the_lower_of_the_two():
    q = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.95])
    i1, i2 = np.array([0, 1, 2, 4, 5, 1]), np.array([1, 2, 3, 5, 4, 5])
    pq = ev.pair_quality(q, i1, i2)
    assert pq.tolist() == [0.1, 0.5, 0.2, 0.8, 0.8, 0.9]
    which, edges = ev.quality_bins(pq, 3)  # edges at the 1/3, 2/3 quantiles: 0.4, 0.8
    assert which.tolist() == [0, 1, 0, 2, 2, 2]
    np.testing.assert_allclose(edges, np.quantile(pq, [1 / 3, 2 / 3]))
    which2, edges2 = ev.quality_bins(pq, 2)
    assert len(edges2) == 1 and set(which2.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="bins"):
        ev.quality_bins(pq, 0)


class _Linear(torch.nn.Module):
    """A fixed random projection of pooled pixels: a deterministic 'model' to embed with."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, dim)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


@pytest.mark.filterwarnings("ignore:sample_pairs:UserWarning")
def test_synthetic_heldout_and_scoring():
    es = ev.synthetic_heldout(6, 4, 40, identity_offset=8, input_size=48)
    assert es.images.shape == (24, 3, 48, 48) and es.images.dtype == torch.uint8
    assert es.quality.shape == (24,) and ((es.quality >= 0) & (es.quality <= 1)).all()
    assert set(es.labels.tolist()) == set(range(6)) and es.n_pairs == 40
    assert "from 8" in es.description
    odd = ev.synthetic_heldout(4, 3, 20, identity_offset=7, input_size=48)
    assert "from 8" in odd.description  # twins (2k, 2k+1) never straddle the split

    model = _Linear()
    res = ev.evaluate_model(model, es)
    ref = evaluate(*_pair_embeddings(model, es), es.issame)
    assert res.metrics["accuracy"] == ref["accuracy"] and res.metrics["auc"] == pytest.approx(ref["auc"])
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)
    assert res.norms.shape == (24,) and (res.norms > 0).all()
    fpr, tpr = res.roc
    assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    # the per-bin accuracy by hand: lower quality of the pair, terciles, the protocol threshold
    e = res.embeddings.astype(np.float64)
    d2 = ((e[es.idx1] - e[es.idx2]) ** 2).sum(1)
    correct = (d2 < res.metrics["threshold"]) == es.issame
    pq = np.minimum(es.quality[es.idx1], es.quality[es.idx2])
    lo = pq < np.quantile(pq, 1 / 3)  # np.digitize: bin 0 is below the first edge
    assert res.metrics["acc_q0"] == pytest.approx(correct[lo].mean())


def _pair_embeddings(model, es):
    with torch.no_grad():
        x = (es.images.float() / 255 - 0.5) / 0.5
        e = (model(x) + model(x.flip(3))).numpy()
    return e[es.idx1], e[es.idx2]


@pytest.mark.filterwarnings("ignore:sample_pairs:UserWarning")  # 10 identities: folds share them
def test_pair_bin_and_image_folder(tmp_path):
    from nbfacelib.data.folder import write_image_folder
    from nbfacelib.data.pairs import make_pair_set, save_pairs
    from nbfacelib.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(10, 4, seed=3)
    pairs = make_pair_set(faces, 20, seed=0)
    path = save_pairs(tmp_path / "tiny.bin", pairs.images, pairs.issame)
    es = ev.open_evalset(str(path), input_size=48)
    assert es.name == "tiny" and es.n_pairs == 20 and es.labels is None and es.quality is None
    assert es.idx1.tolist() == list(range(0, 40, 2)) and es.idx2.tolist() == list(range(1, 40, 2))
    # lazily decoded images score exactly as the same images held as one tensor
    model = _Linear()
    lazy = ev.evaluate_model(model, es)
    images = torch.stack([es.images[i] for i in range(40)])
    held = ev.EvalSet("held", images, None, es.idx1, es.idx2, es.issame)
    np.testing.assert_allclose(lazy.embeddings, ev.evaluate_model(model, held).embeddings, atol=1e-6)
    assert lazy.metrics["accuracy"] == ev.evaluate_model(model, held).metrics["accuracy"]

    write_image_folder(tmp_path / "folder", ((faces[i][0], faces[i][1]) for i in range(len(faces))))
    fo = ev.open_evalset(str(tmp_path / "folder"), input_size=48, n_pairs=20)
    assert fo.images.shape == (40, 3, 48, 48) and set(fo.labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="expected 'orl'"):
        ev.open_evalset(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="identity_offset"):
        ev.open_evalset("synthetic-heldout")
    with pytest.raises(ValueError, match="outside"):
        ev.EvalSet("bad", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, [0], [2], [True])


def test_orl_set(orl_root):
    es = ev.orl(40, input_size=48, people=range(1, 6))
    assert es.images.shape == (50, 3, 48, 48) and set(es.labels.tolist()) == set(range(5))
    assert es.quality is None and es.n_pairs == 40


@pytest.mark.filterwarnings("ignore:sample_pairs:UserWarning")  # 10 identities: folds share them
def test_manifest_names_open_their_ready_bins(tmp_path, monkeypatch):
    """``val_bins: [lfw, cfp_fp, agedb_30]`` (the paper preset): a protocol manifest whose data
    root holds the ready ``.bin`` instead of the folder, and a ``pairs-bin`` manifest, open by
    name; without them the error says how to obtain the data set."""
    from nbfacelib.data.manifest import DatasetNotFoundError, load_manifest
    from nbfacelib.data.pairs import make_pair_set, save_pairs
    from nbfacelib.data.synthetic import SyntheticFaces

    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError):
        ev.open_evalset("agedb_30")
    pairs = make_pair_set(SyntheticFaces(10, 4, seed=3), 20, seed=0)
    for name in ("lfw", "agedb_30"):
        m = load_manifest(name)
        where = m.location if m.format == "pairs-bin" else m.alternatives[0]
        save_pairs(tmp_path / where, pairs.images, pairs.issame)
        es = ev.open_evalset(name, input_size=32)
        assert es.name == name and es.n_pairs == 20 and es.issame.tolist() == list(pairs.issame)

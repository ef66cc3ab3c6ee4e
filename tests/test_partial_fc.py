"""Partial FC: one process against the plain full softmax, then 2 gloo ranks on the CPU
(spawned once, every scenario in the same run) against the single-process reference."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from nbfacelib import distributed as nbdist
from nbfacelib.losses import PartialFC, build_margin

D = 6
SIZES = [3, 5]  # unequal local batches on the two ranks


def make_data(num_classes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, D, generator=g, dtype=dtype)
    emb = torch.randn(sum(SIZES), D, generator=g, dtype=dtype) * 6.0  # norms ~15: inside MagFace's range
    labels = torch.randint(0, num_classes, (sum(SIZES),), generator=g)
    return centres, emb, labels


def reference(name, kw, num_classes, dtype, classes=None):
    """Single-process loss and gradients: plain F.cross_entropy on the head's logits over all
    classes (or only ``classes``, sorted global ids), no Partial FC involved."""
    centres, emb, labels = make_data(num_classes, dtype)
    emb.requires_grad_()
    centres.requires_grad_()
    head = build_margin(name, **kw).to(dtype)
    w, y = centres, labels
    if classes is not None:
        w, y = centres[classes], torch.searchsorted(classes, labels)
        assert torch.equal(classes[y], labels)  # every positive is among the classes
    cos = F.linear(F.normalize(emb), F.normalize(w)).clamp(-1, 1) if head.normalize else emb @ w.T
    loss = head.loss(cos, y, emb.norm(dim=1))
    loss.backward()
    return {"loss": loss.detach(), "emb_grad": emb.grad, "weight_grad": centres.grad, "head": head}


def run_pfc(name, kw, num_classes, dtype, sample_rate=1.0, backbone_ddp=False, weighted=False):
    """This process's part (a rank, or the whole batch without a process group); ``weighted``:
    per-sample weights 1 + i / B on the global batch's rows (TransFace's EHSM)."""
    centres, emb, labels = make_data(num_classes, dtype)
    r, w = nbdist.rank(), nbdist.world_size()
    rows = slice(sum(SIZES[:r]), sum(SIZES[: r + 1])) if w > 1 else slice(None)
    head = build_margin(name, **kw)
    pfc = PartialFC(head, D, num_classes, sample_rate=sample_rate, backbone_ddp=backbone_ddp).to(dtype)
    state = {"weight": centres, **{f"margin.{k}": v for k, v in head.state_dict().items()}}
    pfc.load_full_state_dict(state)
    e = emb[rows].clone().requires_grad_()
    weights = (1 + torch.arange(len(emb), dtype=dtype) / len(emb))[rows] if weighted else None
    loss = pfc(e, labels[rows], sample_weights=weights)
    loss.backward()
    out = {"loss": loss.detach(), "emb_grad": e.grad, "weight_grad": pfc.weight.grad}
    out["sampled"] = pfc.sampled_classes
    out["num_local"], out["num_sample"] = pfc.num_local, pfc.num_sample
    out.update({f"buf.{k}": v.clone() for k, v in head.state_dict().items()})
    return out


def backbone_and_inputs():
    torch.manual_seed(5)
    backbone = torch.nn.Linear(4, D).double()
    g = torch.Generator().manual_seed(6)
    return backbone, torch.randn(sum(SIZES), 4, generator=g, dtype=torch.float64)


def run_ddp_backbone():
    backbone, x = backbone_and_inputs()
    centres, _, labels = make_data(7, torch.float64)
    r = nbdist.rank()
    rows = slice(sum(SIZES[:r]), sum(SIZES[: r + 1]))
    model = torch.nn.parallel.DistributedDataParallel(backbone)
    pfc = PartialFC(build_margin("arcface"), D, 7, backbone_ddp=True).double()
    pfc.load_full_state_dict({"weight": centres})
    pfc(model(x[rows]), labels[rows]).backward()
    return {"weight": backbone.weight.grad, "bias": backbone.bias.grad}


DIST_CASES = {
    # name: (head, kwargs, num_classes, dtype, sample_rate, backbone_ddp)
    "arcface64": ("arcface", {}, 7, torch.float64, 1.0, False),
    "softmax64": ("softmax", {}, 7, torch.float64, 1.0, False),
    "norm_softmax64": ("norm_softmax", {"s": 30.0}, 7, torch.float64, 1.0, False),
    "arcface32": ("arcface", {}, 7, torch.float32, 1.0, False),
    "curricular64": ("curricularface", {}, 7, torch.float64, 1.0, False),
    "magface64": ("magface", {}, 7, torch.float64, 1.0, False),
    "arcface_ddp": ("arcface", {}, 7, torch.float64, 1.0, True),
    "sampled_arcface": ("arcface", {}, 40, torch.float64, 0.3, False),
    "sampled_curricular": ("curricularface", {}, 40, torch.float64, 0.3, False),
}


def _worker(rank, world, port, out_dir):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    # gloo: no CUDA here; a hang ends in 2 min. A FileStore, not rank 0's TCPStore: with a TCP
    # store, rank 0 exiting first could abort rank 1's teardown (SIGABRT, ~1 run in 25).
    store = f"file://{os.path.join(out_dir, 'store')}"
    assert nbdist.init_distributed(timeout_s=120, init_method=store) is True
    try:
        assert torch.distributed.get_backend() == "gloo"
        results = {"rank": nbdist.rank(), "world": nbdist.world_size()}
        # differentiable gather with unequal sizes: gradient of sum(gathered * weights)
        x = torch.full((SIZES[rank], 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
        gathered = nbdist.all_gather_rows(x)
        (gathered * torch.arange(gathered.numel(), dtype=torch.float64).view_as(gathered)).sum().backward()
        results["gather"], results["gather_grad"] = gathered.detach(), x.grad
        for case, (name, kw, c, dtype, rate, ddp) in DIST_CASES.items():
            torch.manual_seed(100 + rank)  # each rank samples its own negatives
            results[case] = run_pfc(name, kw, c, dtype, rate, ddp)
        results["weighted_arcface"] = run_pfc("arcface", {}, 7, torch.float64, weighted=True)
        # the engine's set-up: a DDP backbone (averages gradients) + backbone_ddp=True
        results["ddp_backbone"] = run_ddp_backbone()
        # checkpoints: gather at W=2 ...
        centres, _, _ = make_data(7, torch.float32)
        pfc = PartialFC(build_margin("curricularface"), D, 7)
        pfc.load_full_state_dict({"weight": centres, "margin.t": torch.tensor(0.25)})
        results["full_state"] = pfc.full_state_dict()
        # ... and scatter a state saved at W=1 (by the test process)
        pfc = PartialFC(build_margin("curricularface"), D, 7)
        pfc.load_full_state_dict(torch.load(os.path.join(out_dir, "w1.pt"), weights_only=True))
        results["loaded_shard"], results["loaded_t"] = pfc.weight.detach().clone(), pfc.margin.t.clone()
        results["class_range"] = (pfc.class_start, pfc.num_local)
        results["regathered"] = pfc.full_state_dict()["weight"]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        nbdist.cleanup_distributed()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("pfc2")
    g = torch.Generator().manual_seed(7)
    w1 = {"weight": torch.randn(7, D, generator=g), "margin.t": torch.tensor(0.125)}
    torch.save(w1, out / "w1.pt")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], w1


# -- one process ---------------------------------------------------------------------------
def test_helpers_without_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert not nbdist.is_distributed()
    assert (nbdist.rank(), nbdist.world_size()) == (0, 1)
    assert nbdist.init_distributed() is False
    x = torch.ones(3, 2, requires_grad=True)
    assert nbdist.all_gather_rows(x) is x
    t = torch.tensor([2.0])
    assert nbdist.all_reduce(t, "max") is t and t.item() == 2.0


@pytest.mark.parametrize("name", ["arcface", "softmax", "cosface", "combined", "curricularface", "magface"])
def test_single_process_equals_full_softmax(name):
    got = run_pfc(name, {}, 7, torch.float64)
    ref = reference(name, {}, 7, torch.float64)
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["emb_grad"], ref["emb_grad"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["weight_grad"], ref["weight_grad"], rtol=1e-10, atol=1e-12)
    assert got["sampled"] is None


@pytest.mark.parametrize("name", ["arcface", "softmax", "magface"])
def test_gradcheck_partial_fc_single_process(name):
    centres, emb, labels = make_data(7, torch.float64)
    pfc = PartialFC(build_margin(name), D, 7).double()
    emb.requires_grad_()
    centres.requires_grad_()

    def loss(e, w):  # the module with its centres swapped for w
        return torch.func.functional_call(pfc, {"weight": w}, (e, labels))

    assert torch.autograd.gradcheck(loss, (emb, centres))


def test_single_process_sampling_keeps_positives_and_matches_restricted_softmax():
    torch.manual_seed(3)
    got = run_pfc("arcface", {}, 40, torch.float64, sample_rate=0.3)
    sampled = got["sampled"]
    _, _, labels = make_data(40, torch.float64)
    assert set(labels.tolist()) <= set(sampled.tolist())
    n_pos = len(set(labels.tolist()))
    assert len(sampled) == max(math.ceil(0.3 * 40), n_pos) and bool((sampled[1:] > sampled[:-1]).all())
    ref = reference("arcface", {}, 40, torch.float64, classes=sampled)
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["emb_grad"], ref["emb_grad"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["weight_grad"], ref["weight_grad"], rtol=1e-10, atol=1e-12)
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[sampled] = False
    assert bool((got["weight_grad"][unsampled] == 0).all())


def test_eval_mode_uses_every_class():
    centres, emb, labels = make_data(40, torch.float64)
    pfc = PartialFC(build_margin("arcface"), D, 40, sample_rate=0.1).double().eval()
    pfc.load_full_state_dict({"weight": centres})
    loss = pfc(emb, labels)
    assert pfc.sampled_classes is None
    assert loss.item() == pytest.approx(reference("arcface", {}, 40, torch.float64)["loss"].item(), rel=1e-12)


def test_bad_inputs_are_named():
    pfc = PartialFC(build_margin("arcface"), D, 7)
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 7\), got 7"):
        pfc(torch.randn(2, D), torch.tensor([1, 7]))
    with pytest.raises(ValueError, match="embeddings must be"):
        pfc(torch.randn(2, D + 1), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(build_margin("arcface"), D, 7, sample_rate=0.0)
    with pytest.raises(ValueError, match=r"'weight' is \(5, 6\), expected \(7, 6\)"):
        pfc.load_full_state_dict({"weight": torch.zeros(5, D)})
    with pytest.raises(TypeError, match="MarginHead"):
        PartialFC(torch.nn.Identity(), D, 7)


def test_checkpoint_round_trip_single_process():
    g = torch.Generator().manual_seed(1)
    pfc = PartialFC(build_margin("curricularface"), D, 7)
    pfc.margin.t.fill_(0.3)
    state = pfc.full_state_dict()
    assert set(state) == {"weight", "margin.t"} and state["weight"].shape == (7, D)
    other = PartialFC(build_margin("curricularface"), D, 7)
    other.weight.data.copy_(torch.randn(7, D, generator=g))
    other.load_full_state_dict(state)
    assert torch.equal(other.weight, pfc.weight) and other.margin.t.item() == pytest.approx(0.3)


# -- two gloo ranks ------------------------------------------------------------------------
def test_distributed_helpers_and_gather(two_ranks):
    results, _ = two_ranks
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    expect = torch.tensor([[1.0, 1.0]] * SIZES[0] + [[2.0, 2.0]] * SIZES[1], dtype=torch.float64)
    weights = torch.arange(2 * sum(SIZES), dtype=torch.float64).view(-1, 2)
    for r, res in enumerate(results):
        assert torch.equal(res["gather"], expect)
        rows = slice(sum(SIZES[:r]), sum(SIZES[: r + 1]))
        # both ranks weight the gathered rows identically: the gradient is the sum, 2 x weights
        assert torch.equal(res["gather_grad"], 2 * weights[rows])


@pytest.mark.parametrize(
    "case",
    ["arcface64", "softmax64", "norm_softmax64", "arcface32", "curricular64", "magface64", "arcface_ddp"],
)
def test_two_ranks_equal_single_process_full_softmax(two_ranks, case):
    results, _ = two_ranks
    name, kw, c, dtype, _, ddp = DIST_CASES[case]
    ref = reference(name, kw, c, dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for res in results:  # the same loss on every rank
        torch.testing.assert_close(res[case]["loss"], ref["loss"], **tol)
    emb_grad = torch.cat([res[case]["emb_grad"] for res in results])
    weight_grad = torch.cat([res[case]["weight_grad"] for res in results])
    assert [res[case]["num_local"] for res in results] == [4, 3]  # 7 classes: 7 // 2 + (r < 1)
    torch.testing.assert_close(emb_grad, ref["emb_grad"] * (2 if ddp else 1), **tol)
    torch.testing.assert_close(weight_grad, ref["weight_grad"], **tol)
    if name == "curricularface":  # t from the global batch, identical on both ranks
        for res in results:
            torch.testing.assert_close(res[case]["buf.t"], ref["head"].t, rtol=1e-12, atol=1e-15)
        assert ref["head"].t.item() != 0.0


def test_two_ranks_sample_weights_equal_single_process(two_ranks):
    """Per-sample weights (EHSM) are gathered with the rows: 2 ranks = one process."""
    results, _ = two_ranks
    ref = run_pfc("arcface", {}, 7, torch.float64, weighted=True)  # no process group here
    plain = run_pfc("arcface", {}, 7, torch.float64)
    assert not torch.allclose(ref["loss"], plain["loss"])
    for res in results:
        torch.testing.assert_close(res["weighted_arcface"]["loss"], ref["loss"], rtol=1e-10, atol=1e-12)
    emb_grad = torch.cat([res["weighted_arcface"]["emb_grad"] for res in results])
    weight_grad = torch.cat([res["weighted_arcface"]["weight_grad"] for res in results])
    torch.testing.assert_close(emb_grad, ref["emb_grad"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weight_grad, ref["weight_grad"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["sampled_arcface", "sampled_curricular"])
def test_two_ranks_sampling_keeps_every_positive(two_ranks, case):
    results, _ = two_ranks
    name, kw, c, dtype, rate, _ = DIST_CASES[case]
    _, _, labels = make_data(c, dtype)
    sampled = torch.cat([res[case]["sampled"] for res in results])
    assert set(labels.tolist()) <= set(sampled.tolist())  # every positive of the global batch
    for r, res in enumerate(results):
        start = 20 * r
        n_pos = len({y for y in labels.tolist() if start <= y < start + 20})
        assert len(res[case]["sampled"]) == max(math.ceil(rate * 20), n_pos)
        assert bool(((res[case]["sampled"] >= start) & (res[case]["sampled"] < start + 20)).all())
    assert len(sampled) < c  # some negatives were really left out
    ref = reference(name, kw, c, dtype, classes=sampled)
    for res in results:
        torch.testing.assert_close(res[case]["loss"], ref["loss"], rtol=1e-10, atol=1e-12)
    emb_grad = torch.cat([res[case]["emb_grad"] for res in results])
    torch.testing.assert_close(emb_grad, ref["emb_grad"], rtol=1e-10, atol=1e-12)
    weight_grad = torch.cat([res[case]["weight_grad"] for res in results])
    torch.testing.assert_close(weight_grad, ref["weight_grad"], rtol=1e-10, atol=1e-12)  # zeros elsewhere


def test_checkpoint_gathers_and_scatters_across_world_sizes(two_ranks):
    results, w1 = two_ranks
    centres, _, _ = make_data(7, torch.float32)
    # saved at W=2: identical full state on both ranks, equal to the centres
    for res in results:
        assert torch.equal(res["full_state"]["weight"], centres)
        assert res["full_state"]["margin.t"].item() == 0.25
    # ... loads at W=1
    single = PartialFC(build_margin("curricularface"), D, 7)
    single.load_full_state_dict(results[0]["full_state"])
    assert torch.equal(single.weight.detach(), centres) and single.margin.t.item() == 0.25
    # saved at W=1, loaded at W=2: each rank has its rows, and gathering gives back the whole
    assert [res["class_range"] for res in results] == [(0, 4), (4, 3)]
    for res in results:
        start, n = res["class_range"]
        assert torch.equal(res["loaded_shard"], w1["weight"][start : start + n])
        assert res["loaded_t"].item() == 0.125
        assert torch.equal(res["regathered"], w1["weight"])


def test_ddp_backbone_gradient_equals_single_process(two_ranks):
    results, _ = two_ranks
    backbone, x = backbone_and_inputs()
    centres, _, labels = make_data(7, torch.float64)
    emb = backbone(x)
    cos = F.linear(F.normalize(emb), F.normalize(centres)).clamp(-1, 1)
    build_margin("arcface").loss(cos, labels).backward()
    for res in results:  # DDP averaged the ranks' gradients; backbone_ddp made that the exact one
        torch.testing.assert_close(
            res["ddp_backbone"]["weight"], backbone.weight.grad, rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(res["ddp_backbone"]["bias"], backbone.bias.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["arcface", "curricularface", "magface"])
def test_cuda_single_process_matches_cpu_reference(name):
    centres, emb, labels = make_data(40, torch.float64)
    ref = reference(name, {}, 40, torch.float64)
    pfc = PartialFC(build_margin(name), D, 40).cuda()
    buffers = {f"margin.{k}": v for k, v in pfc.margin.state_dict().items()}
    pfc.load_full_state_dict({"weight": centres.float(), **buffers})
    e = emb.float().cuda().requires_grad_()
    loss = pfc(e, labels.cuda())
    loss.backward()
    torch.testing.assert_close(loss.double().cpu(), ref["loss"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(e.grad.double().cpu(), ref["emb_grad"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(pfc.weight.grad.double().cpu(), ref["weight_grad"], rtol=1e-3, atol=1e-4)
    # bf16 autocast with sampling runs, keeps every positive and stays finite
    sampled = PartialFC(build_margin(name), D, 40, sample_rate=0.25).cuda()
    e.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = sampled(e, labels.cuda())
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and torch.isfinite(e.grad).all()
    assert set(labels.tolist()) <= set(sampled.sampled_classes.tolist())


def test_centres_are_created_on_the_requested_device_with_the_cpu_draw():
    """``device=``: 10M centres are drawn where they live (no CPU draw + copy); on the CPU the
    numbers are those of the default construction (same generator draws)."""
    torch.manual_seed(3)
    default = PartialFC(build_margin("arcface"), 8, 50)
    torch.manual_seed(3)
    explicit = PartialFC(build_margin("arcface"), 8, 50, device="cpu")
    assert torch.equal(default.weight, explicit.weight)
    assert PartialFC(build_margin("arcface"), 8, 50, device="meta").weight.device.type == "meta"


def test_bf16_autocast_cosines_are_float32():
    """Under bf16 autocast the cosine matmul runs in float32 (arcface_torch train_v2 builds its
    PartialFC_V2 with fp16=False): the target angle the margin sees is exact to float32, where a
    bf16 matmul is off by ~5e-3 rad (1 % of m = 0.5)."""
    g = torch.Generator().manual_seed(0)
    dim, classes = 512, 1000
    labels = torch.randint(0, classes, (64,), generator=g)
    pfc = PartialFC(build_margin("arcface"), dim, classes)
    # a trained model's embeddings sit near their centres (theta_y ~ 0.3 rad), where arccos is
    # steep and a rounding error in the cosine becomes a large error in the angle
    emb = F.normalize(pfc.weight.detach()[labels]) * 20 + torch.randn(64, dim, generator=g) * 0.3
    seen = {}
    apply_margin = pfc.margin.apply_margin

    def spy(logits, labels, *args):
        seen["cos"] = logits.detach()
        return apply_margin(logits, labels, *args)

    pfc.margin.apply_margin = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pfc(emb, labels)
    assert loss.dtype == torch.float32
    exact = F.linear(F.normalize(emb.double()), F.normalize(pfc.weight.detach().double()))
    angle = torch.acos(seen["cos"].double().gather(1, labels[:, None]))
    error = (angle - torch.acos(exact.gather(1, labels[:, None]))).abs().max()
    assert error < 1e-5, f"target angle off by {float(error):.2e} rad under bf16 autocast"
    assert 0.1 < float(angle.mean()) < 0.6  # the regime the comment describes

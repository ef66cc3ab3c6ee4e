"""TopoFR's training-step overhead over the plain ArcFace step (the paper reports 1.16x).

    python benchmarks/topofr_overhead.py [--quick] [--backbone ir_small] [--batch-size 128]
                                         [--input-size 112] [--device cpu]

One step = ``objective.prepare`` (RSP) + backbone forward + objective forward (ArcFace /
TopoFR: ISA with H0 pairs of the input and latent batches, GUM EM) + backward + SGD step, on
the same backbone, batch and classes. The variants run round by round in one process (so all
see the same machine load), median of ``steps`` rounds after one warm-up round; the ratio is
each variant's median over ArcFace's. Because the whole step is noisy on a shared machine,
the objective's own work (RSP, the loss forward and backward on a fixed embedding, no
backbone) is also timed in the same rounds: its extra time over ArcFace's objective, divided
by the ArcFace step, is the overhead with the backbone's noise taken out. Variants:
``arcface`` (the registry's margin objective), ``topofr`` (PTSA + SDE, the defaults), and
the ablation rows ``+isa`` and ``+ptsa`` to show where the time goes.
``step_timings(device)`` returns the dict, for the GPU check.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nbfacelib.machine import describe_machine

VARIANTS = {
    "arcface": ("arcface", {}),
    "+isa": ("topofr", {"rsp_p": 0.0, "sde": False}),
    "+ptsa": ("topofr", {"sde": False}),
    "topofr": ("topofr", {}),
}


def step_timings(
    device: str = "cpu",
    backbone: str = "ir_small",
    batch_size: int = 128,
    input_size: int = 112,
    classes: int = 1000,
    steps: int = 5,
) -> dict:
    import torch

    from nbfacelib.losses import build_objective
    from nbfacelib.losses.objective import Batch
    from nbfacelib.models import build_backbone
    from nbfacelib.models.output import as_output

    dev = torch.device(device)
    torch.manual_seed(0)
    images = torch.empty(batch_size, 3, input_size, input_size, device=dev).uniform_(-1, 1)
    labels = torch.randint(0, classes, (batch_size,), device=dev)
    setups = {}
    for name, (objective, kw) in VARIANTS.items():
        torch.manual_seed(0)
        model = build_backbone(backbone, input_size=input_size).to(dev).train()
        obj = build_objective(objective, embedding_size=512, num_classes=classes, **kw).to(dev)
        params = list(model.parameters()) + [p for g in obj.param_groups() for p in g["params"]]
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        setups[name] = (model, obj, opt)

    def one_step(model, obj, opt, step):
        batch = Batch(images=images, labels=labels, step=step, model=model)
        with torch.no_grad():
            x = obj.prepare(images, labels, batch)
        out = obj(as_output(model(x)), labels, batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def objective_only(model, obj, step):
        # the objective's own work on a fixed embedding: RSP, loss forward and backward
        batch = Batch(images=images, labels=labels, step=step, model=model)
        with torch.no_grad():
            obj.prepare(images, labels, batch)
        emb = fixed.clone().requires_grad_(True)
        obj(as_output(emb), labels, batch).loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    fixed = torch.randn(batch_size, 512, device=dev)
    times: dict[str, list[float]] = {name: [] for name in setups}
    own: dict[str, list[float]] = {name: [] for name in setups}
    for step in range(steps + 1):
        for name, (model, obj, opt) in setups.items():
            t0 = time.perf_counter()
            one_step(model, obj, opt, step)
            t1 = time.perf_counter()
            objective_only(model, obj, step)
            if step:  # the first round warms up kernels and allocates optimizer state
                times[name].append(t1 - t0)
                own[name].append(time.perf_counter() - t1)
    base = statistics.median(times["arcface"])
    base_own = statistics.median(own["arcface"])
    rows = [
        {
            "variant": n,
            "step_s": statistics.median(t),
            "over_arcface": statistics.median(t) / base,
            "objective_s": statistics.median(own[n]),
            "extra_over_arcface_step": (statistics.median(own[n]) - base_own) / base,
        }
        for n, t in times.items()
    ]
    return {
        "device": str(dev),
        "backbone": backbone,
        "batch_size": batch_size,
        "input_size": input_size,
        "classes": classes,
        "steps": steps,
        "machine": describe_machine(),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 32, 64 px, 3 steps")
    ap.add_argument("--backbone", default="ir_small")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)
    res = step_timings(
        args.device,
        args.backbone,
        args.batch_size or (32 if args.quick else 128),
        args.input_size or (64 if args.quick else 112),
        args.classes,
        args.steps or (3 if args.quick else 5),
    )
    print(res["machine"])
    print(
        f"{res['backbone']}, batch {res['batch_size']}, {res['input_size']} px, {res['classes']} classes, "
        f"{res['device']}, median of {res['steps']} interleaved steps"
    )
    print("| variant | step | x ArcFace | objective alone | 1 + its extra work / ArcFace step |")
    print("|---|---|---|---|---|")
    for r in res["rows"]:
        print(
            f"| {r['variant']} | {r['step_s'] * 1e3:.0f} ms | {r['over_arcface']:.2f}x "
            f"| {r['objective_s'] * 1e3:.1f} ms | {1 + r['extra_over_arcface_step']:.3f}x |"
        )


if __name__ == "__main__":
    main()

"""One-change probes of notebook 00's transfer recipe: its cpu preset with a few training
fields replaced, one seed, scored on ORL and LFW by the embedding and by the trunk.

    python benchmarks/transfer_probes.py NAME --seed 0 [--set '{"backbone": "ir_small"}']
        [--out runs/transfer_probes]

The training is notebook 00's: its parameters cell, then its ``cpu`` entry in
``nbfacelib/presets.yaml`` (what ``nbface run --preset cpu`` injects), built the way the
notebook builds it (``config_from`` + ``transfer_variants``); ``--set`` replaces parameters
(``style`` picks the renderer, any TrainConfig field the training). Runs and the pre-rendered
faces are cached under OUT/grid by config hash, as the notebook caches them, so the unchanged
preset is trained once. Only LFW chooses between probes (the issue forbids choosing on ORL);
ORL is printed beside it. One line per probe is appended to OUT/probes.jsonl with the
machine's description.

Two processes may share OUT, but start the second after the first has pre-rendered a style's
faces: both would write the same folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nbformat
import torch

from nbfacelib.machine import describe_machine

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_synthetic_faces.ipynb"


def main() -> None:
    from nbfacelib.eval import evalsets as ev
    from nbfacelib.experiments import synthetic_faces as sf
    from nbfacelib.experiments.grid import config_from, run_grid
    from nbfacelib.presets import notebook_parameters
    from nbfacelib.report.runner import parameter_defaults

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="the probe's name (its label in OUT/probes.jsonl)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", default="{}", help="JSON object of notebook parameters to replace")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/transfer_probes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    changes = json.loads(args.set)
    if not isinstance(changes, dict):
        raise SystemExit(f"--set {args.set!r}: expected a JSON object")
    params = parameter_defaults(nbformat.read(NOTEBOOK, as_version=4))
    params.update(notebook_parameters(NOTEBOOK.stem, "cpu"))
    params.update(changes)
    base = config_from(params, val=[], log_every=max(1, params["steps"] // 10), progress=False)
    (variant,) = sf.transfer_variants(
        base, [params["style"]], params["train_ids"], params["per_id"], params["difficulty"]
    )
    evalsets = {
        "orl": ev.orl(params["orl_pairs"], params["input_size"]),
        "lfw": ev.protocol("lfw", params["input_size"]),
    }
    out = Path(args.out)
    tic = time.perf_counter()
    result = run_grid([variant], [args.seed], evalsets, out / "grid", outputs=("embedding", "trunk"))
    scores = {
        f"{name}_{output}": float(result.table.values("accuracy", evalset=name, output=output).mean())
        for name in evalsets
        for output in ("embedding", "trunk")
    }
    line = {"name": args.name, "seed": args.seed, "set": changes, **scores}
    line.update(seconds=round(time.perf_counter() - tic), machine=describe_machine())
    print(json.dumps(line), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "probes.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()

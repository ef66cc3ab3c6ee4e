"""Run notebooks with papermill and collect what they record.

``run_notebook`` executes one notebook at a preset and writes, under ``<out>/<preset>/``:
``<name>.ipynb`` (executed), ``<name>.html`` (offline report), ``metrics.json`` (merged, one
entry per notebook) and ``index.html``. ``reproduce`` runs every notebook of a directory in
name order; a failing notebook is reported (cell index, exception) and the others still run.

metrics.json entry::

    {"status": "ok" | "failed" | "out-of-bounds", "seconds": float, "preset": str,
     "parameters": {...}, "metrics": {...}, "claims": [{id, statement, measured, holds}],
     "bounds": {metric: {min, max}}, "reasons": [str] (out-of-bounds only),
     "error": {"cell": int | None, "execution_count": int | None, "ename": str, "evalue": str}
              (failed only; cell = 0-based index in the SOURCE notebook, None = before any cell),
     "notebook": "<name>.ipynb", "report": "<name>.html", "started": ISO-8601 UTC}

The kernel is always the interpreter running ``nbface`` (``sys.executable``), whatever kernel
specs a system Jupyter may have installed: papermill gets a kernel manager whose spec is built
here, not looked up by name. Papermill is used (not bare nbclient) for its parameter
injection, per-cell status metadata and error banner in the executed notebook.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nbfacelib.presets import notebook_parameters, resolve_preset
from nbfacelib.report.bounds import bounds_for, check_bounds, load_bounds
from nbfacelib.report.record import HEADLESS_ENV, RECORD_ENV, load_records

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # repository root in a source checkout

OK, FAILED, OUT_OF_BOUNDS = "ok", "failed", "out-of-bounds"


# --------------------------------------------------------------------------- locating notebooks
def default_notebooks_dir() -> Path:
    """``./notebooks`` if it exists, else the source checkout's ``notebooks/``."""
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else SOURCE_ROOT / "notebooks"


def find_notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The ``*.ipynb`` of a directory in name order (checkpoints excluded)."""
    directory = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"notebooks directory {directory} does not exist")
    return sorted(p for p in directory.glob("*.ipynb") if not p.name.startswith("."))


def resolve_notebook(name: str | Path, notebooks_dir: str | Path | None = None) -> Path:
    """A path to an existing notebook, or a name (with or without .ipynb) in the notebooks dir."""
    path = Path(name)
    if path.is_file():
        return path
    directory = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    for candidate in (directory / path.name, directory / f"{path.name}.ipynb"):
        if candidate.is_file():
            return candidate
    known = ", ".join(p.stem for p in find_notebooks(directory)) if directory.is_dir() else ""
    raise FileNotFoundError(f"notebook {name!r} not found (as a path, or in {directory}: {known or 'none'})")


# --------------------------------------------------------------------------- parameters cell
def parameters_cell(nb: Any) -> tuple[int, set[str]]:
    """(index, assigned names) of the first code cell tagged ``parameters``; ValueError if none
    or if it is not the first code cell."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    tagged = [i for i in code if "parameters" in nb.cells[i].get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError("has no code cell tagged 'parameters'")
    if tagged[0] != code[0]:
        raise ValueError(f"its cell tagged 'parameters' (cell {tagged[0]}) is not the first code cell")
    source = nb.cells[tagged[0]].source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"its parameters cell is not valid Python: {exc}") from exc
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            for sub in ast.walk(t) if t is not None else ():
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return tagged[0], names


def parameter_defaults(nb: Any) -> dict[str, Any]:
    """{name: value} of the assignments in ``nb``'s parameters cell, each value read as a
    Python literal (a parameters cell holds literals only: papermill replaces them as text);
    ValueError naming the parameter otherwise."""
    index, _ = parameters_cell(nb)
    out: dict[str, Any] = {}
    for node in ast.parse(nb.cells[index].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                out[name] = ast.literal_eval(node.value)
            except ValueError as exc:
                raise ValueError(f"parameter {name!r} is not a literal: {ast.unparse(node.value)}") from exc
    return out


def check_parameters(nb: Any, parameters: dict[str, Any]) -> None:
    """ValueError unless the parameters cell sets ``preset`` and every name in ``parameters``
    (papermill would only warn about an unknown one: a typo in presets.yaml would go unseen)."""
    _, names = parameters_cell(nb)
    if "preset" not in names:
        raise ValueError("its parameters cell does not set 'preset'")
    unknown = sorted(set(parameters) - names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} (from presets.yaml or -p); "
            f"its parameters cell sets: {', '.join(sorted(names))}"
        )


class _ParameterParsingNoise(logging.Filter):
    """papermill's line-based parameter parser warns on ``x = {}  # e.g. s=64`` and then calls
    the parameter unknown; ``check_parameters`` (an AST parse) already decided, so drop both."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(("Unable to parse line", "Passed unknown parameter"))


for _name in ("papermill", "papermill.translators"):
    logging.getLogger(_name).addFilter(_ParameterParsingNoise())


# --------------------------------------------------------------------------- kernel
def kernel_manager_class(env: dict[str, str]):
    """An AsyncKernelManager whose kernel is ``sys.executable -m ipykernel_launcher`` with
    ``env`` added to the inherited environment (no kernel-spec lookup by name)."""
    from ipykernel.kernelspec import get_kernel_dict
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec

    # ipykernel's own spec for this interpreter (argv[0] = sys.executable; its metadata lets
    # jupyter_client provision CurveZMQ keys), plus our environment variables.
    spec_dict = get_kernel_dict()
    spec_dict["argv"][0] = sys.executable
    spec = KernelSpec(**{**spec_dict, "env": env})

    class NbfacelibKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            try:  # encrypt the kernel's sockets where pyzmq can (jupyter_client >= 8.8)
                import zmq

                if zmq.has("curve") and "transport_encryption" in self.trait_names():
                    self.transport_encryption = "auto"
            except Exception:
                pass

        @property
        def kernel_spec(self):
            return spec

    return NbfacelibKernelManager


def _failing_cell(executed: Path) -> tuple[int | None, int | None]:
    """(source-notebook index, execution count) of the cell a run stopped in: the one papermill
    marked failed / running / with an error output, else (kernel died mid-cell: papermill marks
    it completed) the first code cell whose execute request got no reply."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:
        return None, None
    index, no_reply = 0, None
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            continue
        pm = cell.get("metadata", {}).get("papermill", {})
        timing = cell.get("metadata", {}).get("execution", {})
        has_error = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        if pm.get("exception") or pm.get("status") in ("failed", "running") or has_error:
            return index, cell.get("execution_count")
        if cell.cell_type == "code" and "shell.execute_reply" not in timing and no_reply is None:
            no_reply = index, cell.get("execution_count")
        index += 1
    return no_reply or (None, None)


def _short(message: str) -> str:
    """The first two non-empty lines of an exception message (nbclient's run to many lines)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:2])[:1000]


def _source_index(nb: Any, executed_index: int) -> int:
    """Index in the source notebook of a cell index of papermill's executed notebook (which has
    the injected parameters cell after the parameters cell)."""
    injected = [i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", [])]
    return executed_index - sum(1 for i in injected if i < executed_index)


# --------------------------------------------------------------------------- metrics.json
def load_metrics(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a half-written file from a killed run: start again
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _update_reports(out_dir: Path, name: str, entry: dict[str, Any], preset: str) -> None:
    from nbfacelib.report.html import write_index, write_root_index

    metrics_path = out_dir / "metrics.json"
    data = load_metrics(metrics_path)
    data[name] = entry
    _write_json(metrics_path, data)
    write_index(data, out_dir / "index.html", preset)
    write_root_index(out_dir.parent)


# --------------------------------------------------------------------------- running
def run_notebook(
    notebook: str | Path,
    preset: str = "smoke",
    overrides: dict[str, Any] | None = None,
    out: str | Path = "reports",
    *,
    presets_file: str | Path | None = None,
    bounds_file: str | Path | None = None,
    cell_timeout: float | None = None,
    log_output: bool = False,
) -> dict[str, Any]:
    """Execute one notebook at ``preset`` and write its reports; returns its metrics.json entry.

    Parameters injected: the notebook's entry of presets.yaml at ``preset``, then
    ``overrides`` (``-p``), then ``preset`` (resolved: ``auto`` -> gpu / cpu). Bounds:
    ``bounds_file`` or ``<notebook dir>/bounds.yaml``. Raises ValueError for configuration
    errors (unknown preset or parameter, no parameters cell); a notebook that raises is
    not an exception here: its entry has status "failed".
    """
    import nbformat
    import papermill

    notebook = Path(notebook)
    name = notebook.stem
    preset = resolve_preset(preset)
    parameters = notebook_parameters(name, preset, presets_file)
    for key, value in (overrides or {}).items():
        if key == "preset":
            raise ValueError("set the preset with --preset, not -p preset")
        parameters[key] = value
    try:
        source_nb = nbformat.read(notebook, as_version=4)
    except Exception as exc:
        raise ValueError(f"{notebook}: not a readable notebook: {exc}") from exc
    try:
        check_parameters(source_nb, parameters)
    except ValueError as exc:
        raise ValueError(f"{notebook}: {exc}") from exc
    bounds_path = Path(bounds_file) if bounds_file is not None else notebook.parent / "bounds.yaml"
    bounds = bounds_for(load_bounds(bounds_path), name, preset)

    out_dir = Path(out) / preset
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{name}.ipynb"
    html_path = out_dir / f"{name}.html"
    for stale in (executed, html_path):
        stale.unlink(missing_ok=True)

    entry: dict[str, Any] = {
        "status": OK,
        "seconds": None,
        "preset": preset,
        "parameters": parameters,
        "metrics": {},
        "claims": [],
        "bounds": bounds,
        "notebook": executed.name,
        "report": html_path.name,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory(prefix="nbface-run-") as tmp:
        record_file = Path(tmp) / "record.json"
        env = {
            RECORD_ENV: str(record_file),
            HEADLESS_ENV: "1",
            # the kernel draws inline even if the caller's environment says MPLBACKEND=Agg
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silence debugpy's frozen-modules warning
        }
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=parameters,
                kernel_name="python3",  # only names the notebook's metadata; the spec is ours
                language="python",
                cwd=str(notebook.parent.resolve()),
                progress_bar=False,
                log_output=log_output,
                execution_timeout=cell_timeout,
                kernel_manager_class=kernel_manager_class(env),
            )
        except papermill.PapermillExecutionError as exc:
            executed_nb = nbformat.read(executed, as_version=4) if executed.exists() else None
            cell = exc.cell_index
            if executed_nb is not None:
                # exc.cell_index counts papermill's injected cell; the index to report is the one in
                # the notebook the author edits. The executed notebook now also has error banners,
                # so recount on a copy without them.
                executed_nb.cells = [
                    c
                    for c in executed_nb.cells
                    if "papermill-error-cell-tag" not in c.metadata.get("tags", [])
                ]
                cell = _source_index(executed_nb, exc.cell_index)
            entry["status"] = FAILED
            entry["error"] = {
                "cell": cell,
                "execution_count": exc.exec_count,
                "ename": exc.ename,
                "evalue": exc.evalue,
            }
        except Exception as exc:  # kernel died, cell timeout, ...: find the cell from papermill's marks
            cell, count = _failing_cell(executed)
            entry["status"] = FAILED
            entry["error"] = {
                "cell": cell,
                "execution_count": count,
                "ename": type(exc).__name__,
                "evalue": _short(str(exc)),
            }
        entry["seconds"] = round(time.perf_counter() - start, 2)
        records = load_records(record_file)
    entry["metrics"], entry["claims"] = records["metrics"], records["claims"]

    if entry["status"] == OK:
        reasons = check_bounds(entry["metrics"], bounds)
        if reasons:
            entry["status"] = OUT_OF_BOUNDS
            entry["reasons"] = reasons

    if executed.exists():
        from nbfacelib.report.html import notebook_to_html

        try:
            notebook_to_html(executed, html_path, title=name)
        except Exception as exc:  # the run's numbers are still worth keeping
            entry["status"] = FAILED
            entry.setdefault(
                "error",
                {
                    "cell": None,
                    "execution_count": None,
                    "ename": type(exc).__name__,
                    "evalue": f"HTML export failed: {exc}",
                },
            )
    if not html_path.exists():
        entry["report"] = None
    if not executed.exists():
        entry["notebook"] = None
    _update_reports(out_dir, name, entry, preset)
    return entry


def describe(name: str, entry: dict[str, Any]) -> str:
    """One line for the terminal."""
    seconds = entry.get("seconds")
    line = f"{name}: {entry['status']}" + (f" in {seconds:.1f} s" if seconds is not None else "")
    if entry.get("error"):
        e = entry["error"]
        where = f"cell {e['cell']}" if e.get("cell") is not None else "before any cell"
        line += f" -- {where}: {e['ename']}: {e['evalue']}"
    for reason in entry.get("reasons", []):
        line += f"\n    {reason}"
    verdicts = ", ".join(
        f"{c['id']} {({True: 'held', False: 'not held', None: 'inconclusive'})[c['holds']]}"
        for c in entry.get("claims", [])
    )
    if verdicts:
        line += f"\n    verdicts: {verdicts}"
    return line


def reproduce(
    preset: str = "auto",
    only: Iterable[str] | None = None,
    out: str | Path = "reports",
    *,
    notebooks_dir: str | Path | None = None,
    presets_file: str | Path | None = None,
    bounds_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    cell_timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run every notebook of ``notebooks_dir`` (or those named in ``only``) in name order.

    Returns (exit code, {name: entry}); exit code 0 only if every notebook is "ok". Without
    ``only`` the preset's metrics.json starts afresh (no stale rows for removed notebooks);
    with ``only`` the other notebooks' entries are kept.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    preset = resolve_preset(preset)
    directory = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    notebooks = find_notebooks(directory)
    if only:
        wanted = [Path(n).stem for n in only]
        by_name = {p.stem: p for p in notebooks}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(
                f"--only: no notebook named {', '.join(missing)} in {directory} "
                f"(have: {', '.join(by_name) or 'none'})"
            )
        notebooks = [by_name[n] for n in sorted(set(wanted))]
    else:
        (Path(out) / preset / "metrics.json").unlink(missing_ok=True)
    if not notebooks:
        from nbfacelib.report.html import write_index, write_root_index

        log(f"no notebooks in {directory}")
        out_dir = Path(out) / preset
        if not only:
            write_index({}, out_dir / "index.html", preset)
            write_root_index(out_dir.parent)
    results: dict[str, dict[str, Any]] = {}
    for i, nb in enumerate(notebooks, 1):
        log(f"[{i}/{len(notebooks)}] {nb.stem} (preset {preset}) ...")
        try:
            entry = run_notebook(
                nb,
                preset,
                overrides,
                out,
                presets_file=presets_file,
                bounds_file=bounds_file,
                cell_timeout=cell_timeout,
            )
        except ValueError as exc:  # misconfigured notebook: report it, run the others
            entry = {
                "status": FAILED,
                "seconds": None,
                "preset": preset,
                "parameters": {},
                "metrics": {},
                "claims": [],
                "bounds": {},
                "notebook": None,
                "report": None,
                "error": {"cell": None, "execution_count": None, "ename": "ConfigError", "evalue": str(exc)},
            }
            _update_reports(Path(out) / preset, nb.stem, entry, preset)
        results[nb.stem] = entry
        log("    " + describe(nb.stem, entry))
    failed = [n for n, e in results.items() if e["status"] != OK]
    log(
        f"{len(results) - len(failed)} of {len(results)} notebooks ok; reports in {Path(out) / preset}"
        + (f"; not ok: {', '.join(failed)}" if failed else "")
    )
    return (1 if failed else 0), results

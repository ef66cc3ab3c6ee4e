"""Run notebooks with papermill and collect what they record.

``run_notebook`` executes one notebook at a preset and writes, under ``<out>/<preset>/``:
``<name>.ipynb`` (executed), ``<name>.html`` (offline report), ``metrics.json`` (merged, one
entry per notebook) and ``index.html``. ``reproduce`` runs the notebooks of a directory (a
selection by name or number, ``jobs`` at a time, skipping up-to-date ones on ``resume``); a
failing notebook is reported (cell index, exception) and the others still run.

metrics.json entry::

    {"status": "ok" | "failed" | "out-of-bounds", "seconds": float, "preset": str,
     "parameters": {...}, "metrics": {...}, "claims": [{id, statement, measured, holds}],
     "bounds": {metric: {min, max}}, "reasons": [str] (out-of-bounds only),
     "error": {"cell": int | None, "execution_count": int | None, "ename": str, "evalue": str}
              (failed only; cell = 0-based index in the SOURCE notebook, None = before any cell),
     "notebook": "<name>.ipynb", "report": "<name>.html", "started": ISO-8601 UTC,
     "code_version": str, "notebook_sha256": str (what ``reproduce --resume`` compares),
     "provenance": {package, git_commit, code_version, preset, parameters, overrides, cpu, gpu,
                    python, started, wall_seconds, seeds} (also printed atop the report)}

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
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nbfacelib.machine import keep_freed_memory_env, malloc_set_by_environment
from nbfacelib.presets import notebook_parameters, resolve_preset
from nbfacelib.report.bounds import bounds_for, check_bounds, load_bounds
from nbfacelib.report.progress import NotebookProgress
from nbfacelib.report.record import HEADLESS_ENV, RECORD_ENV, claim_label, load_records

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


def _defaults_or_empty(nb: Any) -> dict[str, Any]:
    """The parameters cell's literal values for the provenance; {} if one is not a literal
    (the run already happened: a provenance detail must not fail it)."""
    try:
        return parameter_defaults(nb)
    except ValueError:
        return {}


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


_PROGRESS_ENGINE = "nbface-progress"


def _register_progress_engine() -> None:
    """A papermill engine (papermill's nbclient engine plus hooks) that reports each code cell
    as it starts and each change of a tqdm widget bar to a :class:`NotebookProgress`; kernel
    streams reach it through papermill's own ``stdout_file`` / ``stderr_file``."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    from nbfacelib.report.progress import tqdm_widget_text

    if _PROGRESS_ENGINE in papermill_engines._engines:
        return

    class ProgressClient(PapermillNotebookClient):
        def __init__(self, nb_man, progress=None, **kw):
            super().__init__(nb_man, **kw)
            self.nbface_progress = progress

        def handle_comm_msg(self, outs, msg, cell_index):
            super().handle_comm_msg(outs, msg, cell_index)
            comm_id = msg.get("content", {}).get("comm_id")
            if self.nbface_progress is not None and comm_id:
                found = tqdm_widget_text(self.widget_state, comm_id)
                if found is not None:
                    self.nbface_progress.widget(*found)

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress=None, **kwargs):
            if progress is not None:
                code = [
                    i
                    for i, c in enumerate(nb_man.nb.cells)
                    if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
                ]
                progress.start(len(code))
                cell_start = nb_man.cell_start

                def on_cell_start(cell, cell_index=None, **kw):
                    if cell_index in code:
                        progress.cell_start(code.index(cell_index) + 1, cell.source)
                    return cell_start(cell, cell_index, **kw)

                nb_man.cell_start = on_cell_start
            # NBClientEngine.execute_managed_notebook with our client (same argument handling)
            from papermill.engines import merge_kwargs, remove_args

            kwargs = remove_args(["input_path"], **kwargs)
            safe = remove_args(["timeout", "startup_timeout"], **kwargs)
            final = merge_kwargs(
                safe,
                timeout=kwargs.get("execution_timeout") or kwargs.get("timeout"),
                startup_timeout=kwargs.get("start_timeout", 60),
                kernel_name=kernel_name,
                log=logging.getLogger("papermill"),
            )
            for key in ("execution_timeout", "start_timeout"):
                final.pop(key, None)
            return ProgressClient(nb_man, progress=progress, **final).execute()

    papermill_engines.register(_PROGRESS_ENGINE, ProgressEngine)


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
def _parameters_with(
    name: str, preset: str, presets_file, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """The notebook's preset parameters, then ``overrides`` (``-p``); ``preset`` itself is
    injected by the run."""
    parameters = notebook_parameters(name, preset, presets_file)
    for key, value in (overrides or {}).items():
        if key == "preset":
            raise ValueError("set the preset with --preset, not -p preset")
        parameters[key] = value
    return parameters


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
    progress: NotebookProgress | None = None,
    kernel_env: dict[str, str] | None = None,
    write_index_files: bool = True,
) -> dict[str, Any]:
    """Execute one notebook at ``preset`` and write its reports; returns its metrics.json entry.

    Parameters injected: the notebook's entry of presets.yaml at ``preset``, then
    ``overrides`` (``-p``), then ``preset`` (resolved: ``auto`` -> gpu / cpu). Bounds:
    ``bounds_file`` or ``<notebook dir>/bounds.yaml``. Raises ValueError for configuration
    errors (unknown preset or parameter, no parameters cell); a notebook that raises is
    not an exception here: its entry has status "failed". ``progress`` (a
    :class:`~nbfacelib.report.progress.NotebookProgress`) is told of each cell as it starts and
    of the notebook's own progress bars. ``kernel_env`` is added to the kernel's environment
    (``reproduce --jobs``: GPU pinning, thread counts). ``write_index_files=False`` leaves
    metrics.json and index.html to the caller (``reproduce`` writes them once, at the end).
    """
    import nbformat
    import papermill

    notebook = Path(notebook)
    name = notebook.stem
    preset = resolve_preset(preset)
    parameters = _parameters_with(name, preset, presets_file, overrides)
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
            # freed tensors reused, not refaulted (nbfacelib.machine.keep_freed_memory), unless
            # the caller's environment already says how glibc's malloc should behave
            **({} if malloc_set_by_environment() else keep_freed_memory_env()),
            **(kernel_env or {}),
        }
        hooks: dict[str, Any] = {}
        if progress is not None:
            from nbfacelib.report.progress import StreamTo

            _register_progress_engine()
            hooks = {
                "engine_name": _PROGRESS_ENGINE,
                "progress": progress,
                "stdout_file": StreamTo(progress, "stdout"),
                "stderr_file": StreamTo(progress, "stderr"),
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
                **hooks,
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
    from nbfacelib.report.provenance import code_version, file_sha256, provenance

    entry["code_version"] = code_version()
    entry["notebook_sha256"] = file_sha256(notebook)
    entry["provenance"] = provenance(
        preset=preset,
        # what the notebook ran with: its parameters cell, then the preset's values and -p
        parameters={**_defaults_or_empty(source_nb), **parameters, "preset": preset},
        overrides=overrides,
        seconds=entry["seconds"],
        started=entry["started"],
        kernel_env=kernel_env,
    )

    if entry["status"] == OK:
        reasons = check_bounds(entry["metrics"], bounds)
        if reasons:
            entry["status"] = OUT_OF_BOUNDS
            entry["reasons"] = reasons

    if executed.exists():
        from nbfacelib.report.html import notebook_to_html

        try:
            notebook_to_html(executed, html_path, title=name, provenance=entry["provenance"])
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
    if write_index_files:
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
        f"{claim_label(c)} {({True: 'held', False: 'not held', None: 'inconclusive'})[c['holds']]}"
        for c in entry.get("claims", [])
    )
    if verdicts:
        line += f"\n    verdicts: {verdicts}"
    return line


def select_notebooks(
    notebooks: list[Path], only: Iterable[str] | None = None, skip: Iterable[str] | None = None
) -> list[Path]:
    """The notebooks named by ``only`` (all if None) minus those named by ``skip``, in name order.

    A notebook is named by its name (``03_partial_fc_scale``, ``.ipynb`` optional) or by its
    number (``03`` or ``3``: the digits its name starts with). ValueError for a name or number
    that matches no notebook, listing the ones there are."""

    def number(p: Path) -> int | None:
        m = re.match(r"(\d+)", p.stem)
        return int(m.group(1)) if m else None

    def matches(token: str) -> list[Path]:
        token = Path(token.strip()).stem if token.strip().endswith(".ipynb") else token.strip()
        if token.isdigit():
            return [p for p in notebooks if number(p) == int(token)]
        return [p for p in notebooks if p.stem == token]

    def resolve(tokens: Iterable[str], flag: str) -> set[Path]:
        chosen: set[Path] = set()
        for token in tokens:
            found = matches(token)
            if not found:
                have = ", ".join(p.stem for p in notebooks) or "none"
                raise ValueError(f"{flag}: no notebook named or numbered {token!r} (have: {have})")
            chosen.update(found)
        return chosen

    chosen = resolve(only, "--only") if only else set(notebooks)
    if skip:
        chosen -= resolve(skip, "--skip")
    return [p for p in notebooks if p in chosen]


def _job_env(slot: int, jobs: int, gpus: list[str] | None) -> dict[str, str]:
    """Environment of the kernel of job slot ``slot``: its GPU (``CUDA_VISIBLE_DEVICES``) when
    GPUs are given, and an equal share of the CPU threads when several jobs run at once."""
    env: dict[str, str] = {}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    if jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            env[var] = threads
    return env


def up_to_date(
    entry: dict[str, Any] | None, notebook: Path, parameters: dict[str, Any], out_dir: Path
) -> bool:
    """Whether a metrics.json entry is a finished run of this notebook file with these
    parameters on this code version, whose report is still there (``--resume``)."""
    from nbfacelib.report.provenance import code_version, file_sha256

    if not entry or entry.get("status") != OK or not entry.get("report"):
        return False
    return (
        (out_dir / entry["report"]).is_file()
        and entry.get("parameters") == json.loads(json.dumps(parameters))
        and entry.get("code_version") == code_version()
        and entry.get("notebook_sha256") == file_sha256(notebook)
    )


def _failed_entry(preset: str, ename: str, evalue: str) -> dict[str, Any]:
    return {
        "status": FAILED,
        "seconds": None,
        "preset": preset,
        "parameters": {},
        "metrics": {},
        "claims": [],
        "bounds": {},
        "notebook": None,
        "report": None,
        "error": {"cell": None, "execution_count": None, "ename": ename, "evalue": evalue},
    }


def reproduce(
    preset: str = "auto",
    only: Iterable[str] | None = None,
    out: str | Path = "reports",
    *,
    skip: Iterable[str] | None = None,
    jobs: int = 1,
    gpus: Iterable[str] | None = None,
    resume: bool = False,
    notebooks_dir: str | Path | None = None,
    presets_file: str | Path | None = None,
    bounds_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    cell_timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    progress_stream=None,
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run the notebooks of ``notebooks_dir`` (selected by ``only`` / ``skip``, see
    :func:`select_notebooks`), ``jobs`` at a time, and write ``metrics.json`` and the index.

    Returns (exit code, {name: entry}); exit code 0 only if every notebook is "ok".

    * ``jobs`` > 1 runs notebooks in parallel, each in its own kernel, with its outputs in its
      own files; ``gpus`` (e.g. ``["0", "1"]``) pins job slot k to GPU ``gpus[k % len]`` via
      ``CUDA_VISIBLE_DEVICES``; on a CPU the threads are divided between the jobs. A job
      that fails (whatever the reason) is reported as a failed notebook.
    * ``metrics.json`` and ``index.html`` are written once, at the end, from every job's
      entry. Without a selection (and without ``resume``) metrics.json starts afresh; with
      one, the other notebooks' entries are kept.
    * ``resume`` skips a notebook whose entry is "ok" with the same parameters, notebook file
      and code version (:func:`nbfacelib.report.provenance.code_version`) and whose report exists.
    * ``progress`` shows each notebook's cell, elapsed time and own progress bars on
      ``progress_stream`` (stderr; see :mod:`nbfacelib.report.progress`).
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from nbfacelib.report.html import write_index, write_root_index

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    preset = resolve_preset(preset)
    jobs = max(1, int(jobs))
    gpus = [str(g).strip() for g in gpus if str(g).strip()] if gpus else None
    directory = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    notebooks = select_notebooks(find_notebooks(directory), only, skip)
    out_dir = Path(out) / preset
    previous = load_metrics(out_dir / "metrics.json")
    keep = dict(previous) if (only or skip or resume) else {}
    if not notebooks:
        log(f"no notebooks to run in {directory}")

    todo: list[Path] = []
    for nb in notebooks:
        if resume:
            try:
                params = _parameters_with(nb.stem, preset, presets_file, overrides)
            except ValueError:
                params = None
            if params is not None and up_to_date(previous.get(nb.stem), nb, params, out_dir):
                log(f"{nb.stem}: up to date (same parameters, notebook and code version); skipped")
                continue
        todo.append(nb)

    slots: queue.Queue[int] = queue.Queue()
    for k in range(jobs):
        slots.put(k)
    stream = progress_stream if progress_stream is not None else sys.stderr

    def run_one(i: int, nb: Path) -> dict[str, Any]:
        slot = slots.get()
        try:
            env = _job_env(slot, jobs, gpus)
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
            log(f"[{i}/{len(todo)}] {nb.stem} (preset {preset}{where}) ...")
            bar = None
            if progress:
                # with several jobs, lines (not a redrawn status line) prefixed by the notebook
                bar = NotebookProgress(
                    nb.stem,
                    stream,
                    tty=None if jobs == 1 else False,
                    indent="    " if jobs == 1 else f"    [{nb.stem}] ",
                )
            try:
                entry = run_notebook(
                    nb,
                    preset,
                    overrides,
                    out,
                    presets_file=presets_file,
                    bounds_file=bounds_file,
                    cell_timeout=cell_timeout,
                    progress=bar,
                    kernel_env=env,
                    write_index_files=False,
                )
            except ValueError as exc:  # misconfigured notebook: report it, run the others
                entry = _failed_entry(preset, "ConfigError", str(exc))
            except Exception as exc:  # a job that fails for any other reason is a failed notebook
                entry = _failed_entry(preset, type(exc).__name__, _short(str(exc)))
            finally:
                if bar is not None:
                    bar.close()
            log(("    " if jobs == 1 else "    done: ") + describe(nb.stem, entry))
            return entry
        finally:
            slots.put(slot)

    results: dict[str, dict[str, Any]] = {}
    if jobs == 1:
        for i, nb in enumerate(todo, 1):
            results[nb.stem] = run_one(i, nb)
    else:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nbface-job") as pool:
            futures = {nb.stem: pool.submit(run_one, i, nb) for i, nb in enumerate(todo, 1)}
            for name, fut in futures.items():
                results[name] = fut.result()

    data = {**keep, **{k: v for k, v in results.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "metrics.json", data)
    write_index(data, out_dir / "index.html", preset)
    write_root_index(out_dir.parent)

    ran = {name: data[name] for name in (nb.stem for nb in notebooks) if name in data}
    failed = [n for n, e in ran.items() if e["status"] != OK]
    log(
        f"{len(ran) - len(failed)} of {len(ran)} notebooks ok"
        + (f" ({len(ran) - len(results)} up to date, not rerun)" if len(ran) > len(results) else "")
        + f"; reports in {out_dir}"
        + (f"; not ok: {', '.join(failed)}" if failed else "")
    )
    return (1 if failed else 0), ran

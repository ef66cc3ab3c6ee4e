"""What a notebook reports: ``record(name, value)`` for metrics, ``claim(...)`` for verdicts.

Both keep their data in memory (so a notebook run by hand in JupyterLab works with nothing
else set up) and, when the runner set ``NBFACELIB_RECORD`` to a file path, also rewrite that
JSON file after every call: a notebook that fails half-way still leaves what it recorded.

File format (``RECORD_ENV`` file)::

    {"metrics": {name: value, ...},
     "claims": [{"id": "C13", "statement": str, "measured": {name: number}, "holds": true|false|null}]}

Verdicts are computed by the notebook from ``measured``; ``holds=None`` means inconclusive at
this scale (too few seeds, overlapping spread, ...), never "not computed".
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from nbfacelib.report.stats import Verdict

RECORD_ENV = "NBFACELIB_RECORD"  # path of the JSON file the runner reads back
HEADLESS_ENV = "NBFACELIB_HEADLESS"  # "1" when executed by the runner (no widgets front-end)

# The claim column of CLAIMS.md (the claims of the five documents), by id. A notebook may only
# give verdicts on these ids, so a typo cannot invent a claim.
CLAIMS: dict[str, str] = {
    "C1": "DPAP (amplitude perturbation of dominant patches) improves a face ViT",
    "C2": "EHSM (entropy-guided sample weights) improves a face ViT",
    "C3": "DPAP + EHSM together beat either alone",
    "C4": "a face ViT leans on few dominant patches; with DPAP it holds up better when those "
    "regions are occluded",
    "C5": "Swin + triplet loss learns a Euclidean embedding usable for verification; margin too "
    "small converges easily but separates poorly, too large converges slowly or not at all",
    "C6": "Partial FC with 10% of negative classes keeps accuracy while cutting memory and time",
    "C7": "F2C: a dynamic class pool whose centres come from an EMA gallery network trains without "
    "a full classifier, at lower memory",
    "C8": "MagFace's feature norm tracks image quality; rejecting low-norm faces lowers error",
    "C9": "CurricularFace's t rises over training; hard negatives weigh more later",
    "C10": "distilling a large teacher into a VarGFaceNet student improves the student",
    "C11": "PFE's predicted variance grows as quality drops; MLS beats cosine on low-quality pairs",
    "C12": "occlusion-aware (adversarial mask) training helps on occluded faces",
    "C13": "for unit vectors, squared Euclidean distance = 2 - 2 cos",
    "C14": "additive angular margin (ArcFace) >= CosFace > plain softmax for verification",
    "C15": "MobileFaceNet reaches accuracy close to a much larger IResNet",
    "C16": "input-space topology grows more complex with sample count",
    "C17": "input/latent topological discrepancy grows with batch size",
    "C18": "deeper networks have smaller input/latent discrepancy",
    "C19": "aligning by persistent homology directly collapses the latent structure; PTSA converges "
    "smoothly and generalises better",
    "C20": "misclassified samples get a high hard-sample posterior under the Gaussian-uniform mixture",
    "C21": "TopoFR (PTSA + SDE) beats its ArcFace baseline",
}
# Claims the project makes about itself (not any document's): D<k>. Each names the notebook
# that judges it, so a reader can find the test; claim() accepts these ids too.
PROJECT_CLAIMS: dict[str, str] = {
    "D1": "synthetic-only training beats eigenfaces on real faces (a model trained only on the "
    "synthetic renderer's faces verifies ORL pairs better than eigenfaces fitted on ORL itself; "
    "notebook 00_synthetic_faces)",
}


def claim_text(id: str) -> str:
    """What claim ``id`` says: a document's claim (C1 .. C21) or a project claim (D1 ..)."""
    return CLAIMS.get(id) or PROJECT_CLAIMS.get(id, "")


_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/@]*$")

_STORE: dict[str, Any] = {"metrics": {}, "claims": []}


# --------------------------------------------------------------------------- conversion
def _scalar_bool(value: Any) -> bool | None:
    """``value`` as a Python bool if it is a bool or a numpy / torch 0-d boolean, else None."""
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        item = value.item()
        if isinstance(item, bool):
            return item
    return None


def _number(value: Any, where: str) -> float | int | None:
    """A JSON number from a Python/numpy/torch scalar; NaN and +-inf become None (JSON has none)."""
    if _scalar_bool(value) is not None:
        raise TypeError(f"{where}: expected a number, got a boolean {value!r}")
    if not isinstance(value, numbers.Number) and hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch 0-d scalar
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"{where}: expected a number, got {type(value).__name__} {value!r}")


def to_json(value: Any, where: str = "value") -> Any:
    """Convert ``value`` to plain JSON types (numpy/torch scalars and arrays included).

    Non-finite floats become None. Anything that is not a number, string, bool, None, or a
    list/tuple/dict/array of those is refused with a TypeError naming ``where``.
    """
    if value is None or isinstance(value, str):
        return value
    if _scalar_bool(value) is not None:  # bool, numpy.bool_, 0-d bool tensor
        return _scalar_bool(value)
    if isinstance(value, dict):
        return {str(k): to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy / torch arrays
        return to_json(value.tolist(), where)
    return _number(value, where)


# --------------------------------------------------------------------------- storage
def _record_path() -> Path | None:
    path = os.environ.get(RECORD_ENV)
    return Path(path) if path else None


def _flush() -> None:
    path = _record_path()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a kernel killed mid-write never leaves half a JSON file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(_STORE, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def reset() -> None:
    """Forget everything recorded so far (in memory and in the record file)."""
    _STORE["metrics"] = {}
    _STORE["claims"] = []
    _flush()


def metrics() -> dict[str, Any]:
    """A copy of the metrics recorded so far."""
    return json.loads(json.dumps(_STORE["metrics"]))


def claims() -> list[dict[str, Any]]:
    """A copy of the verdicts recorded so far, in order."""
    return json.loads(json.dumps(_STORE["claims"]))


def load_records(path: str | os.PathLike) -> dict[str, Any]:
    """Read a record file written by a notebook; ``{"metrics": {}, "claims": []}`` if absent."""
    path = Path(path)
    if not path.exists():
        return {"metrics": {}, "claims": []}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid record file: {exc}") from exc
    return {"metrics": dict(data.get("metrics", {})), "claims": list(data.get("claims", []))}


# --------------------------------------------------------------------------- public API
def record(name: str, value: Any) -> None:
    """Store metric ``name`` = ``value`` (a number, string, bool, or list/dict of them).

    numpy / torch scalars and arrays are converted to plain JSON; NaN / inf become null (a
    bounded metric that is null fails its bounds). Recording a name again replaces the value,
    so re-running a cell in JupyterLab does not duplicate it. Returns None, so a cell that
    ends with ``record(...)`` shows no ``Out[]`` line in the report.
    """
    if not isinstance(name, str) or not _METRIC_NAME.match(name):
        raise ValueError(
            f"record: metric name {name!r} must be a string of letters, digits and _ . - / @ "
            "starting with a letter or _"
        )
    _STORE["metrics"][name] = to_json(value, f"record({name!r})")
    _flush()


_UNSET: Any = object()


def claim(
    id: str,
    statement: str | Verdict,
    measured: dict[str, Any] | None = None,
    holds: bool | None = _UNSET,
    context: str = "",
    domain: str = "",
) -> None:
    """Store the verdict on claim ``id`` and show it as a table.

    id: "C1" .. "C21" (the documents' claims, CLAIMS.md) or a project claim of
        :data:`PROJECT_CLAIMS` ("D1"); anything else is refused.
    statement: what this notebook tested, in one sentence (e.g. "ArcFace >= CosFace > softmax
        in 10-fold accuracy over 3 seeds, mean - std vs mean + std"), or a
        :class:`~nbfacelib.report.stats.Verdict`, whose rule text, numbers and outcome are
        taken as they are (then ``measured`` and ``holds`` must not be given).
    measured: the numbers the verdict rests on, {name: number or list of numbers}.
    holds: True (held), False (not held), None (inconclusive at this scale); computed from
        ``measured`` by the notebook, never typed in. numpy.bool_ is accepted, nothing else.
    context: prefixed to the statement ("accuracy on held-out synthetic pairs, ir_tiny: ").
    domain: the data the verdict was reached on, when a notebook tests the same claim on more
        than one (``"real: CFP-trained, LFW-scored"``); shown after the id (:func:`claim_label`).
    Giving a verdict on the same id and domain again replaces the earlier one.
    """
    if isinstance(statement, Verdict):
        if measured is not None or holds is not _UNSET:
            raise TypeError(f"claim {id}: a Verdict carries its numbers and outcome; give neither")
        statement, measured, holds = statement.rule, statement.measured, statement.holds
    elif holds is _UNSET:
        raise TypeError(f"claim {id}: give holds (True, False or None for inconclusive)")
    statement = f"{context}{statement}" if isinstance(statement, str) else statement
    if not isinstance(id, str) or (id not in CLAIMS and id not in PROJECT_CLAIMS):
        raise ValueError(
            f"claim: unknown claim id {id!r}; CLAIMS.md defines C1 .. C{len(CLAIMS)}, and the "
            f"project claims are {', '.join(PROJECT_CLAIMS)}"
        )
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError(f"claim {id}: statement must be a non-empty string, got {statement!r}")
    if not isinstance(measured, dict) or not measured:
        raise TypeError(f"claim {id}: measured must be a non-empty dict of numbers, got {measured!r}")
    clean: dict[str, Any] = {}
    for key, val in measured.items():
        where = f"claim {id}: measured[{key!r}]"
        if not isinstance(key, str):
            raise TypeError(f"{where}: keys must be strings")
        if val is None:
            clean[key] = None
        elif isinstance(val, list | tuple) or (hasattr(val, "tolist") and getattr(val, "ndim", 0) > 0):
            seq = val.tolist() if hasattr(val, "tolist") else val
            clean[key] = [_number(v, f"{where}[{i}]") for i, v in enumerate(seq)]
        else:
            clean[key] = _number(val, where)
    if holds is not None and _scalar_bool(holds) is None:
        raise TypeError(
            f"claim {id}: holds must be True, False or None (inconclusive), got "
            f"{type(holds).__name__} {holds!r}"
        )
    holds = None if holds is None else _scalar_bool(holds)
    entry = {"id": id, "statement": statement.strip(), "measured": clean, "holds": holds}
    if domain:
        entry["domain"] = str(domain)
    same = (id, entry.get("domain", ""))
    _STORE["claims"] = [c for c in _STORE["claims"] if (c["id"], c.get("domain", "")) != same] + [entry]
    _flush()
    _show(verdict_table([entry]), _text_row(entry))


def claim_label(entry: dict[str, Any]) -> str:
    """``"C14"``, or ``"C14 (real: CFP-trained, LFW-scored)"`` for a verdict with a domain."""
    return entry.get("id", "?") + (f" ({entry['domain']})" if entry.get("domain") else "")


def verdict_label(holds: bool | None) -> str:
    return {True: "held", False: "not held", None: "inconclusive"}[holds]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "null" if value is None else str(value)


_VERDICT_STYLE = {
    True: "background:#d4edda;color:#155724",
    False: "background:#f8d7da;color:#721c24",
    None: "background:#e2e3e5;color:#383d41",
}


def verdict_table(entries: list[dict[str, Any]] | None = None) -> str:
    """HTML table of verdicts (all recorded so far by default); inline styles, no scripts."""
    entries = claims() if entries is None else entries
    rows = []
    for c in entries:
        measured = "<br>".join(f"{html.escape(k)} = {html.escape(_fmt(v))}" for k, v in c["measured"].items())
        left = "text-align:left;vertical-align:top;padding:4px 8px"
        rows.append(
            "<tr>"
            f"<td style='{left}'><b>{html.escape(claim_label(c))}</b></td>"
            f"<td style='{left}'>{html.escape(claim_text(c['id']))}</td>"
            f"<td style='{left}'>{html.escape(c['statement'])}</td>"
            f"<td style='{left};font-family:monospace;font-size:90%'>{measured}</td>"
            f"<td style='{_VERDICT_STYLE[c['holds']]};font-weight:bold;text-align:center;padding:4px 8px'>"
            f"{verdict_label(c['holds'])}</td>"
            "</tr>"
        )
    head = "".join(
        f"<th style='text-align:left'>{h}</th>"
        for h in ("claim", "document says", "tested here", "measured", "verdict")
    )
    return (
        "<table class='nbfacelib-verdicts' style='border-collapse:collapse'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _text_row(c: dict[str, Any]) -> str:
    measured = ", ".join(f"{k}={_fmt(v)}" for k, v in c["measured"].items())
    return f"{c['id']}: {verdict_label(c['holds'])} -- {c['statement']} ({measured})"


def _show(html_text: str, plain: str) -> None:
    """Display as HTML in IPython, print the plain line elsewhere (scripts, tests)."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and ipython.get_ipython() is not None:
        from IPython.display import HTML, display

        display(HTML(html_text))
    else:
        print(plain)


def summary() -> None:
    """Show every metric and verdict recorded so far (the last cell of a notebook)."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='font-family:monospace'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in _STORE["metrics"].items()
    )
    metrics_html = (
        "<table class='nbfacelib-metrics'><thead><tr><th style='text-align:left'>metric</th>"
        f"<th style='text-align:left'>value</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    plain = "\n".join(f"{k} = {_fmt(v)}" for k, v in _STORE["metrics"].items())
    plain += "\n" + "\n".join(_text_row(c) for c in _STORE["claims"])
    _show(f"<h4>Metrics</h4>{metrics_html}<h4>Verdicts</h4>{verdict_table()}", plain)

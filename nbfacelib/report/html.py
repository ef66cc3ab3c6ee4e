"""HTML reports that work offline: executed notebooks via nbconvert, and ``index.html``.

nbconvert's ``lab`` template loads require.js, MathJax, mermaid and (for notebooks with
widget state) the widget manager from CDNs. The template below extends ``lab`` and empties
those blocks; plotly.js is embedded once by ``nbfacelib.viz.setup_notebook`` in the
notebook's outputs, so a report opens with no network. MathJax being gone, ``$...$`` and
``$$...$$`` in markdown cells are drawn by matplotlib's mathtext into inline SVG images
(alt text = the TeX); what mathtext cannot parse (e.g. ``\\begin{aligned}``) stays as TeX
source. JupyterLab renders the same markdown with its own MathJax.
"""

from __future__ import annotations

import base64
import copy
import functools
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from nbfacelib.report.record import claim_label, verdict_label

_OFFLINE_TEMPLATE = """\
{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_EXTERNAL_SRC = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]+)""", re.I)
_EXTERNAL_IMPORT = re.compile(r"""\bimport\s*\(?\s*["']((?:https?:)?//[^"']+)["']""")


def external_script_sources(page: str) -> list[str]:
    """URLs of scripts a page would fetch from the network (``<script src=http...>``,
    ``import "http..."``); empty for an offline page."""
    return _EXTERNAL_SRC.findall(page) + _EXTERNAL_IMPORT.findall(page)


def _strip_widgets(nb: Any) -> Any:
    """Drop widget views (they need a live kernel or a CDN widget manager); their text/plain
    fallback stays. ``nbfacelib.viz.interactive`` renders statically in headless runs anyway."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and _WIDGET_VIEW in data:
                del data[_WIDGET_VIEW]
                data.setdefault("text/plain", "")
    return nb


_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]+`)", re.S)
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])")


@functools.lru_cache(maxsize=1024)
def _math_svg(tex: str, size: float) -> str | None:
    """A data: URI of ``tex`` drawn by matplotlib mathtext, or None if mathtext cannot parse it."""
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    buf = io.BytesIO()
    try:
        mathtext.math_to_image(f"${tex}$", buf, prop=FontProperties(size=size), dpi=72, format="svg")
    except Exception:
        return None
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _math_img(tex: str, display: bool) -> str | None:
    tex = " ".join(tex.split())
    uri = _math_svg(tex, 17.0 if display else 14.0)
    if uri is None:
        return None
    alt = html.escape(tex, quote=True)
    if display:
        return (
            f"\n\n<p style='text-align:center'><img class='nbfacelib-math' src='{uri}' alt='{alt}'></p>\n\n"
        )
    return f"<img class='nbfacelib-math' style='vertical-align:middle' src='{uri}' alt='{alt}'>"


def render_math(markdown: str) -> str:
    """Replace ``$$...$$`` / ``$...$`` outside code with mathtext SVG images (see module doc)."""
    parts = _CODE.split(markdown)
    for i in range(0, len(parts), 2):  # even parts are outside code spans / blocks
        text = _DISPLAY_MATH.sub(lambda m: _math_img(m.group(1), True) or m.group(0), parts[i])
        parts[i] = _INLINE_MATH.sub(lambda m: _math_img(m.group(1), False) or m.group(0), text)
    return "".join(parts)


def provenance_html(prov: dict[str, Any]) -> str:
    """The block printed atop a report: where it comes from (see report/provenance.py)."""

    def esc(value: Any) -> str:
        return html.escape(value if isinstance(value, str) else json.dumps(value))

    wall = prov.get("wall_seconds")
    facts = [
        ("preset", prov.get("preset")),
        ("package", prov.get("package")),
        ("git commit", prov.get("git_commit")),
        ("code version", prov.get("code_version")),
        ("CPU", prov.get("cpu")),
        ("GPU", prov.get("gpu")),
        ("python", prov.get("python")),
        ("started", prov.get("started")),
        ("wall time", None if wall is None else f"{wall:.1f} s"),
        ("seeds", prov.get("seeds")),
    ]
    items = "".join(f"<span><b>{html.escape(k)}</b> {esc(v)}</span>" for k, v in facts if v not in (None, ""))
    params = prov.get("parameters") or {}
    overrides = prov.get("overrides") or {}
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{esc(v)}</td><td>{'-p' if k in overrides else ''}</td></tr>"
        for k, v in params.items()
    )
    summary = (
        f"parameters ({len(params)}" + (f"; overridden: {', '.join(overrides)}" if overrides else "") + ")"
    )
    return (
        "<div class='nbfacelib-provenance' style='font:13px/1.5 system-ui,sans-serif;background:#f6f8fa;"
        "border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;margin:8px 0 16px'>"
        "<style>.nbfacelib-provenance span{display:inline-block;margin-right:1.2em;white-space:nowrap}"
        ".nbfacelib-provenance td{padding:1px 10px 1px 0;font-family:monospace}</style>"
        f"{items}<details><summary>{html.escape(summary)}</summary><table>{rows}</table></details></div>"
    )


def _insert_at_top(page: str, block: str) -> str:
    """``block`` as the first thing inside the page's ``<main>`` (nbconvert's lab template),
    else right after ``<body ...>``."""
    m = re.search(r"<main[^>]*>", page) or re.search(r"<body[^>]*>", page)
    return page[: m.end()] + block + page[m.end() :] if m else block + page


def notebook_to_html(
    notebook: str | Path,
    html_path: str | Path,
    title: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Render an executed notebook to a self-contained offline HTML page; ``provenance`` (a
    metrics.json entry's) is printed at the top."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook, html_path = Path(notebook), Path(html_path)
    nb = _strip_widgets(nbformat.read(notebook, as_version=4))
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "$" in cell.source:
            cell.source = render_math(cell.source)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"nbfacelib_offline.html.j2": _OFFLINE_TEMPLATE})],
        embed_images=True,
        theme="light",
    )
    exporter.template_file = "nbfacelib_offline.html.j2"
    resources = {"metadata": {"name": title or notebook.stem, "path": str(notebook.parent)}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    if provenance:
        body = _insert_at_top(body, provenance_html(provenance))
    from nbfacelib.report.fonts import embed_cjk_font

    body = embed_cjk_font(body)  # the documents' Chinese titles render without a CJK font
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


# --------------------------------------------------------------------------- index.html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.ok{color:#155724;background:#d4edda}.failed{color:#721c24;background:#f8d7da}
.out-of-bounds{color:#856404;background:#fff3cd}
.status{font-weight:bold;white-space:nowrap}
.badge{display:inline-block;margin:1px;padding:1px 6px;border-radius:4px;font-size:85%}
.held{background:#d4edda;color:#155724}.not-held{background:#f8d7da;color:#721c24}
.inconclusive{background:#e2e3e5;color:#383d41}
.metrics{font-family:monospace;font-size:90%}
.err{font-family:monospace;font-size:90%;color:#721c24;white-space:pre-wrap}
"""

KEY_METRICS = 8  # metrics shown per row besides the bounded ones; the rest fold away


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        text = "[" + ", ".join(_fmt(v) for v in value) + "]"
        return text if len(text) <= 60 else text[:57] + "..."
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _metrics_cell(entry: dict[str, Any]) -> str:
    metrics = entry.get("metrics") or {}
    bounded = list(entry.get("bounds") or {})
    keys = [k for k in bounded if k in metrics] + [k for k in metrics if k not in bounded]
    lines = [
        f"{'<b>' if k in bounded else ''}{html.escape(k)}{'</b>' if k in bounded else ''}"
        f" = {html.escape(_fmt(metrics[k]))}"
        for k in keys
    ]
    shown = len([k for k in keys if k in bounded]) + KEY_METRICS
    text = "<br>".join(lines[:shown])
    if len(lines) > shown:
        text += f"<details><summary>{len(lines) - shown} more</summary>{'<br>'.join(lines[shown:])}</details>"
    return f"<td class='metrics'>{text}</td>"


def _verdicts_cell(entry: dict[str, Any]) -> str:
    badges = []
    for c in entry.get("claims") or []:
        label = verdict_label(c.get("holds"))
        tip = html.escape(f"{c.get('statement', '')} | measured: {json.dumps(c.get('measured', {}))}")
        badges.append(
            f"<span class='badge {label.replace(' ', '-')}' title=\"{tip}\">"
            f"{html.escape(claim_label(c))}: {label}</span>"
        )
    return f"<td>{' '.join(badges)}</td>"


def _status_cell(entry: dict[str, Any]) -> str:
    status = entry.get("status", "?")
    detail = ""
    if entry.get("error"):
        e = entry["error"]
        where = f"cell {e.get('cell')}" if e.get("cell") is not None else "before any cell"
        detail = (
            f"<div class='err'>{html.escape(where)}: {html.escape(str(e.get('ename')))}: "
            + html.escape(str(e.get("evalue", ""))[:500])
            + "</div>"
        )
    if entry.get("reasons"):
        detail += "<div class='err'>" + "<br>".join(html.escape(r) for r in entry["reasons"]) + "</div>"
    return f"<td class='status {html.escape(status)}'>{html.escape(status)}{detail}</td>"


def write_index(metrics: dict[str, dict[str, Any]], path: str | Path, preset: str) -> Path:
    """``index.html``: one row per notebook (status, time, key metrics, verdicts) with links."""
    path = Path(path)
    rows = []
    for name in sorted(metrics):
        entry = metrics[name]
        report = entry.get("report")
        link = f"<a href='{html.escape(report)}'>{html.escape(name)}</a>" if report else html.escape(name)
        seconds = entry.get("seconds")
        rows.append(
            f"<tr id='{html.escape(name)}'><td>{link}</td>{_status_cell(entry)}"
            f"<td>{'' if seconds is None else f'{seconds:.1f} s'}</td>"
            f"{_metrics_cell(entry)}{_verdicts_cell(entry)}</tr>"
        )
    n_ok = sum(1 for e in metrics.values() if e.get("status") == "ok")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>nbfacelib reports: {html.escape(preset)}</title><style>{_CSS}</style></head><body>"
        f"<h1>nbfacelib reports, preset <code>{html.escape(preset)}</code></h1>"
        f"<p>{n_ok} of {len(metrics)} notebooks ok. Bounded metrics in bold; hover a verdict for "
        "what was measured. Raw numbers: <a href='metrics.json'>metrics.json</a>.</p>"
        "<table><thead><tr><th>notebook</th><th>status</th><th>time</th><th>key metrics</th>"
        f"<th>verdicts</th></tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_root_index(reports: str | Path) -> Path:
    """``reports/index.html`` linking each preset's index that exists."""
    reports = Path(reports)
    items = "".join(
        f"<li><a href='{p.name}/index.html'>{html.escape(p.name)}</a></li>"
        for p in sorted(reports.iterdir())
        if (p / "index.html").exists()
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>nbfacelib reports</title>"
        f"<style>{_CSS}</style></head><body><h1>nbfacelib reports</h1><ul>{items}</ul></body></html>"
    )
    out = reports / "index.html"
    out.write_text(page, encoding="utf-8")
    return out

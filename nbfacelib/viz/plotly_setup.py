"""Figures in notebooks that work both in JupyterLab and in offline HTML reports.

``setup_notebook()`` (call once, near the top of every notebook):
- matplotlib: inline PNG figures;
- plotly: renderer ``plotly_mimetype+nbfacelib``. The mimetype part lets JupyterLab draw
  figures with its plotly extension (even in untrusted notebooks); the ``nbfacelib`` part adds
  a ``text/html`` rendering for nbconvert that calls a plotly.js embedded ONCE per notebook
  (in the output of the ``setup_notebook()`` cell) instead of loading it from a CDN, and leaves
  MathJax out (plotly's own notebook renderer would load MathJax from a CDN for every figure).

``interactive(fn, **controls)`` shows ipywidgets controls in JupyterLab and, when executed
headless by the runner (``NBFACELIB_HEADLESS=1``), renders ``fn`` once at the default values,
because widget state needs a live kernel (and nbconvert would load the widget manager from
a CDN).
"""

from __future__ import annotations

import functools
import html
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nbfacelib.report.record import HEADLESS_ENV

RENDERER = "nbfacelib"
_PLOTLYJS_EMITTED = False


def in_ipython() -> bool:
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def is_headless() -> bool:
    """True when run by ``nbface run/reproduce`` (or outside IPython): no widget front-end."""
    return os.environ.get(HEADLESS_ENV) == "1" or not in_ipython()


def _offline_renderer_class():
    from plotly.io import to_html
    from plotly.io._base_renderers import HtmlRenderer
    from plotly.offline import get_plotlyjs

    class OfflineNotebookRenderer(HtmlRenderer):
        """``text/html`` figures for nbconvert; plotly.js inlined once per kernel, no MathJax."""

        def __init__(self):
            super().__init__(connected=False, full_html=False, global_init=True, include_plotlyjs=False)

        def activate(self):
            global _PLOTLYJS_EMITTED
            if _PLOTLYJS_EMITTED or not in_ipython():
                return
            from IPython.display import display_html

            # A plain <script> (not type=module, not require.js): the UMD bundle defines
            # window.Plotly, which the figure scripts below call.
            display_html(
                "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
                f"<script type='text/javascript'>{get_plotlyjs()}</script>",
                raw=True,
            )
            _PLOTLYJS_EMITTED = True

        def to_mimebundle(self, fig_dict):
            return {
                "text/html": to_html(
                    fig_dict,
                    config=self.config,
                    include_plotlyjs=False,
                    include_mathjax=False,
                    full_html=False,
                    default_width="100%",
                    default_height=525,
                    validate=False,
                )
            }

    return OfflineNotebookRenderer


def setup_plotly() -> None:
    """Register the offline renderer, make it the default and embed plotly.js (once)."""
    import plotly.io as pio

    if RENDERER not in pio.renderers:
        pio.renderers[RENDERER] = _offline_renderer_class()()
    default = f"plotly_mimetype+{RENDERER}"
    if pio.renderers.default != default:
        pio.renderers.default = default
    pio.renderers[RENDERER].activate()


def setup_matplotlib(dpi: int = 100) -> None:
    import matplotlib

    if in_ipython():
        from IPython import get_ipython

        get_ipython().run_line_magic("matplotlib", "inline")
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    else:
        matplotlib.use("Agg")
    matplotlib.rcParams["figure.dpi"] = dpi
    matplotlib.rcParams["figure.figsize"] = (6.4, 4.0)


def setup_notebook(dpi: int = 100) -> None:
    """Configure matplotlib (inline PNG) and plotly (offline, JS embedded once)."""
    setup_matplotlib(dpi)
    setup_plotly()


# --------------------------------------------------------------------------- widgets
def _control(name: str, spec: Any) -> tuple[Any, Any]:
    """(default value, widget factory) for one control of ``interactive``.

    spec forms: ``(min, max)``, ``(min, max, step)`` or ``(min, max, step, default)`` -> slider
    (int if all ints, default: the middle snapped to step); a list of options -> dropdown
    (default: the first); a bool -> checkbox; an ipywidgets widget -> itself (its value).
    """
    if hasattr(spec, "value") and hasattr(spec, "observe"):  # an ipywidgets ValueWidget
        return spec.value, lambda: spec
    if isinstance(spec, bool):
        return spec, lambda: __import__("ipywidgets").Checkbox(value=spec, description=name)
    if isinstance(spec, tuple) and 2 <= len(spec) <= 4 and all(isinstance(v, numbers.Real) for v in spec):
        lo, hi = spec[0], spec[1]
        is_int = all(isinstance(v, numbers.Integral) for v in spec)
        step = spec[2] if len(spec) > 2 else (1 if is_int else (hi - lo) / 100)
        if not lo < hi or step <= 0:
            raise ValueError(f"interactive: {name}={spec!r}: need min < max and step > 0")
        if len(spec) == 4:
            value = spec[3]
        else:
            value = lo + round((hi - lo) / 2 / step) * step
            value = int(value) if is_int else float(value)
        if not lo <= value <= hi:
            raise ValueError(f"interactive: {name}: default {value} outside [{lo}, {hi}]")

        def slider():
            import ipywidgets as w

            cls = w.IntSlider if is_int else w.FloatSlider
            return cls(value=value, min=lo, max=hi, step=step, description=name, continuous_update=False)

        return value, slider
    if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) > 0:
        options = list(spec)
        return options[0], lambda: __import__("ipywidgets").Dropdown(
            options=options, value=options[0], description=name
        )
    raise ValueError(
        f"interactive: {name}={spec!r}: use (min, max[, step[, default]]), a list of options, "
        "a bool or an ipywidgets widget"
    )


def _pyplot_owns(result: Any) -> bool:
    """Whether ``result`` is a matplotlib figure that pyplot will show by itself (made with
    ``plt.figure`` / ``plt.subplots`` and still open)."""
    plt = sys.modules.get("matplotlib.pyplot")
    manager = getattr(getattr(result, "canvas", None), "manager", None)
    return plt is not None and manager is not None and plt.fignum_exists(manager.num)


def _drawn_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` returning None instead of a figure that pyplot shows anyway: both
    ``ipywidgets.interactive`` and the static rendering display the return value AND show the
    open pyplot figures, which drew a ``plt.figure`` returned by ``fn`` twice."""

    @functools.wraps(fn)  # keeps fn's signature, which ipywidgets reads
    def wrapped(**kwargs: Any) -> Any:
        result = fn(**kwargs)
        return None if _pyplot_owns(result) else result

    return wrapped


def interactive(fn: Callable[..., Any], **controls: Any) -> Any:
    """Explore ``fn`` with ipywidgets controls in JupyterLab; a static rendering headless.

    Example: ``interactive(plot_margins, m_arc=(0.0, 0.8, 0.05, 0.5), m_cos=(0.0, 0.6, 0.05, 0.35))``
    where ``plot_margins`` draws a matplotlib figure or returns a plotly figure.

    Like ``ipywidgets.interact`` it displays right away and returns None in IPython:
    - JupyterLab: the controls and ``fn``'s output, redrawn when a control moves;
    - headless (``nbface run``): ``fn`` called once at the defaults, its figure, and a caption
      naming the controls.
    Outside IPython (scripts, tests) it returns ``fn(**defaults)``.
    """
    parsed = {name: _control(name, spec) for name, spec in controls.items()}
    defaults = {name: value for name, (value, _) in parsed.items()}
    if not in_ipython():
        return fn(**defaults)
    from IPython.display import HTML, display

    if not is_headless():
        import ipywidgets

        display(
            ipywidgets.interactive(_drawn_once(fn), **{name: make() for name, (_, make) in parsed.items()})
        )
        return None
    result = _drawn_once(fn)(**defaults)
    if result is not None:
        display(result)
    if "matplotlib.pyplot" in sys.modules:  # put fn's matplotlib figures before the caption
        sys.modules["matplotlib.pyplot"].show()
    shown = ", ".join(f"{k} = {v!r}" for k, v in defaults.items())
    display(
        HTML(
            "<p style='font-size:90%;color:#555'><i>Static rendering at "
            f"{html.escape(shown)}; open the notebook in JupyterLab to change "
            f"{html.escape(', '.join(controls))} with sliders.</i></p>"
        )
    )
    return None

"""nbfacelib.viz: figures for notebooks (matplotlib static, plotly interactive, ipywidgets).

``setup_notebook()`` once per notebook; ``interactive(fn, **controls)`` for widget controls
that degrade to a static rendering in headless runs and HTML reports.
"""

from nbfacelib.viz.plotly_setup import interactive, is_headless, setup_notebook

__all__ = ["interactive", "is_headless", "setup_notebook"]

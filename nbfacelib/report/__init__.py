"""nbfacelib.report: what notebooks record, how they are run, and how reports are rendered.

In a notebook::

    from nbfacelib.report import record, claim
    record("final_accuracy_synthetic", acc)
    claim("C13", "max |d^2 - (2 - 2cos)| over 10k random unit vectors < 1e-9",
          {"max_abs_error": err}, holds=err < 1e-9)

Runner side: ``nbfacelib.report.runner.run_notebook`` / ``reproduce`` (``nbface run`` /
``nbface reproduce``), HTML in ``nbfacelib.report.html``, bounds in ``nbfacelib.report.bounds``.
Only the light recording API is imported here, so a notebook's import stays fast. To run a
notebook by hand at another preset: ``globals().update(notebook_parameters(NAME, "cpu"))``.
"""

from nbfacelib.presets import notebook_parameters
from nbfacelib.report.record import (
    CLAIMS,
    PROJECT_CLAIMS,
    claim,
    claims,
    metrics,
    record,
    reset,
    summary,
    verdict_table,
)

__all__ = [
    "CLAIMS",
    "PROJECT_CLAIMS",
    "claim",
    "claims",
    "metrics",
    "notebook_parameters",
    "record",
    "reset",
    "summary",
    "verdict_table",
]

"""What a running notebook is doing, for the terminal or a log file.

:class:`NotebookProgress` receives three kinds of events from the papermill run (see
``runner.run_notebook``): a code cell starts, the kernel writes to stdout / stderr (text
progress bars), and a tqdm *widget* bar changes (``tqdm.auto`` draws widgets inside a Jupyter
kernel, so training bars arrive as widget-state updates, not text). It shows, per notebook,
the cell being run out of the total, the elapsed time, and the notebook's own progress:

* on a terminal (``stream.isatty()``): one status line redrawn in place (``\\r``), e.g.
  ``  cell 7/19  2:13  train: 40% 120/300 [00:10<00:15, 12.0step/s]``, refreshed every second;
* in a file or a pipe: plain lines, no carriage returns: one line when a cell starts, one line
  per finished bar (its final state) or printed line (at most 20 per cell: the notebooks print
  one-line summaries of their runs), and the current state of a running bar at most every
  ``interval`` seconds, so a log of a long run stays short and readable.
"""

from __future__ import annotations

import html
import re
import shutil
import sys
import threading
import time
from typing import Any, TextIO

_TAGS = re.compile(r"<[^>]+>")


def _plain(text: str) -> str:
    """Widget HTML (``&nbsp;120/300 [00:10&lt;00:20]``) -> plain text."""
    return " ".join(html.unescape(_TAGS.sub("", text)).replace("\xa0", " ").split())


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class NotebookProgress:
    """Progress of one notebook run; ``start(n_cells)`` then events, then ``close()``."""

    def __init__(
        self,
        name: str,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        interval: float = 30.0,
        indent: str = "    ",
        clock=time.monotonic,
    ):
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.indent = indent
        self.clock = clock
        self.t0 = clock()
        self.cell = 0
        self.n_cells = 0
        self.bar = ""  # the notebook's latest progress text
        self._bar_shown_at = -1e18
        self._last_done = ""
        self._cell_lines = 0  # stream lines shown for the current cell
        self.max_lines_per_cell = 20
        self._partial: dict[str, str] = {}  # stream name -> text of the line being written
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._status_len = 0

    # ------------------------------------------------------------------ output
    def _line(self, text: str) -> None:
        """A line of the log (on a terminal: above the status line, which is redrawn)."""
        if self.tty:
            self.stream.write("\r" + " " * self._status_len + "\r")
        self.stream.write(f"{self.indent}{text}\n")
        if self.tty:
            self._draw()
        self.stream.flush()

    def status(self) -> str:
        cell = f"cell {self.cell}/{self.n_cells}" if self.cell else "starting the kernel"
        return f"{self.indent}{cell}  {format_elapsed(self.clock() - self.t0)}" + (
            f"  {self.bar}" if self.bar else ""
        )

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = self.status()[:width]
        pad = max(0, self._status_len - len(text))
        self.stream.write("\r" + text + " " * pad)
        self._status_len = len(text)
        self.stream.flush()

    # ------------------------------------------------------------------ events
    def start(self, n_cells: int) -> None:
        with self._lock:
            self.n_cells = n_cells
            if self.tty and self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()

    def cell_start(self, number: int, source: str = "") -> None:
        """Code cell ``number`` (1-based, of ``n_cells``) starts."""
        with self._lock:
            self.cell = number
            self.bar = ""
            self._cell_lines = 0
            if self.tty:
                self._draw()
            else:
                first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
                first = first if len(first) <= 60 else first[:57] + "..."
                self._line(
                    f"cell {number}/{self.n_cells} at {format_elapsed(self.clock() - self.t0)}"
                    + (f": {first}" if first else "")
                )

    def _progress_text(self, text: str, done: bool) -> None:
        """A progress bar's current text; ``done`` when it is the bar's final state."""
        text = text.strip()
        if not text or (done and text == self._last_done):
            return
        if done:
            self._last_done = text
        self.bar = text
        now = self.clock()
        if self.tty:
            if done:
                self._line(text)
            else:
                self._draw()
        elif done or now - self._bar_shown_at >= self.interval:
            self._bar_shown_at = now
            self._line(f"| {text}")

    def write(self, name: str, text: str) -> None:
        """Text the kernel wrote to stream ``name`` ('stdout' / 'stderr'). Lines rewritten with
        ``\\r`` (text progress bars) count as one line, shown in its final state; other lines
        (a notebook's one-line summaries of its runs) are shown too, up to
        ``max_lines_per_cell`` per cell (the rest is in the report)."""
        with self._lock:
            buf = self._partial.get(name, "") + text
            *complete, rest = buf.split("\n")
            for line in complete:
                final = line.rsplit("\r", 1)[-1].rstrip()
                if not final.strip():
                    continue
                if self._cell_lines == self.max_lines_per_cell:
                    self._line(f"| ... (more output of cell {self.cell} in the report)")
                self._cell_lines += 1
                if self._cell_lines <= self.max_lines_per_cell:
                    self._progress_text(final if len(final) <= 200 else final[:197] + "...", done=True)
            self._partial[name] = rest
            if "\r" in rest:
                self._progress_text(rest.rstrip("\r").rsplit("\r", 1)[-1], done=False)

    def widget(self, text: str, done: bool) -> None:
        """A tqdm widget bar's text (description, percentage, meter) changed."""
        with self._lock:
            self._progress_text(text, done)

    def close(self, summary: str | None = None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:
            if self.tty and self._status_len:
                self.stream.write("\r" + " " * self._status_len + "\r")
                self._status_len = 0
            if summary:
                self.stream.write(f"{self.indent}{summary}\n")
            self.stream.flush()


class StreamTo:
    """A file-like object papermill writes one kernel stream to (``stdout_file=``)."""

    def __init__(self, progress: NotebookProgress, name: str):
        self.progress, self.name = progress, name

    def write(self, text: str) -> int:
        self.progress.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass


def tqdm_widget_text(widget_state: dict[str, dict[str, Any]], comm_id: str) -> tuple[str, bool] | None:
    """(text, finished) of the tqdm widget bar that widget model ``comm_id`` belongs to, from
    nbclient's widget state, or None if it is not part of one. tqdm.notebook draws an HBox of
    [HTML description, FloatProgress, HTML meter]."""
    ref = f"IPY_MODEL_{comm_id}"
    for box in widget_state.values():
        children = box.get("children") or []
        if box.get("_model_name") != "HBoxModel" or len(children) != 3 or ref not in children:
            continue
        parts = [widget_state.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in children]
        desc, bar, meter = parts
        if bar.get("_model_name") not in ("FloatProgressModel", "IntProgressModel"):
            return None
        value, top = bar.get("value") or 0, bar.get("max") or 0
        left = _plain(str(desc.get("value", "")))  # tqdm puts "desc: 40%" here
        pct = f"{100 * value / top:.0f}%" if top and "%" not in left else ""
        parts = (left, pct, _plain(str(meter.get("value", ""))))
        text = " ".join(t for t in parts if t)
        # tqdm sets the bar style when it closes, after its last text update: only then is the
        # text final (value == max arrives before the meter text that goes with it)
        return text, bar.get("bar_style") in ("success", "danger")
    return None

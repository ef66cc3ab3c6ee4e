"""JupyterLab, where users work: the server ``make lab`` starts opens notebook 01 in a real
(headless) Chromium, runs the cells up to its margin-slider cell and draws the sliders.

The server listens on a free port of 127.0.0.1 only, with a random token, in a scratch
folder holding a COPY of the notebook (so nothing writes into notebooks/), and is started with
``--expose-app-in-browser`` so the test can drive JupyterLab's own commands
(``docmanager:open``, ``notebook:run-all-above``, ``notebook:run-cell``) from the page.
Chromium is driven as in tests/test_report_browser.py (DevTools over a pipe). Every wait is
bounded; the server and the browser are stopped in ``finally``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from test_report_browser import Browser, chromium  # noqa: F401 (the fixture is used by name)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01_arcface_margins.ipynb"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, deadline: float, proc: subprocess.Popen, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url}:\n{log.read_text()[-3000:]}")


def _widget_cell(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "interactive(" in c.source)


@pytest.fixture
def lab(tmp_path):
    """(base url, token, scratch folder) of a JupyterLab server on 127.0.0.1."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    env.pop("NBFACELIB_HEADLESS", None)  # a live front-end: widgets, not their static rendering
    log = tmp_path / "lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--expose-app-in-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
    ]  # fmt: skip
    if os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses that unless told
        cmd.append("--allow-root")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/status?token={token}", time.monotonic() + 120, proc, log)
        yield base, token, work
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _evaluate(browser: Browser, session: str, expression: str, timeout: float = 60.0):
    reply = browser.send(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True},
        session=session,
        timeout=timeout,
    )
    if "exceptionDetails" in reply:
        raise RuntimeError(f"page error: {reply['exceptionDetails']}")
    return reply["result"].get("value")


def _poll(browser, session, expression: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = _evaluate(browser, session, expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(1.0)


@pytest.mark.timeout(600)
def test_notebook_01_sliders_draw_in_jupyterlab(lab, chromium, tmp_path):  # noqa: F811
    base, token, work = lab
    cell = _widget_cell(nbformat.read(NOTEBOOK, as_version=4))
    browser = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        browser.send("Page.navigate", {"url": f"{base}/lab?token={token}"}, session=session)
        _poll(
            browser, session, "!!(window.jupyterapp && window.jupyterapp.started)", 120, "JupyterLab to load"
        )
        _evaluate(browser, session, "window.jupyterapp.started.then(() => true)", timeout=120)
        _evaluate(
            browser,
            session,
            f"window.jupyterapp.commands.execute('docmanager:open', {{path: '{NOTEBOOK.name}'}})"
            ".then(() => true)",
        )
        ready = (
            "(async () => { const w = window.jupyterapp.shell.currentWidget;"
            " if (!w || !w.sessionContext || !w.content) return false;"
            " await w.sessionContext.ready;"
            " return !!(w.sessionContext.session && w.sessionContext.session.kernel); })()"
        )
        _poll(browser, session, ready, 180, "the notebook's kernel")
        # run every cell above the slider cell (parameters, imports, rules, C13, geometry), then it
        run = (
            "(async () => { const app = window.jupyterapp; const nb = app.shell.currentWidget;"
            f" nb.content.activeCellIndex = {cell};"
            " const above = await app.commands.execute('notebook:run-all-above');"
            " const it = await app.commands.execute('notebook:run-cell'); return [above, it]; })()"
        )
        ran = _evaluate(browser, session, run, timeout=300)
        probe = (
            "(() => { const nb = window.jupyterapp.shell.currentWidget.content;"
            f" const node = nb.widgets[{cell}].node; const errors = [];"
            f" for (let i = 0; i <= {cell}; i++) {{ const m = nb.widgets[i].model;"
            "   if (!m.outputs) continue;"
            "   for (const o of m.outputs.toJSON())"
            "     if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`); }"
            " return JSON.stringify({errors,"
            " sliders: node.querySelectorAll('.widget-hslider .noUi-handle').length,"
            " images: node.querySelectorAll('.widget-output img, .jp-OutputArea img').length}); })()"
        )
        deadline = time.monotonic() + 120  # widgets render after the kernel replied
        state = json.loads(_evaluate(browser, session, probe))
        while (
            not state["errors"]
            and (state["sliders"] < 5 or state["images"] < 1)
            and time.monotonic() < deadline
        ):
            time.sleep(1.0)
            state = json.loads(_evaluate(browser, session, probe))
        scroll = (
            f"window.jupyterapp.shell.currentWidget.content.widgets[{cell}].node.scrollIntoView() || true"
        )
        _evaluate(browser, session, scroll)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=60)
        (tmp_path / "lab.png").write_bytes(base64.b64decode(shot["data"]))
        assert not state["errors"], f"cells failed in JupyterLab: {state['errors']}"
        assert ran == [True, True], f"notebook:run-all-above / run-cell reported {ran}"
        # five sliders (m_sphere, m_cos, m_arc, m_comb2, m_comb3) and the figure they drive
        assert state["sliders"] == 5 and state["images"] >= 1, state
    finally:
        browser.close()


def test_make_lab_runs_jupyterlab_from_the_venv_on_notebooks():
    makefile = (REPO / "Makefile").read_text()
    block = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "$(STAMP)" in block.splitlines()[0]  # the venv is made first
    assert "$(PY) -m jupyterlab" in block and "--notebook-dir=notebooks" in block

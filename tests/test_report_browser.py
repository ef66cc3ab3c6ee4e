"""Reports render in a real browser, offline: headless Chromium opens index.html and the
engine self-test report, and the test fails on JavaScript errors, on any network request, or
when a plotly figure did not draw (a ``.plotly-graph-div`` without ``svg.main-svg``).

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4), which needs only the standard
library: no selenium, no chromedriver, no websocket client. Chromium itself comes from the
Debian package, installed by the ``chromium`` fixture when missing (CI starts bare).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SELFTEST = REPO / "tests" / "data" / "engine_selftest.ipynb"
SELFTEST_PLOTLY_FIGURES = 2  # the scatter and the static rendering of interactive(...)
# Screenshots are written under each test's tmp_path; NBFACELIB_SCREENSHOT_DIR keeps copies.
SCREENSHOT_DIR = (
    Path(os.environ["NBFACELIB_SCREENSHOT_DIR"]) if os.environ.get("NBFACELIB_SCREENSHOT_DIR") else None
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
    "--remote-debugging-pipe",
]


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("NBFACELIB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium executable; installs Debian's ``chromium`` with apt-get if missing
    (idempotent: a no-op when present)."""
    exe = _find_chromium()
    if exe:
        return exe
    apt = shutil.which("apt-get")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt is None or prefix is None:
        pytest.fail(
            "Chromium is missing and cannot be installed here (needs apt-get as root): "
            "apt-get install chromium, or set NBFACELIB_CHROMIUM to a Chromium executable"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(prefix + cmd, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    exe = _find_chromium()
    if not exe:
        pytest.fail("apt-get installed chromium but no chromium executable is on PATH")
    return exe


class Browser:
    """A headless Chromium speaking the DevTools protocol over pipes (fd 3: commands in,
    fd 4: replies and events out)."""

    def __init__(self, exe: str, profile: Path, log: Path, env: dict[str, str] | None = None):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Move the child's ends above 3/4 first, so the dup2 onto 3 and 4 below never clobbers
        # one with the other and always clears close-on-exec.
        hi_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        argv = [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.pid = os.posix_spawn(
                exe,
                argv,
                os.environ if env is None else env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, hi_r, 3),
                    (os.POSIX_SPAWN_DUP2, hi_w, 4),
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
            )
        finally:
            for fd in (to_chrome_r, from_chrome_w, hi_r, hi_w, log_fd):
                os.close(fd)
        self.write_fd, self.read_fd = to_chrome_w, from_chrome_r
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.log = log

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError(f"no reply from Chromium; its log:\n{self.log.read_text()[-3000:]}")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe; its log:\n{self.log.read_text()[-3000:]}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout=30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout=30.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            os.kill(self.pid, signal.SIGKILL)
        for fd in (self.write_fd, self.read_fd):
            os.close(fd)
        os.waitpid(self.pid, 0)


def open_page(
    browser: Browser, url: str, screenshot: Path, settle_s: float = 15.0, font_selector: str | None = None
) -> dict:
    """Load ``url``; return {errors, requests, figures, rendered, rows, fonts} after plotly
    settled; ``fonts``: {font family: glyphs drawn} for the text of ``font_selector``'s node."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    browser.send("Page.navigate", {"url": url}, session=session)
    browser.wait_event("Page.loadEventFired", timeout=60)
    probe = (
        "JSON.stringify({figures: document.querySelectorAll('.plotly-graph-div').length,"
        " rendered: [...document.querySelectorAll('.plotly-graph-div')]"
        ".filter(d => d.querySelector('svg.main-svg')).length,"
        " rows: document.querySelectorAll('tbody tr').length,"
        " images: document.querySelectorAll('img[src^=\"data:image/png\"]').length})"
    )
    deadline = time.monotonic() + settle_s
    while True:
        state = json.loads(
            browser.send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session)[
                "result"
            ]["value"]
        )
        if state["rendered"] == state["figures"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # plotly draws asynchronously after load; poll, not a fixed sleep
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=60)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    if SCREENSHOT_DIR is not None:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, SCREENSHOT_DIR / screenshot.name)
    fonts = {}
    if font_selector:
        doc = browser.send("DOM.getDocument", session=session)
        node = browser.send(
            "DOM.querySelector", {"nodeId": doc["root"]["nodeId"], "selector": font_selector}, session=session
        )["nodeId"]
        browser.send("CSS.enable", session=session)
        used = browser.send("CSS.getPlatformFontsForNode", {"nodeId": node}, session=session)["fonts"]
        fonts = {
            f["familyName"] + (" (embedded)" if f.get("isCustomFont") else ""): f["glyphCount"] for f in used
        }

    errors, requests = [], []
    for ev in browser.events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(d.get("exception", {}).get("description") or d.get("text"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(f"{p['entry'].get('text')} ({p['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent":
            req_url = p["request"]["url"]
            if not req_url.startswith(("file:", "data:", "about:", "blob:")):
                requests.append(req_url)
    browser.events.clear()
    browser.send("Target.closeTarget", {"targetId": target})
    return {**state, "errors": errors, "requests": requests, "fonts": fonts}


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(chromium, tmp / "profile", tmp / "chromium.log")
    yield b
    b.close()


def test_notebook_report_renders_offline(browser, selftest_reports, tmp_path):
    report = selftest_reports[0] / "engine_selftest.html"
    page = open_page(browser, report.as_uri(), tmp_path / "selftest.png")
    assert page["errors"] == [], f"JavaScript errors: {page['errors']}"
    assert page["requests"] == [], f"the report fetched from the network: {page['requests']}"
    assert page["figures"] == SELFTEST_PLOTLY_FIGURES, page
    assert page["rendered"] == page["figures"], f"plotly figures that did not draw: {page}"
    assert page["images"] >= 1, "the matplotlib figure (inline PNG) is missing"
    assert (tmp_path / "selftest.png").stat().st_size > 10_000  # a real picture, not a blank page


def test_index_renders_offline(browser, selftest_reports, tmp_path):
    page = open_page(browser, (selftest_reports[0] / "index.html").as_uri(), tmp_path / "index.png")
    assert page["errors"] == [], f"JavaScript errors: {page['errors']}"
    assert page["requests"] == [], f"index.html fetched from the network: {page['requests']}"
    assert page["rows"] >= 1  # one row per notebook in metrics.json


def test_browser_check_catches_errors_network_and_blank_figures(browser, tmp_path):
    """The checks above can fail: a script error, a console.error, a CDN script and a plotly
    div that never drew are all reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><div class='plotly-graph-div'></div>"
        "<script>console.error('bad thing');</script>"
        "<script src='https://cdn.example.invalid/plotly.js'></script>"
        "<script>throw new Error('boom');</script></body></html>"
    )
    got = open_page(browser, page.as_uri(), tmp_path / "bad.png", settle_s=1.0)
    assert any("boom" in e for e in got["errors"]), got["errors"]
    assert any("bad thing" in e for e in got["errors"]), got["errors"]
    assert got["requests"] == ["https://cdn.example.invalid/plotly.js"]
    assert (got["figures"], got["rendered"]) == (1, 0)


# --------------------------------------------------------------------------- CJK titles
@pytest.fixture(scope="module")
def browser_without_cjk(chromium, tmp_path_factory):
    """A Chromium that sees only the fonts without CJK glyphs (a fontconfig file of its own),
    as on a reader's machine without any CJK font."""
    tmp = tmp_path_factory.mktemp("chromium-nocjk")

    def fc_files(pattern: str) -> set[str]:
        out = subprocess.run(["fc-list", pattern, "file"], capture_output=True, text=True, check=True).stdout
        return {line.split(":")[0].strip() for line in out.splitlines() if line.strip()}

    if shutil.which("fc-list"):
        latin = sorted(fc_files(":") - fc_files(":lang=zh") - fc_files(":lang=ja") - fc_files(":lang=ko"))
    else:  # no fontconfig tools: read the fonts' character maps instead
        from nbfacelib.report.fonts import _cmap

        latin = []
        for path in sorted(Path("/usr/share/fonts").rglob("*")):
            if path.suffix.lower() in (".ttf", ".otf", ".ttc"):
                try:
                    if ord("总") not in _cmap(path):
                        latin.append(str(path))
                except Exception:
                    continue
    if not latin:
        pytest.fail("fontconfig lists no font without CJK coverage")
    (tmp / "fonts").mkdir()
    for i, path in enumerate(latin):  # the fonts this browser may use: links in a folder of its own
        (tmp / "fonts" / f"{i}-{Path(path).name}").symlink_to(path)
    conf = tmp / "fonts.conf"
    conf.write_text(
        "<?xml version='1.0'?><!DOCTYPE fontconfig SYSTEM 'fonts.dtd'><fontconfig>"
        f"<dir>{tmp / 'fonts'}</dir><cachedir>{tmp / 'fc-cache'}</cachedir></fontconfig>"
    )
    b = Browser(
        chromium, tmp / "profile", tmp / "chromium.log", env={**os.environ, "FONTCONFIG_FILE": str(conf)}
    )
    yield b
    b.close()


def test_chinese_title_renders_without_a_cjk_font(browser_without_cjk, tmp_path):
    """The report embeds a subset font for its CJK characters: in a browser with no CJK font,
    the title's two CJK glyphs are drawn by it, where the page without it falls back to fonts
    that have no CJK glyphs (boxes)."""
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook

    from nbfacelib.report.html import notebook_to_html

    nb = tmp_path / "title.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Source: Arcface 总结")]), nb)
    page = notebook_to_html(nb, tmp_path / "title.html")
    text = page.read_text()
    assert "@font-face{font-family:'nbfacelib-cjk'" in text and "unicode-range:U+603B,U+7ED3" in text
    got = open_page(
        browser_without_cjk, page.as_uri(), tmp_path / "title.png", settle_s=1, font_selector="h1"
    )
    # 总 and 结 come from the embedded subset (named by its own name table)
    assert got["fonts"].get("WenQuanYi Micro Hei (embedded)") == 2, got["fonts"]

    bare = tmp_path / "bare.html"  # the same page without the embedded font: the control
    bare.write_text(re.sub(r"<style id='nbfacelib-cjk-font'>.*?</style>", "", text, flags=re.S))
    got = open_page(browser_without_cjk, bare.as_uri(), tmp_path / "bare.png", settle_s=1, font_selector="h1")
    assert not any("embedded" in f or "WenQuanYi" in f for f in got["fonts"]), got["fonts"]  # boxes

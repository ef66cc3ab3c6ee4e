"""CJK text in offline reports: a font subset embedded in the page.

The notebooks quote the source documents' Chinese titles. A reader whose machine has no CJK
font sees them as empty boxes, so each report embeds, as a WOFF ``data:`` URI, a subset of a
CJK font holding exactly the CJK characters the page uses (a few KB per title), declared with
a ``unicode-range`` so that it draws those characters only, and put first in the page's font
stacks.

The glyphs come from the first font that covers the characters, in this order: the file in
``$NBFACELIB_CJK_FONT``; the fonts fontconfig lists for Chinese (``fc-list :lang=zh``); the
subset shipped in the package (``fonts/nbfacelib-cjk-titles.ttf``, WenQuanYi Micro Hei,
Apache-2.0, cut to the characters of the five documents' titles; rebuild with
:func:`build_title_font`). fontTools (a matplotlib dependency) does the subsetting; WOFF
needs only zlib.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import os
import re
import subprocess
import warnings
from pathlib import Path

FAMILY = "nbfacelib-cjk"
SHIPPED_FONT = Path(__file__).with_name("fonts") / "nbfacelib-cjk-titles.ttf"
FONT_ENV = "NBFACELIB_CJK_FONT"

# CJK radicals .. unified ideographs (with kana, bopomofo, CJK punctuation), Hangul syllables,
# compatibility ideographs, full-width forms
_CJK = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)


def cjk_chars(text: str) -> str:
    """The distinct CJK characters of ``text``, sorted."""
    return "".join(sorted(set(_CJK.findall(text))))


def page_text(page: str) -> str:
    """An HTML page without its scripts and style sheets (plotly.js holds CJK strings of its own)."""
    return _SCRIPT_OR_STYLE.sub(" ", page)


def _cmap(path: Path, number: int = 0) -> set[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), fontNumber=number, lazy=True)
    try:
        return set(font.getBestCmap() or {})
    finally:
        font.close()


@functools.lru_cache(maxsize=1)
def _system_fonts() -> tuple[Path, ...]:
    try:
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    files = {Path(line.split(":")[0].strip()) for line in out.splitlines() if line.strip()}
    return tuple(sorted(p for p in files if p.suffix.lower() in (".ttf", ".otf", ".ttc", ".otc")))


def find_font(chars: str) -> Path | None:
    """The first font (see module doc) whose character map covers every one of ``chars``."""
    candidates = []
    if os.environ.get(FONT_ENV):
        candidates.append(Path(os.environ[FONT_ENV]))
    candidates += list(_system_fonts())
    candidates.append(SHIPPED_FONT)
    need = {ord(c) for c in chars}
    for path in candidates:
        try:
            if path.is_file() and need <= _cmap(path):
                return path
        except Exception:  # an unreadable font file: try the next one
            continue
    return None


def _quiet_subsetter() -> None:
    # fontTools logs a warning for each table it drops ("FFTM NOT subset"): noise in a run log
    logging.getLogger("fontTools.subset").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=64)
def _subset_woff(path: Path, chars: str) -> bytes:
    from fontTools import subset
    from fontTools.ttLib import TTFont

    _quiet_subsetter()
    options = subset.Options()
    options.flavor = "woff"  # zlib; WOFF2 would need brotli
    options.hinting = False
    options.desubroutinize = True
    options.name_IDs = ["*"]  # keep the copyright and licence strings
    font = TTFont(str(path), fontNumber=0)
    sub = subset.Subsetter(options)
    sub.populate(unicodes=[ord(c) for c in chars])
    sub.subset(font)
    buf = io.BytesIO()
    font.flavor = "woff"
    font.save(buf)
    return buf.getvalue()


def _unicode_range(chars: str) -> str:
    return ",".join(f"U+{ord(c):04X}" for c in chars)


def cjk_font_css(page: str) -> str:
    """A ``<style>`` embedding a subset font for the CJK characters of ``page`` (outside its
    scripts), first in the font stacks of nbconvert's lab theme and of plain text; "" if the
    page has none. Warns (and returns "") if no font covers them."""
    chars = cjk_chars(page_text(page))
    if not chars:
        return ""
    font = find_font(chars)
    if font is None:
        warnings.warn(
            f"no CJK font covers {chars!r}: the report will show them only where the reader has one "
            f"(install fonts-wqy-microhei or fonts-noto-cjk, or set ${FONT_ENV})",
            stacklevel=2,
        )
        return ""
    data = base64.b64encode(_subset_woff(font, chars)).decode()
    stacks = []
    for var in ("--jp-ui-font-family", "--jp-content-font-family"):
        m = re.search(re.escape(var) + r"\s*:\s*([^;}]+)", page)
        if m:
            stacks.append(f"{var}: '{FAMILY}', {m.group(1).strip()};")
    return (
        "<style id='nbfacelib-cjk-font'>"
        f"@font-face{{font-family:'{FAMILY}';src:url(data:font/woff;base64,{data}) format('woff');"
        f"unicode-range:{_unicode_range(chars)};}}"
        f":root{{{''.join(stacks)}}}"
        f"body{{font-family:'{FAMILY}',system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}}"
        "</style>"
    )


def embed_cjk_font(page: str) -> str:
    """``page`` with :func:`cjk_font_css` put at the end of its ``<head>``."""
    css = cjk_font_css(page)
    if not css:
        return page
    i = page.find("</head>")
    return page[:i] + css + page[i:] if i >= 0 else css + page


def build_title_font(source: str | os.PathLike, titles: str, out: str | os.PathLike = SHIPPED_FONT) -> Path:
    """Rebuild the shipped fallback: the glyphs of ``titles``' CJK characters from ``source``
    (e.g. /usr/share/fonts/truetype/wqy/wqy-microhei.ttc, Debian's fonts-wqy-microhei)."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    _quiet_subsetter()
    chars = cjk_chars(titles)
    options = subset.Options()
    options.hinting = False
    options.name_IDs = ["*"]
    font = TTFont(str(source), fontNumber=0)
    sub = subset.Subsetter(options)
    sub.populate(unicodes=[ord(c) for c in chars])
    sub.subset(font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    font.save(str(out))
    return out

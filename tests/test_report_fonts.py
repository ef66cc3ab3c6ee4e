"""The CJK font embedded in reports: characters found outside scripts, the shipped fallback
subset covers the documents' titles, and a character no font has is a warning."""

from __future__ import annotations

import base64
import io
import re

import pytest

from nbfacelib.report import fonts


def test_cjk_chars_outside_scripts_and_styles():
    page = (
        "<head><style>p:after{content:'样'}</style></head>"
        "<body><h1>Arcface 总结</h1><script>var s='中文'</script>"
    )
    assert fonts.cjk_chars(fonts.page_text(page)) == "总结"
    assert fonts.cjk_font_css("<body>no CJK here</body>") == ""


def test_shipped_subset_covers_the_titles_and_is_the_fallback(monkeypatch):
    monkeypatch.setattr(fonts, "_system_fonts", lambda: ())
    monkeypatch.delenv(fonts.FONT_ENV, raising=False)
    titles = fonts.SHIPPED_FONT.with_name("titles.txt").read_text()
    chars = fonts.cjk_chars(titles)
    assert len(chars) >= 40 and "总" in chars and "拓" in chars
    assert {ord(c) for c in chars} <= fonts._cmap(fonts.SHIPPED_FONT)
    assert fonts.find_font("总结") == fonts.SHIPPED_FONT
    css = fonts.cjk_font_css("<head></head><body><h1>[论文理解] 人脸识别论文总结(一)</h1></body>")
    woff = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", css).group(1))
    from fontTools.ttLib import TTFont

    subset = TTFont(io.BytesIO(woff))
    assert subset.flavor == "woff" and set(subset.getBestCmap()) >= {ord(c) for c in "论文理解人脸识别总结一"}
    assert len(subset.getGlyphOrder()) < 30  # only the page's characters, not the whole font


def test_no_font_for_a_character_is_a_warning(monkeypatch):
    monkeypatch.setattr(fonts, "_system_fonts", lambda: ())
    monkeypatch.delenv(fonts.FONT_ENV, raising=False)
    with pytest.warns(UserWarning, match="no CJK font covers '龘'"):
        assert fonts.cjk_font_css("<body>龘</body>") == ""

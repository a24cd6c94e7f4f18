"""The page's files without a browser: self-contained, and data never parsed as HTML."""

from __future__ import annotations

import re

import pytest

from xretrieve.serve import STATIC_DIR

FILES = ("index.html", "app.js", "app.css")


@pytest.mark.parametrize("name", FILES)
def test_page_files_are_shipped(name: str) -> None:
    assert (STATIC_DIR / name).is_file()


def test_no_html_sinks_in_the_script() -> None:
    """Captions and paths reach the page through textContent / setAttribute only."""
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    code = re.sub(r"//[^\n]*", "", js)  # the rules comment names the sinks it avoids
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setTimeout("',
        "DOMParser",
        "createContextualFragment",
    ):
        assert sink not in code, sink


@pytest.mark.parametrize("name", FILES)
def test_nothing_is_loaded_from_elsewhere(name: str) -> None:
    """No CDN, no web fonts, no absolute URL: the page works on a machine without internet."""
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), name
    assert "@import" not in text and "url(" not in text


def test_html_loads_only_its_own_files() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sorted(refs) == ["/static/app.css", "/static/app.js"]
    assert not re.findall(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    assert not re.findall(r"<[^>]*\son[a-z]+\s*=", html)  # no inline event handlers

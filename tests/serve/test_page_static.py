"""The page's files without a browser: self-contained, and data never parsed as HTML."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from xretrieve.serve import STATIC_DIR

MODULES = (
    "app.js",
    "api.js",
    "state.js",
    "filters.js",
    "controls.js",
    "grid.js",
    "detail.js",
    "dom.js",
)
FILES = ("index.html", "app.css", *MODULES)


@pytest.mark.parametrize("name", FILES)
def test_page_files_are_shipped(name: str) -> None:
    assert (STATIC_DIR / name).is_file()


@pytest.mark.parametrize("name", MODULES)
def test_no_html_sinks_in_the_script(name: str) -> None:
    """Captions and paths reach the page through textContent / setAttribute only."""
    js = (STATIC_DIR / name).read_text(encoding="utf-8")
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


def test_the_script_is_a_module_importing_only_its_own_files() -> None:
    """The entry is an ES module; every import is a sibling file that ships with it."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert '<script type="module" src="/static/app.js"></script>' in html
    shipped = sorted(p.name for p in STATIC_DIR.glob("*.js"))
    assert shipped == sorted(MODULES)
    for name in MODULES:
        js = (STATIC_DIR / name).read_text(encoding="utf-8")
        for spec in re.findall(r'^import\b[^;]*?from\s+"([^"]+)";', js, flags=re.M | re.S):
            assert re.fullmatch(r"\./[a-z]+\.js", spec), (name, spec)
            assert (STATIC_DIR / spec[2:]).is_file(), (name, spec)
        assert "require(" not in js and "import(" not in js, name


def test_modules_are_served_as_javascript(client: TestClient) -> None:
    """Module scripts need a JavaScript type (the server sends nosniff, and sets no CSP)."""
    for name in MODULES:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        # Either JavaScript type runs a module; which one depends on the OS's mime.types.
        kind = r.headers["content-type"].split(";")[0]
        assert kind in ("text/javascript", "application/javascript"), (name, kind)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" not in r.headers

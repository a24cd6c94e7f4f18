"""Regenerate docs/screenshot.png: the search page on an index, in headless Chromium.

    .venv/bin/python scripts/screenshot.py [--index indexes/demo] [--query "..."]
        [--out docs/screenshot.png] [--width 1280] [--height 800]

Serves the index with the real app on 127.0.0.1 (a free port, in this process), opens the page
with Debian's chromium + chromedriver (found as the browser tests find them; nothing is
downloaded), runs the query and saves the page as a PNG of exactly width x height.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
# The browser helpers live with the page tests.
sys.path.insert(0, str(ROOT / "tests" / "serve"))

from browser import find_browser, make_driver, running  # noqa: E402

from xretrieve.serve import ServeConfig, create_app  # noqa: E402

DEFAULT_QUERY = "a large red circle in the top left"


def _wait(driver: object, script: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript condition until it is true."""
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for: {script}")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="indexes/demo", help="index folder (default indexes/demo)")
    ap.add_argument("--name", default="demo", help="the name it is served under")
    ap.add_argument("--query", default=DEFAULT_QUERY)
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--detail", action="store_true", help="open the first result's detail view")
    args = ap.parse_args()

    index = Path(args.index)
    if not index.is_dir():
        print(f"{index} is not an index folder (bash scripts/demo.sh builds indexes/demo)")
        return 2
    found = find_browser()
    if isinstance(found, str):
        print(found)
        return 2
    app = create_app(ServeConfig(indexes={args.name: index}, device="cpu", threads=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with running(app) as url:
        driver = make_driver(paths=found, width=args.width, height=args.height)
        try:
            driver.get(f"{url}/?{urlencode({'q': args.query})}")
            _wait(
                driver,
                "return ['done', 'more'].includes(document.getElementById('results').dataset.state);",
            )
            # Every thumbnail in view decoded, so the picture has no grey holes.
            _wait(
                driver,
                "return [...document.querySelectorAll('#results .card img')]"
                ".filter(i => i.getBoundingClientRect().top < innerHeight)"
                ".every(i => i.complete && i.naturalWidth > 0);",
            )
            if args.detail:
                driver.execute_script("document.querySelector('#results .card').click();")
                _wait(driver, "return document.querySelectorAll('#d-captions a').length > 0;")
                _wait(
                    driver,
                    "const i = document.getElementById('d-image'); return i.complete && i.naturalWidth > 0;",
                )
            driver.execute_script("document.activeElement.blur();")  # no focus ring in the picture
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    print(f"wrote {out} ({args.width}x{args.height}) from {index} for {args.query!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

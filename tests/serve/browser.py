"""A headless Chromium for page tests: Debian's `chromium` + `chromium-driver`, nothing downloaded.

Rules kept here: the browser and its driver are found on this machine (PATH or Debian's
locations) and passed to Selenium explicitly, and Selenium Manager is told to stay offline, so
a test run never fetches a browser. When either is missing the tests skip with the reason,
unless XRETRIEVE_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

__all__ = ["find_browser", "make_driver", "require_browser", "running"]

# The real binary first: Debian's /usr/bin/chromium is a shell wrapper around it.
_BROWSERS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
_DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")


def _first(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why they cannot be used."""
    env_browser = os.environ.get("XRETRIEVE_CHROMIUM")
    env_driver = os.environ.get("XRETRIEVE_CHROMEDRIVER")
    browser = env_browser or _first(_BROWSERS)
    driver = env_driver or _first(_DRIVERS)
    missing = [
        what
        for what, path in (("chromium", browser), ("chromedriver", driver))
        if not path or not os.path.isfile(path)
    ]
    if missing:
        return (
            f"no {' or '.join(missing)} on this machine (Debian: apt-get install chromium "
            "chromium-driver; scripts/bootstrap.sh installs them)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the dev extra)"
    return str(browser), str(driver)


def require_browser() -> tuple[str, str]:
    """The browser and driver paths; skip (or fail, when the browser is required) without."""
    found = find_browser()
    if isinstance(found, str):
        if os.environ.get("XRETRIEVE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required (XRETRIEVE_REQUIRE_BROWSER=1) but {found}")
        pytest.skip(found)
    return found


def make_driver(
    *, paths: tuple[str, str] | None = None, width: int = 1280, height: int = 800
) -> Any:
    """A headless Chromium WebDriver with a fixed window size (`paths`: browser, driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = paths if paths is not None else require_browser()
    # Selenium Manager must never download a browser or driver.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        f"--window-size={width},{height}",
        "--no-sandbox",  # containers run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    # A light colour scheme, so that screenshots do not depend on the machine's setting.
    options.add_argument("--blink-settings=preferredColorScheme=1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver)
    drv = webdriver.Chrome(service=service, options=options)
    # --window-size counts the window's frame; the page itself gets exactly width x height.
    drv.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    drv.set_page_load_timeout(30)
    drv.set_script_timeout(30)
    return drv


@contextmanager
def running(app: Any, *, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and a free port in a thread; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Bound here and handed to uvicorn, so no other process can take the port in between.
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()

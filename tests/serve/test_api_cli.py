"""`xretrieve serve` as a real process: it serves, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("xretrieve")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "xretrieve.cli"]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("XRETRIEVE_TOKEN", None)
    return env


def test_serve_answers_then_stops_cleanly_on_ctrl_c(built_index: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [*_command(), "serve", "-i", f"demo={built_index}", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    assert json.load(r)["status"] == "ok"
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        req = urllib.request.Request(
            f"{base}/api/search",
            data=json.dumps({"text": "a red circle", "k": 2}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert len(json.load(r)["hits"]) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_serve_beyond_loopback_needs_a_token(built_index: Path) -> None:
    r = subprocess.run(
        [*_command(), "serve", "--index", str(built_index), "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert r.returncode == 2
    assert "warning" in r.stderr and "token" in r.stderr

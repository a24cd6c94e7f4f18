"""Hostile-input fixtures: a sandbox whose sibling "victim" folder must never change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox import Sandbox


@pytest.fixture()
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A work folder beside a victim folder; the test fails if the victim changed."""
    victim = tmp_path / "victim"
    for sub in ("", "readers", "shards", "lexical", "deep/er"):
        (victim / sub).mkdir(parents=True, exist_ok=True)
        (victim / sub / "precious.txt").write_text(f"do not touch {sub}\n")
    (victim / "manifest.json").write_text('{"not": "an index"}\n')
    work = tmp_path / "work"
    work.mkdir()
    box = Sandbox(work=work, victim=victim)
    before = box.victim_state()
    yield box
    assert box.victim_state() == before, "a file outside the sandbox changed"

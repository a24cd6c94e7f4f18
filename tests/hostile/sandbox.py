"""Helpers of the hostile-input tests: the state of a folder tree, one-line messages."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


def tree_state(root: Path) -> dict[str, str]:
    """Every entry under `root` (not following links): kind, mode, size and content hash."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p.relative_to(root))] = f"link:{os.readlink(p)}"
            elif p.is_file():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p.relative_to(root))] = f"file:{st.st_mode:o}:{st.st_size}:{digest}"
            else:
                out[str(p.relative_to(root))] = f"dir:{st.st_mode:o}"
    return out


@dataclass
class Sandbox:
    """`work` is where a test may write; `victim` holds files nothing may touch."""

    work: Path
    victim: Path

    def victim_state(self) -> dict[str, str]:
        return tree_state(self.victim)


def one_line(text: str) -> str:
    """The single non-empty line of `text`; fails if there are more (a traceback, say)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]

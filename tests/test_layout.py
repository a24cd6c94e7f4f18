"""The package's shape: what a search or a scan loads, module sizes, and error texts."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xretrieve"
#: A module past this many lines should be split (the layout's rule is "about 500").
MAX_LINES = 520
#: A command-line flag such as `--full`, as it would appear in a message.
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_loads_no_torch_and_no_training() -> None:
    out = _run(
        "import sys, xretrieve\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'faiss', 'open_clip') or m.startswith('xretrieve.train')))"
    )
    assert out == "[]"


def test_scanning_a_folder_loads_no_torch(media_dir: Path) -> None:
    out = _run(
        "import sys\n"
        "from xretrieve.media import scan_folder, decode_image, decode_audio\n"
        f"scan = scan_folder({str(media_dir)!r})\n"
        "assert scan.images and scan.captions\n"
        "decode_image(scan.images[0].path.read_bytes())\n"
        "print(len(scan.images), sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'faiss', 'open_clip', 'torchvision'}))"
    )
    n, loaded = out.split(" ", 1)
    assert int(n) > 0 and loaded == "[]"


def test_search_never_loads_training_code(built_index: Path) -> None:
    out = _run(
        "import sys, xretrieve\n"
        "enc = xretrieve.load_encoder('xr-tiny', pretrained=None, device='cpu')\n"
        "assert enc.dim > 0\n"
        f"idx = xretrieve.open_index({str(built_index)!r}, device='cpu')\n"
        "hits = idx.search('a red circle', k=3)\n"
        # what loading a model with an audio tower (trained or CLAP) imports
        "import xretrieve.encoders.audio_tower, xretrieve.encoders.clap\n"
        "assert len(hits) == 3, hits\n"
        "print(sorted(m for m in sys.modules if m.startswith('xretrieve.train')), "
        "'torch' in sys.modules)"
    )
    # torch is loaded (the encoder needs it), training code is not.
    assert out == "[] True"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_oversized(path: Path) -> None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {n} lines; split it by stage"


def _raised_strings(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            out += [
                c.value
                for c in ast.walk(node.exc)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
    return out


def test_library_errors_name_no_cli_flags() -> None:
    found = {}
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue  # the CLI is where flags belong
        flags = [s for s in _raised_strings(ast.parse(path.read_text())) if FLAG.search(s)]
        if flags:
            found[str(rel)] = flags
    assert found == {}


def test_flag_finder_finds_flags() -> None:
    # The check above must be able to fail: it sees a flag in a raised message.
    tree = ast.parse("def f():\n    raise ValueError(f'use --full to rebuild {x}')\n")
    assert [s for s in _raised_strings(tree) if FLAG.search(s)] == ["use --full to rebuild "]

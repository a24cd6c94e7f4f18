"""`--precision` through the real commands: what an index records, what a query loads.

A converted (bf16) index is searched without importing torch, and an unchanged re-index of
any index loads no model: both are checked in the real process, by what it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--model", "xr-tiny", "--pretrained", "none"]
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "'\\nLOADED torch=%s open_clip=%s\\n' % ('torch' in sys.modules, 'open_clip' in sys.modules)))\n"
    "from xretrieve.cli import main\n"
    "sys.argv = ['xretrieve', *sys.argv[1:]]\n"
    "main()\n"
)


def probe(*args: str | os.PathLike[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the CLI in a fresh process; return it and what it had imported at exit."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    loaded = [ln for ln in r.stderr.splitlines() if ln.startswith("LOADED")]
    return r, loaded[-1] if loaded else ""


def _top(stdout: str) -> list[str]:
    return [h["path"] for h in json.loads(stdout)]


@pytest.fixture(scope="module")
def bf16_index(world_dir: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("bf16") / "idx"
    r = cli("index", world_dir / "test", "--index", out, *TINY, "--precision", "bf16", "-q")
    assert r.returncode == 0, r.stderr
    return out


def test_index_records_its_precision_and_info_shows_it(bf16_index: Path, cli) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((bf16_index / "manifest.json").read_text())
    assert manifest["model"]["precision"] == "bf16"
    r = cli("info", bf16_index)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("precision"))
    assert "vectors made in bf16" in line and "fp32, bf16" in line


def test_converted_search_loads_no_torch_and_agrees_with_fp32(bf16_index: Path) -> None:
    r, loaded = probe("search", "a red circle", "--index", bf16_index, "-k", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert loaded == "LOADED torch=False open_clip=False", r.stderr
    fast = _top(r.stdout)
    r32, loaded32 = probe(
        "search", "a red circle", "--index", bf16_index, "-k", "5", "--json", "--precision", "fp32"
    )
    assert r32.returncode == 0, r32.stderr
    assert "torch=True" in loaded32  # fp32 is torch: the probe can tell the two apart
    assert len(fast) == 5 and fast[:3] == _top(r32.stdout)[:3]


def test_unchanged_reindex_loads_no_model(bf16_index: Path, world_dir: Path) -> None:
    r, loaded = probe("index", world_dir / "test", "--index", bf16_index, "-q", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["encoded"] == 0 and report["unchanged"] > 0
    assert loaded == "LOADED torch=False open_clip=False", r.stderr


def test_fp32_unchanged_reindex_loads_no_model(world_dir: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "idx"
    assert cli("index", world_dir / "test", "--index", out, *TINY, "-q").returncode == 0
    r, loaded = probe("index", world_dir / "test", "--index", out, "-q", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["encoded"] == 0
    assert loaded == "LOADED torch=False open_clip=False", r.stderr
    # A changed file does need the model, and gets it.
    img = sorted((world_dir / "test").glob("*.png"))[0]
    media = tmp_path / "media"
    media.mkdir()
    (media / img.name).write_bytes(img.read_bytes())
    r2, loaded2 = probe("index", media, "--index", tmp_path / "idx2", *TINY, "-q", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["encoded"] == 1 and "torch=True" in loaded2


def test_adding_in_another_precision_is_refused_in_one_line(
    bf16_index: Path, world_dir: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    before = (bf16_index / "manifest.json").read_bytes()
    r = cli("index", world_dir / "test", "--index", bf16_index, "--precision", "int8", "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "made in bf16, not int8" in lines[0] and "--full" in lines[0]
    assert (bf16_index / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--precision", "fp16", "--device", "cpu"], "fp16 runs on a CUDA GPU"),
        (["--precision", "int4"], "unknown precision 'int4'"),
    ],
)
def test_impossible_precisions_are_one_line_errors(
    bf16_index: Path, cli, args: list[str], phrase: str
) -> None:  # type: ignore[no-untyped-def]
    r = cli("search", "a red circle", "--index", bf16_index, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and phrase in lines[0], r.stderr

"""The real `xretrieve` command, run as a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

TINY = ["--model", "xr-tiny", "--pretrained", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def cli_index(world_dir: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> Path:  # type: ignore[no-untyped-def]
    idx = tmp_path_factory.mktemp("cli") / "idx"
    r = cli("index", world_dir / "test", "--index", idx, *TINY, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (
        report["images"] == len(list((world_dir / "test").glob("*.png"))) and report["failed"] == 0
    )
    return idx


def _one_line_error(r) -> str:  # type: ignore[no-untyped-def]
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_search_json_and_paths(cli_index: Path, world_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("search", "a large red circle", "--index", cli_index, "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3] and {h["modality"] for h in hits} == {"image"}
    probe = sorted((world_dir / "test").glob("*.png"))[2]
    r = cli("search", "--image", probe, "--index", cli_index, "-k", "2", "--paths")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and Path(lines[0]) == probe.resolve()


def test_search_table_and_caption(cli_index: Path, world_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("search", "a small blue square", "--index", cli_index, "-k", "2")
    assert r.returncode == 0 and "score" in r.stdout and ".png" in r.stdout
    probe = sorted((world_dir / "test").glob("*.png"))[0]
    r = cli("caption", probe, "--index", cli_index, "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    caps = json.loads(r.stdout)
    assert len(caps) == 3 and all(c["modality"] == "text" and c["caption"] for c in caps)


def test_info(cli_index: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("info", cli_index, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format_version"] == 1 and {s["modality"] for s in info["shards"]} == {
        "image",
        "text",
    }
    r = cli("info", cli_index, "--verify")
    assert r.returncode == 0 and "match" in r.stdout and "image-00000" in r.stdout


def test_bad_input_exit_codes(cli_index: Path, tmp_path: Path, world_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("index", tmp_path / "missing", "--index", tmp_path / "i", *TINY)
    assert r.returncode == 3 and "not found" in _one_line_error(r)
    (tmp_path / "empty").mkdir()
    r = cli("index", tmp_path / "empty", "--index", tmp_path / "i", *TINY)
    assert r.returncode == 3 and "nothing to index" in _one_line_error(r)
    r = cli("search", "   ", "--index", cli_index)
    assert r.returncode == 2 and "empty" in _one_line_error(r)
    r = cli("search", "x", "--index", cli_index, "-k", "0")
    assert r.returncode == 2 and "k must be" in _one_line_error(r)
    r = cli("search", "x", "--index", tmp_path / "no-index")
    assert r.returncode == 5 and "no index at" in _one_line_error(r)
    r = cli("caption", tmp_path / "nope.png", "--index", cli_index)
    assert r.returncode == 2 and "no such file" in _one_line_error(r)


def test_damaged_index_and_model_mismatch(cli_index: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy"
    shutil.copytree(cli_index, copy)
    (copy / "manifest.json").write_text('{"format": "xretrieve-index", "format_')
    r = cli("search", "x", "--index", copy)
    assert r.returncode == 5 and "damaged" in _one_line_error(r)
    r = cli(
        "search",
        "x",
        "--index",
        cli_index,
        "--model",
        "ViT-S-32",
        "--pretrained",
        "none",
        "--device",
        "cpu",
    )
    assert r.returncode == 4 and "not comparable" in _one_line_error(r)


def test_offline_pretrained_tag_fails_in_one_line(world_dir: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("index", world_dir / "test", "--index", tmp_path / "i")  # default: ViT-B-32 + laion tag
    line = _one_line_error(r)
    assert r.returncode == 4 and "no network" in line and "--pretrained /path" in line
    assert not (tmp_path / "i" / "manifest.json").exists()

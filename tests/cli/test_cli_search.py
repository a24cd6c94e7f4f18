"""The real `xretrieve search` / `caption` / `add-captions` commands with the query-layer options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def cli_index(built_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("clisearch") / "idx"
    shutil.copytree(built_index, dst)
    return dst


def _one_line_error(r) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_composed_hybrid_filtered_search_with_explain(
    cli_index: Path, world_dir: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    probe = sorted((world_dir / "test").glob("*.png"))[3]
    r = cli(
        "search", "--text", "a red circle", "--image", probe, "--weights", "0.01,1",
        "--not", "a blue square", "--index", cli_index, "-k", "3", "--json",
        "--hybrid", "--fusion", "convex", "--alpha", "0.9", "--rerank", "--mmr", "0.9",
        "--dedup", "0.9999", "--where", "width > 0", "--explain",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["path"] == probe.name
    assert "dense_score" in hits[0] and "lexical_score" in hits[0]
    for stage in ("encode", "filter", "ann", "lexical", "fusion", "rerank", "metadata"):
        assert stage in r.stderr


@pytest.mark.slow
def test_where_limits_results(cli_index: Path, world_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    name = sorted((world_dir / "test").glob("*.png"))[1].name
    r = cli(
        "search", "x", "--index", cli_index, "-k", "5", "--where", f"path = '{name}'", "--paths"
    )
    assert r.returncode == 0, r.stderr
    assert [Path(p).name for p in r.stdout.splitlines()] == [name]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--not", "people"], "only --not terms"),
        ([], "nothing to search for"),
        (["x", "--weights", "a"], "comma-separated numbers"),
        (["x", "--where", "colour = 'red'"], "unknown column colour; the metadata columns are"),
        # Options are checked before the model loads.
        (["x", "--fusion", "max"], "unknown fusion"),
        (["x", "-k", "0"], "k must be"),
        # These load the model first (~10 s each): run with the slow set.
        pytest.param(["x", "--where", "1; DROP TABLE x"], "not SQL statements", marks=SLOW),
        pytest.param(["x", "--where", "width >"], "not a valid SQL expression", marks=SLOW),
        pytest.param(["x", "--weights", "1,2"], "2 weights for 1 terms", marks=SLOW),
    ],
)
def test_bad_search_input_is_one_line(cli_index: Path, cli, args: list[str], match: str) -> None:  # type: ignore[no-untyped-def]
    line = _one_line_error(cli("search", *args, "--index", cli_index))
    assert match in line


@pytest.mark.slow
def test_corrupt_image_query(cli_index: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff nope")
    assert "bad.jpg" in _one_line_error(cli("search", "--image", bad, "--index", cli_index))


def test_add_captions_then_caption(cli_index: Path, world_dir: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    corpus = tmp_path / "caps.jsonl"
    corpus.write_text('{"caption": "a tiny green kite"}\n\n{"caption": "two red boats"}\n')
    r = cli("add-captions", corpus, "--index", cli_index, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["captions"] == 2 and report["skipped_blank"] == 1
    probe = sorted((world_dir / "test").glob("*.png"))[0]
    where = f"path = '{corpus.resolve()}'"
    r = cli("caption", probe, "--index", cli_index, "-k", "5", "--where", where, "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(h["caption"] for h in json.loads(r.stdout)) == [
        "a tiny green kite",
        "two red boats",
    ]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    assert "line 2 is not UTF-8" in _one_line_error(cli("add-captions", bad, "--index", cli_index))

"""Classes 1 and 3: a crafted manifest is reported damaged, in one line, and used for nothing.

Shard and file names that leave the index, fields of the wrong type or range, JSON that
breaks the parser: each is `IndexCorruptError` (exit 5) before any file is opened by them,
and the message names no other file's size.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox import Sandbox, one_line

from xretrieve import store
from xretrieve.errors import IndexCorruptError

TINY = ("--model", "xr-tiny", "--pretrained", "none", "--device", "cpu")
Mutation = Callable[[dict[str, Any], Sandbox], None]


def _copy_index(built_index: Path, dst: Path) -> Path:
    shutil.copytree(built_index, dst, ignore=shutil.ignore_patterns(".lock", "*.pin"))
    return dst


def _edit(idx: Path, mutate: Mutation, box: Sandbox) -> None:
    m = json.loads((idx / "manifest.json").read_text())
    mutate(m, box)
    (idx / "manifest.json").write_text(json.dumps(m))


def _set(path: str, value: Any) -> Mutation:
    """Set the field at a dotted path (`shards.0.rows`) to `value`."""

    def mutate(m: dict[str, Any], box: Sandbox) -> None:
        *head, last = path.split(".")
        node: Any = m
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        v = value(box) if callable(value) else value
        if isinstance(node, list):
            node[int(last)] = v
        else:
            node[last] = v

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(m: dict[str, Any], box: Sandbox) -> None:
        *head, last = path.split(".")
        node: Any = m
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        del node[last]

    return mutate


#: Names that leave the index or are not the index's own.
ESCAPING_NAMES: dict[str, Mutation] = {
    "shard ../..": _set("shards.0.name", "../../victim/x"),
    "shard absolute": _set("shards.0.name", lambda b: str(b.victim / "x")),
    "shard NUL": _set("shards.0.name", "image-00000\0x"),
    "shard other modality": _set("shards.0.name", "text-00000"),
    "index file ../..": _set("shards.0.index_file.name", "../../victim/precious.txt"),
    "index file absolute": _set(
        "shards.0.index_file.name", lambda b: str(b.victim / "precious.txt")
    ),
    "meta file absolute": _set("shards.0.meta_file.name", lambda b: str(b.victim / "precious.txt")),
    "meta file ../..": _set("shards.0.meta_file.name", "../../../victim/precious.txt"),
    "meta file NUL": _set("shards.0.meta_file.name", "a\0b.parquet"),
    "meta file of another shard": _set("shards.0.meta_file.name", "image-09999.g1.parquet"),
    "deleted ../..": _set(
        "shards.0.deleted",
        {"name": "../../victim/precious.txt", "bytes": 14, "sha256": "0" * 64},
    ),
}

#: Fields of the wrong type, range or size.
BAD_FIELDS: dict[str, Mutation] = {
    "rows a string": _set("shards.0.rows", "x"),
    "rows negative": _set("shards.0.rows", -1),
    "rows huge": _set("shards.0.rows", 2**70),
    "rows a bool": _set("shards.0.rows", True),
    "dim 10**9": _set("dim", 10**9),
    "dim 0": _set("dim", 0),
    "dim a float": _set("dim", 32.5),
    "ann a list": _set("shards.0.ann", [1, 2]),
    "ann recall a string": _set("shards.0.ann.recall", "high"),
    "generation a string": _set("generation", "7"),
    "generation negative": _set("generation", -3),
    "format_version a list": _set("format_version", [1]),
    "shards a mapping": _set("shards", {"a": 1}),
    "shard a string": _set("shards.0", "image-00000"),
    "shard without rows": _drop("shards.0.rows"),
    "shard with an unknown key": _set("shards.0.evil", 1),
    "file bytes negative": _set("shards.0.index_file.bytes", -1),
    "sha256 short": _set("shards.0.meta_file.sha256", "abc"),
    "deleted rows over rows": _set("shards.0.deleted_rows", 10**6),
    "partition key bogus": _set("shards.0.partition.key", "path; drop"),
    "partition stats a list": _set("shards.0.partition.stats", [1]),
    "model a list": _set("model", ["xr-tiny"]),
    "model without name": _drop("model.name"),
    "metric unknown": _set("metric", "l2"),
    "created_at NaN": _set("created_at", float("nan")),
    "duplicate shard": lambda m, b: m["shards"].append(copy.deepcopy(m["shards"][0])),
    "root a number": _set("root", 5),
}

#: Manifest texts that break the JSON reader itself.
BAD_TEXTS: dict[str, bytes] = {
    "deep nesting": b'{"format": "xretrieve-index", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge int": b'{"format": "xretrieve-index", "generation": ' + b"9" * 10_000 + b"}",
    "not UTF-8": b'{"format": "xretrieve-index", "root": "\xff\xfe"}',
    "a list": b"[1, 2, 3]",
    "truncated": b'{"format": "xretrieve-index", "shards": [',
}


def _assert_damaged(idx: Path) -> str:
    with pytest.raises(IndexCorruptError) as e:
        store.read_manifest(idx)
    msg = str(e.value)
    assert "\n" not in msg and "index damaged" in msg, msg
    assert re.search(r"\d+ bytes", msg) is None, msg  # no size of any file
    return msg


@pytest.mark.parametrize("case", sorted(ESCAPING_NAMES))
def test_names_that_leave_the_index_are_damage(
    sandbox: Sandbox, built_index: Path, case: str
) -> None:
    idx = _copy_index(built_index, sandbox.work / "idx")
    _edit(idx, ESCAPING_NAMES[case], sandbox)
    _assert_damaged(idx)


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_fields_of_the_wrong_type_or_range_are_damage(
    sandbox: Sandbox, built_index: Path, case: str
) -> None:
    idx = _copy_index(built_index, sandbox.work / "idx")
    _edit(idx, BAD_FIELDS[case], sandbox)
    _assert_damaged(idx)


@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_text_that_breaks_json_is_damage(sandbox: Sandbox, built_index: Path, case: str) -> None:
    idx = _copy_index(built_index, sandbox.work / "idx")
    (idx / "manifest.json").write_bytes(BAD_TEXTS[case])
    with pytest.raises(IndexCorruptError) as e:
        store.read_manifest(idx)
    assert "\n" not in str(e.value)


def test_a_huge_or_linked_manifest_is_refused_without_reading_it(
    sandbox: Sandbox, built_index: Path
) -> None:
    idx = _copy_index(built_index, sandbox.work / "idx")
    (idx / "manifest.json").unlink()
    (idx / "manifest.json").symlink_to(sandbox.victim / "manifest.json")
    assert "symbolic link" in _assert_damaged(idx)
    (idx / "manifest.json").unlink()
    with (idx / "manifest.json").open("wb") as f:  # sparse: costs no disk
        f.truncate(1 << 40)
    with pytest.raises(IndexCorruptError, match=r"manifest.json holds \d+ bytes, more than"):
        store.read_manifest(idx)


@pytest.mark.parametrize(
    "case", ["shard ../..", "index file absolute", "meta file ../..", "shard NUL"]
)
def test_cli_reports_escaping_names_as_damage_and_a_rebuild_replaces_them(
    sandbox: Sandbox, built_index: Path, world_dir: Path, cli, case: str
) -> None:  # type: ignore[no-untyped-def]
    idx = _copy_index(built_index, sandbox.work / "idx")
    _edit(idx, ESCAPING_NAMES[case], sandbox)
    parent = sandbox.work.parent
    around = sorted(p.name for p in parent.iterdir())
    media = sandbox.work / "media"
    media.mkdir()
    shutil.copy(next((world_dir / "test").glob("*.png")), media / "a.png")
    search = ("search", "red circle", "--index", idx, "-k", "3", *TINY)
    for args in (
        (*search, "--hybrid"),
        (*search, "--where", "width > 0"),
        ("info", idx),
    ):
        r = cli(*args)
        assert r.returncode == 5, (args[0], r.stderr)
        line = one_line(r.stderr)
        assert "index damaged" in line, line
        assert re.search(r"\d+ bytes", line) is None, line
    # A writer replaces a damaged manifest with its next generation (as for any damage),
    # inside the index only.
    r = cli("index", media, "--index", idx, *TINY)
    assert r.returncode == 0, r.stderr
    r = cli(*search)
    assert r.returncode == 0 and "a.png" in r.stdout, r.stderr
    assert sorted(p.name for p in parent.iterdir()) == around  # nothing created beside work
    assert not (sandbox.victim / "x").exists()


@pytest.mark.parametrize("case", ["rows a string", "dim 10**9", "ann a list", "rows negative"])
def test_cli_reports_bad_fields_in_one_line(
    sandbox: Sandbox, built_index: Path, cli, case: str
) -> None:  # type: ignore[no-untyped-def]
    idx = _copy_index(built_index, sandbox.work / "idx")
    _edit(idx, BAD_FIELDS[case], sandbox)
    r = cli("search", "red circle", "--index", idx, *TINY)
    assert r.returncode == 5, r.stderr
    assert "index damaged" in one_line(r.stderr)

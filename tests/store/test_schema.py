"""The manifest schema: what xretrieve writes passes, and each rule names its field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from xretrieve.errors import IndexCorruptError
from xretrieve.store.schema import validate_manifest


def _manifest(built_index: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((built_index / "manifest.json").read_text())
    return data


def test_a_written_manifest_passes(built_index: Path) -> None:
    m = _manifest(built_index)
    validate_manifest(m)
    # A shard with a list of deleted rows (format 2), and one without partition.
    s = m["shards"][0]
    gen = s["index_file"]["name"].split(".g")[1].split(".")[0]
    s["deleted"] = {"name": f"{s['name']}.g{gen}.deleted.npy", "bytes": 136, "sha256": "a" * 64}
    s["deleted_rows"] = 1
    m["format_version"] = 2
    del m["shards"][-1]["partition"]
    validate_manifest(m)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("dim", 65_537, "dim"),
        ("generation", 1.5, "generation"),
        ("shards.0.rows", -1, "shards[0].rows"),
        ("shards.0.index_file.bytes", "12", "shards[0].index_file.bytes"),
        ("shards.0.ann", [], "shards[0].ann"),
        ("shards.0.partition.stats.width", {"min": "a", "max": 1}, "shards[0].partition.stats"),
        ("shards.0.index_file.name", "image-00000.g999999.faiss", "shards[0].index_file.name"),
    ],
)
def test_each_rule_names_its_field(built_index: Path, field: str, value: Any, named: str) -> None:
    m = copy.deepcopy(_manifest(built_index))
    *head, last = field.split(".")
    node: Any = m
    for k in head:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[last] = value
    with pytest.raises(IndexCorruptError) as e:
        validate_manifest(m, where="M")
    msg = str(e.value)
    assert msg.startswith(f"M: index damaged: {named}"), msg
    assert "\n" not in msg

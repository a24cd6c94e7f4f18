"""The manifest's schema: every field's type, range and size, checked before anything uses it.

A manifest may come from someone else, so `validate_manifest` checks the parsed JSON as a
whole before a `Manifest` is built from it: a wrong type, an out-of-range number, an unknown
key or a name the index would not make is `IndexCorruptError` with one line naming the field
(`shards[3].rows: ...`). What passes can be used without further checks: counts are
non-negative ints that add up, the dimension is 1..65,536, `ann` and `partition` are mappings
of plain values, every file name is one this index makes for its shard (so it resolves inside
`shards/`), and no two shards share a name or a file.

Plain typed checks, no schema library: the rules are few, and a search must not pay for
importing one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from xretrieve._types import MODALITIES, PRECISIONS
from xretrieve.errors import IndexCorruptError
from xretrieve.store.filecheck import MAX_DIM, MAX_ROWS
from xretrieve.store.safety import check_shard_file, check_shard_name

__all__ = ["MAX_SHARDS", "validate_manifest"]

#: More shards than this is not a manifest xretrieve wrote.
MAX_SHARDS = 1_000_000
_MAX_GENERATION = 1 << 62
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOP_KEYS = {
    "format", "format_version", "generation", "root", "model", "dim", "metric", "shards",
    "created_at", "updated_at", "stats",
}  # fmt: skip
_SHARD_REQUIRED = {"name", "modality", "rows", "index_file", "meta_file", "index_type"}
_SHARD_OPTIONAL = {"ann", "partition", "deleted", "deleted_rows"}
_FILE_KEYS = {"name", "bytes", "sha256"}
# TunedParams' fields (see `xretrieve.store.ann`): ints, ratios and a flag.
_ANN_INTS = ("nprobe", "ef_search", "oversample", "k", "n_queries")
_ANN_RATIOS = ("target_recall", "recall")
# Partition keys and the columns whose min/max a shard records (`manifest.PARTITION_KEYS`,
# `manifest.STATS_COLUMNS`; written out here so the schema does not import the manifest).
_PARTITION_KEYS = ("none", "folder", "year")
_STATS_COLUMNS = ("mtime", "width", "height", "bytes", "year", "duration")


class _Bad(Exception):
    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


def _type_name(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _int(v: object, where: str, lo: int, hi: int) -> int:
    # bool is an int to Python, not to JSON's reader of a count.
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Bad(where, f"expected an integer, got {_type_name(v)}")
    if not lo <= v <= hi:
        raise _Bad(where, f"{v} is outside {lo}..{hi}")
    return v


def _number(v: object, where: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise _Bad(where, f"expected a finite number, got {_type_name(v)}")
    return float(v)


def _str(v: object, where: str, *, max_len: int = 4096) -> str:
    if not isinstance(v, str):
        raise _Bad(where, f"expected a string, got {_type_name(v)}")
    if len(v) > max_len:
        raise _Bad(where, f"a string of {len(v)} characters (at most {max_len})")
    return v


def _mapping(v: object, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _Bad(where, f"expected a mapping, got {_type_name(v)}")
    return v


def _keys(d: Mapping[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - d.keys())
    if missing:
        raise _Bad(where, f"missing {', '.join(missing)}")
    unknown = sorted(d.keys() - required - optional)
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in unknown[:3])
        raise _Bad(where, f"unknown key{'s' if len(unknown) > 1 else ''} {shown}")


def _scalar(v: object, where: str) -> None:
    if v is None or isinstance(v, (bool, str)):
        if isinstance(v, str):
            _str(v, where)
        return
    _number(v, where)


def _file(v: object, where: str, *, shard: str, kind: str, generation: int) -> str:
    f = _mapping(v, where)
    _keys(f, where, _FILE_KEYS, set())
    try:
        gen = check_shard_file(f["name"], shard=shard, kind=kind)
    except IndexCorruptError as e:
        raise _Bad(f"{where}.name", str(e).removeprefix("index damaged: ")) from None
    if gen > generation:
        raise _Bad(f"{where}.name", f"written by generation {gen}, after this one ({generation})")
    _int(f["bytes"], f"{where}.bytes", 0, 1 << 50)
    if not isinstance(f["sha256"], str) or not _SHA256.fullmatch(f["sha256"]):
        raise _Bad(f"{where}.sha256", "expected 64 lowercase hex digits")
    return str(f["name"])


def _ann(v: object, where: str) -> None:
    a = _mapping(v, where)
    for k, x in a.items():
        at = f"{where}.{k[:40]}"
        if k in _ANN_INTS:
            _int(x, at, 0, 1 << 31)
        elif k in _ANN_RATIOS:
            if not 0.0 <= _number(x, at) <= 1.0:
                raise _Bad(at, "expected a ratio in 0..1")
        elif k == "reached":
            if not isinstance(x, bool):
                raise _Bad(at, f"expected true or false, got {_type_name(x)}")
        else:
            _scalar(x, at)


def _partition(v: object, where: str) -> None:
    if v is None:
        return
    p = _mapping(v, where)
    if not p:
        return
    _keys(p, where, {"key"}, {"value", "stats"})
    if p["key"] not in _PARTITION_KEYS:
        raise _Bad(f"{where}.key", f"expected one of {', '.join(_PARTITION_KEYS)}")
    value = p.get("value")
    if isinstance(value, (dict, list)):
        raise _Bad(f"{where}.value", f"expected a plain value, got {_type_name(value)}")
    _scalar(value, f"{where}.value")
    stats = _mapping(p.get("stats") or {}, f"{where}.stats")
    for col, mm in stats.items():
        at = f"{where}.stats.{col[:40]}"
        if col not in _STATS_COLUMNS:
            raise _Bad(at, "not a column whose range a shard records")
        m = _mapping(mm, at)
        _keys(m, at, {"min", "max"}, set())
        for bound in ("min", "max"):
            x = m[bound]
            if col == "mtime":
                if x is not None:
                    _str(x, f"{at}.{bound}", max_len=64)
            elif x is not None:
                _number(x, f"{at}.{bound}")


def _shard(v: object, where: str, *, generation: int, names: set[str], files: set[str]) -> int:
    s = _mapping(v, where)
    _keys(s, where, _SHARD_REQUIRED, _SHARD_OPTIONAL)
    if s["modality"] not in MODALITIES:
        raise _Bad(f"{where}.modality", f"expected one of {', '.join(MODALITIES)}")
    try:
        name = check_shard_name(s["name"], modality=s["modality"])
    except IndexCorruptError as e:
        raise _Bad(f"{where}.name", str(e).removeprefix("index damaged: ")) from None
    if name in names:
        raise _Bad(f"{where}.name", f"shard {name} is listed twice")
    names.add(name)
    rows = _int(s["rows"], f"{where}.rows", 0, MAX_ROWS)
    kw = {"shard": name, "generation": generation}
    owned = [
        _file(s["index_file"], f"{where}.index_file", kind="faiss", **kw),  # type: ignore[arg-type]
        _file(s["meta_file"], f"{where}.meta_file", kind="parquet", **kw),  # type: ignore[arg-type]
    ]
    deleted_rows = _int(s.get("deleted_rows", 0), f"{where}.deleted_rows", 0, rows)
    if s.get("deleted") is not None:
        owned.append(_file(s["deleted"], f"{where}.deleted", kind="deleted.npy", **kw))  # type: ignore[arg-type]
    elif deleted_rows:
        raise _Bad(f"{where}.deleted_rows", f"{deleted_rows} rows deleted but no list of them")
    for f in owned:
        if f in files:
            raise _Bad(where, f"file {f} belongs to two shards")
        files.add(f)
    _str(s["index_type"], f"{where}.index_type", max_len=256)
    _ann(s.get("ann", {}), f"{where}.ann")
    _partition(s.get("partition"), f"{where}.partition")
    return rows


def _validate(d: object) -> None:
    top = _mapping(d, "manifest")
    _keys(top, "manifest", _TOP_KEYS - {"stats"}, {"stats"})
    if top["format"] != "xretrieve-index":
        raise _Bad("format", "not an xretrieve index manifest")
    _int(top["format_version"], "format_version", 1, 1 << 16)
    generation = _int(top["generation"], "generation", 0, _MAX_GENERATION)
    _str(top["root"], "root")
    model = _mapping(top["model"], "model")
    for key in ("name", "fingerprint"):
        _str(model.get(key), f"model.{key}", max_len=512)
    if model.get("precision", "fp32") not in PRECISIONS:
        raise _Bad("model.precision", f"expected one of {', '.join(PRECISIONS)}")
    _int(top["dim"], "dim", 1, MAX_DIM)
    if top["metric"] != "inner_product":
        raise _Bad("metric", "expected inner_product")
    _number(top["created_at"], "created_at")
    _number(top["updated_at"], "updated_at")
    _mapping(top.get("stats", {}), "stats")
    shards = top["shards"]
    if not isinstance(shards, list):
        raise _Bad("shards", f"expected a list, got {_type_name(shards)}")
    if len(shards) > MAX_SHARDS:
        raise _Bad("shards", f"{len(shards)} shards (at most {MAX_SHARDS})")
    names: set[str] = set()
    files: set[str] = set()
    total = 0
    for i, s in enumerate(shards):
        total += _shard(s, f"shards[{i}]", generation=generation, names=names, files=files)
    if total > MAX_ROWS:
        raise _Bad("shards", f"{total} rows in all (at most {MAX_ROWS})")


def validate_manifest(d: object, *, where: object = "manifest.json") -> None:
    """Refuse with `IndexCorruptError` parsed manifest JSON that breaks the schema (one line)."""
    try:
        _validate(d)
    except _Bad as e:
        raise IndexCorruptError(f"{where}: index damaged: {e}") from None

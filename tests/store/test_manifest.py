"""What the manifest says: metadata rows built in one place, the model-compatibility check."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from xretrieve import store
from xretrieve.errors import IndexStoreError, ModelMismatchError


def _us(*ymd_hms: int) -> int:
    return int(datetime(*ymd_hms, tzinfo=timezone.utc).timestamp()) * 1_000_000


def test_metadata_row_derives_folder_and_year() -> None:
    row = store.metadata_row(
        path="trips/rome/a.png",
        modality="image",
        bytes=10,
        mtime_us=_us(2019, 12, 31, 23, 59, 59) + 999_999,
        content_hash="h",
        width=3,
    )
    assert row["folder"] == "trips" and row["year"] == 2019 and row["width"] == 3
    assert set(row) == set(store.METADATA_SCHEMA.names)
    assert row["caption"] is None and row["line"] is None
    at_root = store.metadata_row(
        path="b.png", modality="image", bytes=1, mtime_us=_us(2020, 1, 1), content_hash="h"
    )
    assert at_root["folder"] == "" and at_root["year"] == 2020
    with pytest.raises(IndexStoreError, match="colour"):
        store.metadata_row(
            path="c.png", modality="image", bytes=1, mtime_us=0, content_hash="h", colour="red"
        )


def test_metadata_table_has_the_schema_and_keeps_values() -> None:
    rows = [
        store.metadata_row(
            path=f"d/{i}.txt",
            modality="text",
            bytes=i,
            mtime_us=_us(2021, 5, 1) + i,
            content_hash=f"h{i}",
            caption=f"cap {i}",
            line=i,
        )
        for i in range(3)
    ]
    t = store.metadata_table(rows)
    assert t.schema.equals(store.METADATA_SCHEMA)
    assert t.column("caption").to_pylist() == ["cap 0", "cap 1", "cap 2"]
    assert t.column("line").to_pylist() == [0, 1, 2]
    assert t.column("year").to_pylist() == [2021] * 3
    assert t.column("folder").to_pylist() == ["d"] * 3
    mtimes = t.column("mtime").cast(pa.int64()).to_pylist()
    assert mtimes == [_us(2021, 5, 1) + i for i in range(3)]  # microseconds, exactly
    assert t.column("width").null_count == 3
    assert store.metadata_table([]).num_rows == 0


def test_metadata_columns_fills_nulls_casts_and_checks_lengths() -> None:
    t = store.metadata_columns(
        {"path": ["x", "y"], "bytes": pa.array([1, 2], pa.int32()), "modality": ["text"] * 2}, 2
    )
    assert t.schema.equals(store.METADATA_SCHEMA)
    assert t.column("bytes").type == pa.int64() and t.column("bytes").to_pylist() == [1, 2]
    assert t.column("folder").null_count == 2  # not derived: the caller says what it knows
    assert t.column("shard").to_pylist() == ["", ""]  # placeholders the writer replaces
    with pytest.raises(IndexStoreError, match="3 rows, not 2"):
        store.metadata_columns({"path": ["x", "y", "z"]}, 2)
    with pytest.raises(IndexStoreError, match="no metadata column named nope"):
        store.metadata_columns({"nope": [1, 2]}, 2)


def _manifest(tmp_path: Path, *modalities: str, audio_fp: str | None = "a1") -> store.Manifest:
    payloads = []
    for m in modalities:
        v = np.eye(4, dtype=np.float32)[:2]
        rows = [
            store.metadata_row(path=f"{i}", modality=m, bytes=0, mtime_us=0, content_hash="h")  # type: ignore[arg-type]
            for i in range(2)
        ]
        payloads.append(store.ShardPayload(m, v, store.metadata_table(rows)))  # type: ignore[arg-type]
    model = {"name": "m", "fingerprint": "f1", "audio_fingerprint": audio_fp}
    return store.write_generation(tmp_path, root="/r", model=model, dim=4, payloads=payloads)


def test_check_model_accepts_the_same_weights_and_refuses_others(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "image", "text")
    same = {"name": "copy-of-m", "fingerprint": "f1", "audio_fingerprint": "other"}
    store.check_model(m, same, where=tmp_path)  # no audio shards: the audio tower is free
    with pytest.raises(ModelMismatchError, match="not comparable") as e:
        store.check_model(m, {"name": "n", "fingerprint": "f2"}, where=tmp_path)
    assert str(tmp_path) in str(e.value) and "f1" in str(e.value) and "f2" in str(e.value)


def test_check_model_checks_the_audio_tower_when_the_index_holds_audio(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "image", "audio")
    other_audio = {"name": "m2", "fingerprint": "f1", "audio_fingerprint": "a2"}
    with pytest.raises(ModelMismatchError, match="audio"):
        store.check_model(m, other_audio, where=tmp_path)
    store.check_model(m, other_audio, where=tmp_path, audio=False)  # text/images only
    store.check_model(m, {**other_audio, "audio_fingerprint": "a1"}, where=tmp_path)

"""Indexing a folder: counts, bad files, reuse of vectors, model mismatch."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from xretrieve import store
from xretrieve.encoders import Encoder, load_encoder
from xretrieve.errors import FolderError, ModelMismatchError
from xretrieve.indexer import IndexOptions, bounded_map, index_folder

OPTS = IndexOptions(progress=False, batch_size=8)


def _count_encoded(monkeypatch: pytest.MonkeyPatch, enc: Encoder) -> list[int]:
    calls: list[int] = []
    orig = enc.encode_pixels

    def counting(pixels):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return orig(pixels)

    monkeypatch.setattr(enc, "encode_pixels", counting)
    return calls


def _rows(idx: Path) -> list[dict]:  # type: ignore[type-arg]
    m = store.read_manifest(idx)
    return [r for info in m.shards for r in store.read_metadata(idx, info).to_pylist()]


def test_index_counts_images_and_captions(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    n_images = len(list(media_dir.glob("*.png")))
    n_captions = sum(len(p.read_text().splitlines()) for p in media_dir.glob("*.txt"))
    report = index_folder(media_dir, tmp_path / "idx", encoder=tiny_encoder, options=OPTS)
    assert (report.images, report.texts, report.failed) == (n_images, n_captions, 0)
    m = store.read_manifest(tmp_path / "idx")
    assert m.rows_by_modality() == {"image": n_images, "text": n_captions}
    assert m.model["fingerprint"] == tiny_encoder.spec.fingerprint
    shard = store.load_shard(tmp_path / "idx", next(s for s in m.shards if s.modality == "text"))
    row = shard.metadata.slice(0, 1).to_pylist()[0]
    assert row["image_path"].endswith(".png") and row["caption"]
    images = store.load_shard(tmp_path / "idx", m.shards[0]).metadata
    assert images.column("caption").null_count == 0  # images carry their sidecar caption
    assert set(images.column("width").to_pylist()) == {32}


def test_bad_files_are_reported_and_the_rest_indexed(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    good = len(list(media_dir.glob("*.png")))
    (media_dir / "zero.png").write_bytes(b"")
    (media_dir / "text_named.jpg").write_text("I am not a JPEG")
    data = next(media_dir.glob("*.png")).read_bytes()
    (media_dir / "truncated.png").write_bytes(data[: len(data) // 3])
    (media_dir / "bad_caption.txt").write_bytes(b"caf\xe9\n")
    report = index_folder(media_dir, tmp_path / "idx", encoder=tiny_encoder, options=OPTS)
    assert report.images == good
    assert report.failed == 4
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert reasons["zero.png"] == "empty file"
    assert "not a recognised image" in reasons["text_named.jpg"]
    assert "cannot decode" in reasons["truncated.png"]
    assert "UTF-8" in reasons["bad_caption.txt"]


def test_rerun_reuses_and_tracks_changes(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = tmp_path / "idx"
    first = index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    calls = _count_encoded(monkeypatch, tiny_encoder)

    again = index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    assert calls == [] and again.unchanged == first.images + first.texts
    assert again.generation == first.generation  # nothing changed, nothing rewritten

    pngs = sorted(media_dir.glob("*.png"))
    pngs[0].rename(media_dir / "renamed.png")  # same bytes, new path: vector reused
    shutil.copy(pngs[1], media_dir / "copy.png")  # duplicate: vector reused
    pngs[2].unlink()  # removed
    os.utime(pngs[3], ns=(1, 1))  # touched, same bytes: re-hashed, vector reused
    run = index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    assert calls == []
    # The sidecars of the renamed and deleted images lost their image: re-read, vectors reused.
    orphan_lines = sum(
        len(p.with_suffix(".txt").read_text().splitlines()) for p in (pngs[0], pngs[2])
    )
    assert (run.indexed, run.updated, run.removed) == (2, 1, 2)
    assert run.reused == 3 + orphan_lines and run.encoded == 0
    assert run.images == first.images
    rows = _rows(idx)
    images = sorted(r["path"] for r in rows if r["modality"] == "image")
    assert images == sorted(p.name for p in media_dir.glob("*.png"))
    orphans = {p.with_suffix(".txt").name for p in (pngs[0], pngs[2])}
    assert all(r["image_path"] is None for r in rows if r["path"] in orphans)

    full = index_folder(
        media_dir, idx, encoder=tiny_encoder, options=IndexOptions(progress=False, full=True)
    )
    distinct = {hashlib.sha256(p.read_bytes()).digest() for p in media_dir.glob("*.png")}
    assert full.images == len(distinct) + 1  # copy.png duplicates another image
    assert sum(calls) == len(distinct)  # --full re-encodes, but each content once
    assert full.indexed == full.images + full.texts and full.removed == 0


def test_other_model_on_existing_index_is_refused(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    idx = tmp_path / "idx"
    index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    before = store.read_manifest(idx)
    other = load_encoder("xr-tiny", pretrained=None, device="cpu")
    with __import__("torch").no_grad():
        next(other.model.parameters()).add_(1.0)
    other.spec = type(other.spec)(**{**other.spec.to_dict(), "fingerprint": "different"})
    with pytest.raises(ModelMismatchError, match="--full"):
        index_folder(media_dir, idx, encoder=other, options=OPTS)
    assert store.read_manifest(idx) == before


def test_missing_and_empty_folders(tiny_encoder: Encoder, tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="not found"):
        index_folder(tmp_path / "nope", tmp_path / "idx", encoder=tiny_encoder, options=OPTS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no media")
    with pytest.raises(FolderError, match="nothing to index"):
        index_folder(tmp_path / "empty", tmp_path / "idx", encoder=tiny_encoder, options=OPTS)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    with pytest.raises(FolderError, match="all 1 files failed"):
        index_folder(tmp_path / "bad", tmp_path / "idx", encoder=tiny_encoder, options=OPTS)
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_bounded_map_keeps_order_and_window() -> None:
    import threading
    import time

    live = 0
    peak = 0
    lock = threading.Lock()

    def slow(i: int) -> int:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        time.sleep(0.001 * (i % 3))
        with lock:
            live -= 1
        return i * i

    assert list(bounded_map(slow, range(50), workers=4, window=6)) == [i * i for i in range(50)]
    assert peak <= 6

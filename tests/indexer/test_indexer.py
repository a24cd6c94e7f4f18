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
from xretrieve.indexer import IndexOptions, index_folder

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
    with pytest.raises(ModelMismatchError, match=r"not comparable.*rebuild the index"):
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


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb in a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_every_bad_file_kind_is_reported_and_counted(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = len(list(media_dir.glob("*.png")))
    first = sorted(media_dir.glob("*.png"))[0]
    data = first.read_bytes()
    (media_dir / "zero.png").write_bytes(b"")
    (media_dir / "truncated.png").write_bytes(data[: len(data) // 2])
    (media_dir / "named.jpg").write_bytes(data)  # a PNG named .jpg: decodes fine
    (media_dir / "garbage.webp").write_bytes(b"\x00\x01garbage" * 50)
    (media_dir / "bomb.png").write_bytes(_png_header(40_000, 40_000))
    (media_dir / "photo.heic").write_bytes(b"ftypheic")  # no plugin here: a clear note
    os.symlink("missing-target.png", media_dir / "broken-link.png")
    (media_dir / "loop").mkdir()
    os.symlink(media_dir, media_dir / "loop" / "again")  # a symlinked folder: not followed
    locked = media_dir / "locked"
    locked.mkdir()
    shutil.copy(first, locked / "hidden.png")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.fspath(path).endswith("/locked"):  # root ignores chmod 000: simulate it
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index_folder(media_dir, tmp_path / "idx", encoder=tiny_encoder, options=OPTS)
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert reasons["zero.png"] == "empty file"
    assert "cannot decode" in reasons["truncated.png"]
    assert "not a recognised image" in reasons["garbage.webp"]
    assert "too many pixels" in reasons["bomb.png"]
    assert "heic" in reasons["photo.heic"] or "photo.heic" not in reasons
    assert "cannot stat" in reasons["broken-link.png"]
    assert "cannot read folder" in reasons["locked"]
    assert report.failed == len(report.problems) == len(reasons)
    assert report.images == good + 1  # named.jpg is an image whatever its name
    assert report.to_dict()["failed"] == report.failed


def test_unusual_and_non_utf8_names_round_trip(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    src = next(media_dir.glob("*.png")).read_bytes()
    names = [b"caf\xe9 \xff.png", "été ☃ photo.png".encode(), b"new\nline.png", b"-dash.png"]
    for raw in names:
        with open(os.fsencode(media_dir) + b"/" + raw, "wb") as f:
            f.write(src)
    idx = tmp_path / "idx"
    report = index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    assert report.failed == 0
    rows = [r for r in _rows(idx) if r["modality"] == "image"]
    found = set()
    for r in rows:
        rel = os.fsdecode(r["path_bytes"]) if r["path_bytes"] is not None else r["path"]
        assert (media_dir / rel).is_file(), r["path"]
        found.add(os.fsencode(rel))
    assert set(names) <= found
    shown = {r["path"] for r in rows}
    assert "caf\\xe9 \\xff.png" in shown  # the display form stays valid UTF-8
    again = index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    assert again.unchanged == report.images + report.texts and again.commits == 0


def test_reindexing_keeps_an_added_caption_corpus(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    from xretrieve.indexer.corpus import add_captions

    idx = tmp_path / "idx"
    index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a purple moon over the sea\na green kite\n")
    add_captions(idx, corpus, encoder=tiny_encoder)

    def corpus_rows() -> int:
        m = store.read_manifest(idx)
        return sum(
            store.read_metadata(idx, s, columns=("path",))
            .column("path")
            .to_pylist()
            .count(str(corpus))
            for s in m.shards
            if s.modality == "text"
        )

    assert corpus_rows() == 2
    next(media_dir.glob("*.png")).unlink()  # a change in the folder: a new generation lands
    run = index_folder(media_dir, idx, encoder=tiny_encoder, options=OPTS)
    assert run.removed == 1 and corpus_rows() == 2
    index_folder(
        media_dir, idx, encoder=tiny_encoder, options=IndexOptions(progress=False, full=True)
    )
    assert corpus_rows() == 2


def test_caption_lines_split_across_shards_survive_a_rerun(
    tiny_encoder: Encoder, world_dir: Path, tmp_path: Path
) -> None:
    # Train sidecars hold 3 lines; shards of 4 rows split a file's lines across two shards.
    folder = tmp_path / "media"
    folder.mkdir()
    for src in sorted((world_dir / "train").glob("*.png"))[:4]:
        shutil.copy(src, folder / src.name)
        shutil.copy(src.with_suffix(".txt"), folder / src.with_suffix(".txt").name)
    opts = IndexOptions(progress=False, batch_size=2, max_rows_per_shard=4)
    first = index_folder(folder, tmp_path / "idx", encoder=tiny_encoder, options=opts)
    assert first.texts == 12
    sorted(folder.glob("*.png"))[0].unlink()  # an unrelated change makes the rerun write
    again = index_folder(folder, tmp_path / "idx", encoder=tiny_encoder, options=opts)
    assert again.texts == 12 and again.encoded == 0
    assert store.read_manifest(tmp_path / "idx").rows_by_modality()["text"] == 12

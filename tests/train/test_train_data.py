"""Training data through the one scanner: the same pairs, in the same order, as the old walks.

The reference functions below are the folder walks training used before it went through
`xretrieve.media.scan` (sorted ``rglob``, ``with_suffix`` sidecars); the tree is built to hit
what a scanner could get wrong: files beside subfolders, same-stem images, upper-case
extensions, empty and upper-case sidecars, formats training does not read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xretrieve.errors import FolderError, MediaError
from xretrieve.media.audio import AUDIO_EXTS
from xretrieve.train.audio import find_audio_pairs
from xretrieve.train.clip import IMAGE_SUFFIXES, find_captioned_images
from xretrieve.train.data import training_split


def _old_captioned_images(root: Path) -> list[tuple[Path, list[str]]]:
    pairs = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        side = p.with_suffix(".txt")
        if not side.is_file():
            continue
        captions = [c.strip() for c in side.read_text(encoding="utf-8").splitlines()]
        captions = [c for c in captions if c]
        if captions:
            pairs.append((p, captions))
    return pairs


def _old_audio_pairs(root: Path) -> list[tuple[Path, tuple[str, ...], Path | None]]:
    pairs = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO_EXTS or not p.is_file():
            continue
        side = p.with_suffix(".txt")
        captions: tuple[str, ...] = ()
        if side.is_file():
            lines = side.read_text(encoding="utf-8").splitlines()
            captions = tuple(c.strip() for c in lines if c.strip())
        image = next((p.with_suffix(s) for s in IMAGE_SUFFIXES if p.with_suffix(s).is_file()), None)
        if captions or image is not None:
            pairs.append((p, captions, image))
    return pairs


def _touch(root: Path, rel: str, text: str | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is not None:
        path.write_text(text, encoding="utf-8")
    elif path.suffix.lower() in AUDIO_EXTS:
        sf.write(path, np.zeros(800, np.float32), 8000)
    else:
        path.write_bytes(b"an image, as far as finding goes")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in [
        "a.png", "b/x.png", "b/y.jpg", "c.png", "B.png", "d.png", "d.jpg", "e.PNG", "f.gif",
        "g.png", "h.png", "sub/deeper/i.webp", "sub/j.bmp", "sub-k.jpeg", "sub.l.png",
        "s1.wav", "b/s2.wav", "s3.wav", "s4.flac", "s5.wav", "s5.jpg", "s5.png", "s6.WAV",
        "s7.wav", "sub/s8.wav", "sub/s8.bmp",
    ]:  # fmt: skip
        _touch(root, rel)
    for stem in ["a", "b/x", "b/y", "c", "B", "d", "e", "f", "sub/deeper/i", "sub/j", "sub-k"]:
        _touch(root, f"{stem}.txt", f"  {stem} one\n\n{stem} two  \n")
    _touch(root, "sub.l.txt", "a dotted stem\n")
    _touch(root, "g.txt", "\n   \n")  # blank: no captions
    _touch(root, "h.TXT", "upper-case sidecar\n")  # not the sidecar of h.png
    for stem in ["s1", "b/s2", "s4", "s6", "s7"]:
        _touch(root, f"{stem}.txt", f"{stem} sound\n")
    _touch(root, "s3.txt", "")  # s3 has neither captions nor an image
    (root / "linked.png").symlink_to(root / "a.png")
    (root / "linked.txt").symlink_to(root / "a.txt")
    return root


def test_captioned_images_match_the_old_walk(tree: Path) -> None:
    got = find_captioned_images(tree)
    assert got == _old_captioned_images(tree)
    rels = [p.relative_to(tree).as_posix() for p, _ in got]
    # Files and subfolders interleave by name; both same-stem images keep their captions.
    assert rels.index("a.png") < rels.index("b/x.png") < rels.index("c.png")
    assert {"d.png", "d.jpg", "e.PNG", "linked.png", "sub.l.png"} <= set(rels)
    assert not {"f.gif", "g.png", "h.png"} & set(rels)
    assert dict((p.name, c) for p, c in got)["a.png"] == ["a one", "a two"]


def test_audio_pairs_match_the_old_walk(tree: Path) -> None:
    got = [(p.audio, p.captions, p.image) for p in find_audio_pairs(tree)]
    assert got == _old_audio_pairs(tree)
    by_name = {a.name: (c, i) for a, c, i in got}
    assert "s3.wav" not in by_name
    assert by_name["s5.wav"] == ((), tree / "s5.png")  # .png before .jpg
    assert by_name["s8.wav"] == ((), tree / "sub" / "s8.bmp")
    assert by_name["s6.WAV"] == (("s6 sound",), None)


def test_relative_folders_give_relative_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    assert find_captioned_images(Path("data")) == _old_captioned_images(Path("data"))
    assert find_captioned_images(Path("data"))[0][0] == Path("data/B.png")


def test_a_world_folder_means_its_train_split(audio_world: Path) -> None:
    assert training_split(audio_world) == audio_world / "train"
    assert training_split(audio_world / "test") == audio_world / "test"
    pairs = find_audio_pairs(audio_world)
    assert [(p.audio, p.captions, p.image) for p in pairs] == _old_audio_pairs(
        audio_world / "train"
    )


def test_sidecars_that_cannot_be_read_name_the_file(tmp_path: Path) -> None:
    for stem in ("a", "b"):
        _touch(tmp_path, f"{stem}.png")
        _touch(tmp_path, f"{stem}.txt", f"{stem}\n")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(MediaError, match=r"b\.txt.*not UTF-8"):
        find_captioned_images(tmp_path)
    # A byte-order mark is not part of the first caption.
    (tmp_path / "b.txt").write_bytes("\ufeffb\n".encode())
    assert [c for _, c in find_captioned_images(tmp_path)] == [["a"], ["b"]]
    if os.geteuid() != 0:
        (tmp_path / "b.txt").chmod(0)
        with pytest.raises(MediaError, match=r"b\.txt.*cannot read"):
            find_captioned_images(tmp_path)


def test_missing_or_thin_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="training data folder not found"):
        find_captioned_images(tmp_path / "missing")
    with pytest.raises(FolderError, match="training data folder not found"):
        find_audio_pairs(tmp_path / "missing")
    _touch(tmp_path, "one.png")
    _touch(tmp_path, "one.txt", "just one\n")
    with pytest.raises(FolderError, match="at least 2"):
        find_captioned_images(tmp_path)

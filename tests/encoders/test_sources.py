"""Remembered specs: keyed on what the weights are, read back as stored, and never an error."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from xretrieve.encoders import sources
from xretrieve.encoders.sources import (
    cache_root,
    converted_dir,
    forget_spec,
    recall_spec,
    remember_spec,
    source_key,
)
from xretrieve.encoders.spec import ModelSpec

WEIGHTS = "open_clip_model.safetensors"
SPEC = ModelSpec(
    name="xr-tiny",
    pretrained=None,
    fingerprint="0123456789abcdef0123456789abcdef",
    dim=32,
    image_size=32,
    context_length=16,
)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("XRETRIEVE_CACHE", str(root))
    return root


@pytest.fixture()
def folder(base_model: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny model folder (its weights may be rewritten)."""
    dst = tmp_path / "model"
    shutil.copytree(base_model, dst)
    return dst


def test_the_cache_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XRETRIEVE_CACHE", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"
    monkeypatch.delenv("XRETRIEVE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "xretrieve"


def test_a_folders_key_changes_with_its_weights_file(folder: Path) -> None:
    key = source_key(str(folder), None)
    assert key is not None
    assert source_key(str(folder), None) == key
    assert source_key(f"local-dir:{folder}", None) == key  # the same folder, spelt differently
    weights = folder / WEIGHTS
    st = weights.stat()

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    touched = source_key(str(folder), None)
    assert touched not in (None, key)

    data = weights.read_bytes()
    weights.write_bytes(data + b"\0")  # rewritten, longer
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_key(str(folder), None) not in (None, key, touched)

    weights.write_bytes(data)  # the same bytes and times again: the same key
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_key(str(folder), None) == key


def test_keys_differ_by_audio_and_hub_models_have_none(folder: Path) -> None:
    assert source_key(str(folder), None, audio=True) != source_key(str(folder), None, audio=False)
    assert source_key("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None) is None
    tiny = source_key("xr-tiny", None)
    assert tiny is not None and tiny != source_key("ViT-B-32", None)
    assert source_key("xr-tiny", "none") == tiny  # 'none' is a random init too
    assert source_key("ViT-B-32", "openai") != source_key("ViT-B-32", "laion2b_s34b_b79k")


def test_a_remembered_spec_is_recalled_in_fp32(cache: Path, folder: Path) -> None:
    assert recall_spec(str(folder), None) is None
    spec = replace(SPEC, name=f"local-dir:{folder}", towers=("image", "text", "audio"))
    remember_spec(str(folder), None, replace(spec, precision="int8"))
    assert recall_spec(str(folder), None) == spec  # precision fp32, whatever was asked
    assert recall_spec(str(folder), None, audio=False) is None  # another key
    assert list((cache / "specs").glob("*.json"))

    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes() + b"\0")
    assert recall_spec(str(folder), None) is None  # the weights changed: a miss

    remember_spec("xr-tiny", None, SPEC)
    assert recall_spec("xr-tiny", None) == SPEC
    forget_spec("xr-tiny", None)
    assert recall_spec("xr-tiny", None) is None
    forget_spec("xr-tiny", None)  # forgetting twice is not an error


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[]", b'{"spec": {"name": "x"}}', b'{"spec": 3}', b"\xff\xfe"]
)
def test_a_corrupt_entry_is_a_miss(cache: Path, content: bytes) -> None:
    remember_spec("xr-tiny", None, SPEC)
    (entry,) = (cache / "specs").glob("*.json")
    entry.write_bytes(content)
    assert recall_spec("xr-tiny", None) is None
    remember_spec("xr-tiny", None, SPEC)  # and is overwritten by the next load
    assert recall_spec("xr-tiny", None) == SPEC


def test_an_unwritable_cache_is_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A cache below a file cannot be made, even by root.
    monkeypatch.setenv("XRETRIEVE_CACHE", str(blocker / "cache"))
    remember_spec("xr-tiny", None, SPEC)
    assert recall_spec("xr-tiny", None) is None
    forget_spec("xr-tiny", None)


def test_a_read_only_cache_is_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    (root / "specs").mkdir(parents=True)
    monkeypatch.setenv("XRETRIEVE_CACHE", str(root))
    for p in (root / "specs", root):
        p.chmod(0o555)
    try:
        if os.access(root / "specs", os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        remember_spec("xr-tiny", None, SPEC)
        assert recall_spec("xr-tiny", None) is None
    finally:
        for p in (root, root / "specs"):
            p.chmod(0o755)


def test_converted_towers_live_in_a_writable_model_folder(cache: Path, folder: Path) -> None:
    fp = SPEC.fingerprint
    assert converted_dir(str(folder), fp) == folder.resolve() / "converted" / fp
    assert converted_dir(f"local-dir:{folder}", fp) == folder.resolve() / "converted" / fp
    assert converted_dir("xr-tiny", fp) == cache / "converted" / fp
    assert converted_dir("hf-hub:laion/x", fp) == cache / "converted" / fp


def test_a_read_only_model_folder_converts_into_the_cache(cache: Path, folder: Path) -> None:
    fp = SPEC.fingerprint
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        assert converted_dir(str(folder), fp) == cache / "converted" / fp
    finally:
        folder.chmod(0o755)


def test_an_unwritable_model_folder_converts_into_the_cache(
    cache: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same rule as above, checked where chmod cannot be (root): the folder says no writes.
    real = os.access
    resolved = folder.resolve()

    def access(path: object, mode: int, *a: object, **kw: object) -> bool:
        if Path(str(path)) == resolved and mode & os.W_OK:
            return False
        return real(path, mode, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sources.os, "access", access)
    assert converted_dir(str(folder), SPEC.fingerprint) == cache / "converted" / SPEC.fingerprint

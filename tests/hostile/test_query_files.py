"""Hostile query files: devices, FIFOs, huge and linked files are refused at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox import one_line

from xretrieve.errors import MediaError
from xretrieve.media import decode_audio, load_image
from xretrieve.media.files import MAX_QUERY_FILE_BYTES, read_regular_file


def _fifo(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("load", [load_image, read_regular_file])
def test_devices_and_fifos_are_refused_without_reading(tmp_path: Path, load) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    for target in (Path("/dev/zero"), link, _fifo(tmp_path, "pipe.png")):
        with pytest.raises(MediaError, match="not a regular file"):
            load(target)


def test_audio_from_a_fifo_or_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "zero.wav"
    link.symlink_to("/dev/zero")
    for target in (link, _fifo(tmp_path, "pipe.wav")):
        with pytest.raises(MediaError, match="not a regular file"):
            decode_audio(target)


def test_a_file_over_the_cap_is_refused_by_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    with big.open("wb") as f:  # sparse: costs no disk
        f.truncate(MAX_QUERY_FILE_BYTES + 1)
    with pytest.raises(MediaError, match="file too large"):
        load_image(big)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    with pytest.raises(MediaError, match="file too large"):
        read_regular_file(small, max_bytes=99)
    assert read_regular_file(small, max_bytes=100) == b"x" * 100


def test_cli_search_by_a_device_is_one_line_exit_2(built_index: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pipe = _fifo(tmp_path, "q.png")
    for target in ("/dev/zero", str(pipe)):
        r = cli("search", "--image", target, "--index", built_index, "--model", "xr-tiny")
        assert r.returncode == 2, r.stderr
        assert "not a regular file" in one_line(r.stderr)

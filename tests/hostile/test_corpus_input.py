"""Hostile caption corpora: huge lines, deep JSON and corrupt Parquet give line-numbered errors."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xretrieve.errors import MediaError
from xretrieve.indexer.corpus import MAX_CAPTION_CHARS, read_corpus


def _all(path: Path, **kw: str) -> list[str]:
    return [c for _, caps, _ in read_corpus(path, **kw) for c in caps]


def test_a_huge_line_is_cut_without_being_held(tmp_path: Path) -> None:
    p = tmp_path / "caps.txt"
    with p.open("wb") as f:
        f.write(b"first caption\n")
        for _ in range(200):  # one 200 MB line
            f.write("a red circle é ".encode() * 65_000)
        f.write(b"\nlast caption\n")
    tracemalloc.start()
    caps = _all(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert caps[0] == "first caption" and caps[2] == "last caption" and len(caps) == 3
    assert len(caps[1]) == MAX_CAPTION_CHARS and caps[1].startswith("a red circle é a red")
    assert peak < 20 << 20, f"peak {peak / 2**20:.0f} MiB for a 200 MB line"


def test_a_cut_in_the_middle_of_a_character_is_not_an_encoding_error(tmp_path: Path) -> None:
    p = tmp_path / "caps.txt"
    p.write_bytes(b"x" * (64 * 1024 - 1) + "é".encode() * 10 + b"\nok\n")
    caps = _all(p)
    assert caps[1] == "ok" and set(caps[0]) == {"x"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"caption": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "line 2 nests too deeply"),
        ('{"caption": "ok"}\n{"caption": "' + "x" * (2 << 20) + '"}\n', "line 2 is longer than"),
        (
            '{"caption": "ok"}\n\n{"caption": "\xff"}\n'.replace("\xff", "ok") + "{bad\n",
            "line 4 is not valid JSON",
        ),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "caps.jsonl"
    p.write_text(body)
    with pytest.raises(MediaError, match=message) as e:
        _all(p)
    assert "\n" not in str(e.value)


def test_a_corrupt_parquet_is_a_media_error(tmp_path: Path) -> None:
    p = tmp_path / "caps.parquet"
    pq.write_table(
        pa.table({"caption": [f"caption {i}" for i in range(5000)]}), p, row_group_size=1000
    )
    data = bytearray(p.read_bytes())
    data[4 : len(data) // 2] = b"\x00" * (len(data) // 2 - 4)  # pages gone, footer intact
    p.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=r"cannot be read|not a readable Parquet"):
        _all(p)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(MediaError, match="not a readable Parquet"):
        _all(tmp_path / "junk.parquet")

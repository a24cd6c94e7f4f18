"""Class 3: a crafted FAISS or .npy file is refused by its size before anything is allocated.

Every crafted file here is consistent with the manifest (its recorded size and checksum are
updated), so only the check of what the file claims against the bytes it has can catch it.
Each read runs in a subprocess under an address-space limit, so a regression fails the test
instead of eating the machine's memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from sandbox import Sandbox, one_line

from xretrieve.errors import IndexCorruptError
from xretrieve.store.filecheck import check_faiss_file

# Address space for the library-level reads (numpy + faiss + pyarrow fit in well under 2 GB)
# and for a whole CLI search (torch alone maps ~5 GB of address space).
LIB_LIMIT = 2 << 30
CLI_LIMIT_KB = 7_000_000
TINY = ("--model", "xr-tiny", "--pretrained", "none", "--device", "cpu")


def _copy_index(built_index: Path, dst: Path) -> Path:
    shutil.copytree(built_index, dst, ignore=shutil.ignore_patterns(".lock", "*.pin"))
    return dst


def _replace_file(idx: Path, key: str, data: bytes) -> Path:
    """Write `data` over shard 0's file `key`, and make the manifest agree with it."""
    m = json.loads((idx / "manifest.json").read_text())
    rec = m["shards"][0][key]
    path = idx / "shards" / rec["name"]
    path.write_bytes(data)
    rec["bytes"] = len(data)
    rec["sha256"] = hashlib.sha256(data).hexdigest()
    (idx / "manifest.json").write_text(json.dumps(m))
    return path


def _claim(flat: bytes, ntotal: int, *, size: int = 10_000) -> bytes:
    """A Flat index file that claims `ntotal` vectors, `size` bytes long."""
    b = bytearray(flat)
    assert b[:4] in (b"IxFI", b"IxF2")
    d = struct.unpack("<i", b[4:8])[0]
    b[8:16] = struct.pack("<q", ntotal)
    b[37:45] = struct.pack("<Q", ntotal * d)  # the codes' length, in floats
    return bytes(b[:size]).ljust(size, b"\0")


def _read_in_subprocess(code: str, *args: Any) -> subprocess.CompletedProcess[str]:
    prog = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({LIB_LIMIT}, {LIB_LIMIT}))\n"
        "from xretrieve.errors import IndexCorruptError\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except IndexCorruptError as e:\n"
        "    print(e); sys.exit(5)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prog, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("claim", [2**33, 2**26, 2**20])
def test_a_faiss_file_claiming_more_than_it_holds_is_refused(
    sandbox: Sandbox, built_index: Path, claim: int
) -> None:
    idx = _copy_index(built_index, sandbox.work / "idx")
    m = json.loads((idx / "manifest.json").read_text())
    flat = (idx / "shards" / m["shards"][0]["index_file"]["name"]).read_bytes()
    path = _replace_file(idx, "index_file", _claim(flat, claim))
    side = path.with_name(path.name + ".json")  # the sidecar agrees too
    meta = json.loads(side.read_text())
    meta["ntotal"] = claim
    side.write_text(json.dumps(meta))

    r = _read_in_subprocess("from xretrieve.store import ann\nann.read_index(sys.argv[1])", path)
    assert r.returncode == 5, r.stderr
    assert "index damaged" in one_line(r.stdout)

    r = _read_in_subprocess(
        "from xretrieve import store\n"
        "m = store.read_manifest(sys.argv[1])\n"
        "store.load_shard(sys.argv[1], m.shards[0])",
        idx,
    )
    assert r.returncode == 5, r.stderr
    assert "index damaged" in one_line(r.stdout)


def test_cli_search_refuses_a_crafted_faiss_file_within_a_memory_limit(
    sandbox: Sandbox, built_index: Path
) -> None:
    idx = _copy_index(built_index, sandbox.work / "idx")
    m = json.loads((idx / "manifest.json").read_text())
    for i in range(len(m["shards"])):  # whichever shard the search opens first
        m2 = json.loads((idx / "manifest.json").read_text())
        m2["shards"][0], m2["shards"][i] = m2["shards"][i], m2["shards"][0]
        (idx / "manifest.json").write_text(json.dumps(m2))
        flat = (idx / "shards" / m2["shards"][0]["index_file"]["name"]).read_bytes()
        _replace_file(idx, "index_file", _claim(flat, 2**26))  # 8 GiB of codes at d=32
    search = [sys.executable, "-m", "xretrieve.cli", "search", "'red circle'", "--index", idx]
    cmd = f"ulimit -v {CLI_LIMIT_KB}; exec " + " ".join(map(str, [*search, *TINY]))
    r = subprocess.run(
        ["bash", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert r.returncode == 5, r.stderr
    assert "index damaged" in one_line(r.stderr)


def test_a_crafted_npy_is_refused_by_its_size(sandbox: Sandbox, built_index: Path) -> None:
    """A deleted-rows list whose header claims 2**33 rows, in a few bytes."""
    idx = _copy_index(built_index, sandbox.work / "idx")
    m = json.loads((idx / "manifest.json").read_text())
    s = m["shards"][0]
    name = s["index_file"]["name"].replace(".faiss", ".deleted.npy")
    path = idx / "shards" / name
    with path.open("wb") as f:
        header = {"descr": "<i8", "fortran_order": False, "shape": (2**33,)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    data = path.read_bytes()
    s["deleted"] = {
        "name": name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    s["deleted_rows"] = 1
    (idx / "manifest.json").write_text(json.dumps(m))
    r = _read_in_subprocess(
        "from xretrieve import store\n"
        "m = store.read_manifest(sys.argv[1])\n"
        "store.read_deleted(sys.argv[1], m.shards[0])",
        idx,
    )
    assert r.returncode == 5, r.stderr
    assert "index damaged" in one_line(r.stdout)


def _index_file(kind: str, n: int, d: int) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    factory = {
        "flat": "Flat",
        "hnsw": "HNSW8,Flat",
        "ivf-flat": "IVF4,Flat",
        "ivf-sq8": "IVF4,SQ8",
        "ivf-pq": "IVF4,PQ4x4fs",
        "opq": "OPQ4,IVF4,PQ4x4fs",
    }[kind]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    return bytes(faiss.serialize_index(index))


KINDS = ("flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq", "opq")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_passes_whole_and_fails_truncated(tmp_path: Path, kind: str) -> None:
    data = _index_file(kind, 600, 16)
    p = tmp_path / "x.faiss"
    p.write_bytes(data)
    h = check_faiss_file(p, d=16, ntotal=600)
    assert (h.d, h.ntotal) == (16, 600)
    with pytest.raises(IndexCorruptError, match="holds 600 x 16"):
        check_faiss_file(p, d=16, ntotal=601)
    step = max(1, len(data) // 400)
    for cut in range(0, len(data), step):
        p.write_bytes(data[:cut])
        with pytest.raises(IndexCorruptError):
            check_faiss_file(p)
    p.write_bytes(data + b"\0")
    with pytest.raises(IndexCorruptError, match="left over"):
        check_faiss_file(p)


FUZZ = r"""
import resource, struct, sys
resource.setrlimit(resource.RLIMIT_AS, (AS_BYTES, AS_BYTES))
import faiss
from xretrieve.errors import IndexCorruptError
from xretrieve.store.filecheck import check_faiss_file
path = sys.argv[1]
orig = open(path, "rb").read()
refused = read = 0
offsets = list(range(0, min(len(orig), 500))) + list(range(max(0, len(orig) - 300), len(orig)))
for off in offsets[::3]:
    for val in (2**62, 2**33, 2**26):
        b = bytearray(orig)
        b[off:off + 8] = struct.pack("<Q", val)[: len(b[off:off + 8])]
        open(path + ".f", "wb").write(b)
        try:
            check_faiss_file(path + ".f")
        except IndexCorruptError:
            refused += 1
            continue
        try:
            faiss.read_index(path + ".f")
        except MemoryError:
            print("allocated at offset", off, val)
            sys.exit(1)
        except RuntimeError as e:
            if "alloc" in str(e):
                print("allocated at offset", off, val, e)
                sys.exit(1)
        read += 1
print(refused, read)
"""


@pytest.mark.parametrize("kind", KINDS)
def test_no_field_of_a_faiss_file_makes_faiss_allocate_past_the_limit(
    tmp_path: Path, kind: str
) -> None:
    """Overwrite each 8 bytes of the structure with a huge length: refused, or read in bounds."""
    p = tmp_path / "x.faiss"
    p.write_bytes(_index_file(kind, 300, 8))
    r = subprocess.run(
        [sys.executable, "-c", FUZZ.replace("AS_BYTES", str(LIB_LIMIT)), str(p)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    refused, read = map(int, r.stdout.split())
    assert refused > 10 and read > 0, r.stdout


_LEX_TABLE = """
import pyarrow as pa
t = pa.table({"caption": pa.array(["a red circle", "a blue square"], pa.string()),
              "path": ["a.png", "b.png"], "image_path": pa.array([None, None], pa.string()),
              "modality": ["image", "image"]})
"""


def test_a_crafted_lexical_cache_is_rebuilt_not_allocated(tmp_path: Path) -> None:
    # The BM25 cache lives inside the index: a planted .npy whose header claims 2**33 floats
    # must be refused by its size (then the cache is rebuilt), never handed to numpy.
    import subprocess
    import sys

    import numpy as np

    from xretrieve.query.lexical import open_lexical

    scope: dict[str, object] = {}
    exec(_LEX_TABLE, scope)
    first = open_lexical(tmp_path, "image", [("k1", scope["t"])])
    (cache,) = (tmp_path / "lexical").glob("image-*")
    data = cache / "data.csc.index.npy"
    with data.open("wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (2**33,)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))\n"  # 2**33 floats: 32 GB
        + _LEX_TABLE
        + "from xretrieve.query.lexical import open_lexical\n"
        + f"print(open_lexical({str(tmp_path)!r}, 'image', [('k1', t)]).n_docs)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == str(first.n_docs), r.stderr
    assert np.load(data).shape[0] < 100  # the cache was rebuilt whole


def test_a_parquet_bomb_or_lying_footer_is_refused_before_pyarrow_reads_it(
    sandbox: Sandbox, built_index: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xretrieve.store.filecheck import check_parquet_file

    # 100 MB of text that zstd keeps in a few KB: refused by the footer's own claim.
    bomb = sandbox.work / "bomb.parquet"
    rows = 1_000_000
    table = pa.table({"caption": pa.array(["a" * 100] * rows)})
    pq.write_table(table, bomb, compression="zstd", use_dictionary=False)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(IndexCorruptError, match="decompressed bytes") as e:
        check_parquet_file(bomb, rows=rows)
    assert "\n" not in str(e.value)
    with pytest.raises(IndexCorruptError, match="manifest says 5"):
        check_parquet_file(bomb, rows=5)

    # A shard whose metadata file's footer claims more bytes than the file has.
    idx = _copy_index(built_index, sandbox.work / "idx")
    meta = (
        idx
        / "shards"
        / json.loads((idx / "manifest.json").read_text())["shards"][0]["meta_file"]["name"]
    )
    data = bytearray(meta.read_bytes())
    data[-8:-4] = (len(data) * 4).to_bytes(4, "little")
    _replace_file(idx, "meta_file", bytes(data))
    r = _read_in_subprocess(
        "from xretrieve import store\n"
        "m = store.read_manifest(sys.argv[1])\n"
        "store.read_metadata(sys.argv[1], m.shards[0])",
        idx,
    )
    assert r.returncode == 5, r.stderr
    assert "footer claims" in one_line(r.stdout)

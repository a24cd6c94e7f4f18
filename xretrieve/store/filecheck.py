"""Files checked against their byte size before they are read: FAISS indexes and .npy arrays.

FAISS's reader sizes its buffers from the lengths a file states (vector lengths, list sizes,
counts) and allocates them before it reads a byte of them: a 10 KB file that claims 2**31
floats asks for 8 GB. `check_faiss_file` walks the structure of the index types xretrieve
writes -- Flat, HNSW over Flat, IVF-Flat, IVF-SQ, IVF-PQ (plain or fast-scan), each possibly
behind linear transforms such as OPQ -- reading only headers and length fields and seeking
over the data, and refuses with `IndexCorruptError`:

- a stated length the bytes left in the file cannot hold, before anything of that size exists;
- a dimension outside 1..`MAX_DIM`, a vector count outside 0..`MAX_ROWS`;
- counts that disagree (a Flat's codes and its `ntotal`, an IVF's list sizes and its `ntotal`,
  a quantizer's centroids and `nlist`), or a walk that does not end at the file's last byte.

A file of another type (a raw FAISS factory string) is checked by its outer header only: its
dimension and count in range, and at least one byte a vector.

`check_npy_file` does the same for a .npy array (re-scoring vectors, deleted rows): its header's
dtype and shape must be the expected ones and its data exactly the bytes left in the file, so
`numpy.load` never sizes a buffer from a claim.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from xretrieve.errors import IndexCorruptError

__all__ = [
    "MAX_DIM",
    "MAX_ROWS",
    "FaissHeader",
    "check_faiss_file",
    "check_npy_file",
    "check_parquet_file",
]

#: Largest vector dimension an index may hold.
MAX_DIM = 65_536
#: Largest number of vectors one shard may claim (far above `max_rows_per_shard`'s default).
MAX_ROWS = 1 << 40
# Linear transforms in a chain, nested indexes (IVF quantizer, HNSW storage, pre-transform).
_MAX_CHAIN = 16
_MAX_DEPTH = 4


@dataclass(frozen=True)
class FaissHeader:
    """What a FAISS file's outer header says: its type, dimension and vector count."""

    fourcc: str
    d: int
    ntotal: int


class _Damaged(Exception):
    pass


class _Unknown(Exception):
    """A part of a type xretrieve does not write: only the outer header can be checked."""


class _Cursor:
    """Reads fixed-size fields of a file and skips its arrays, never past its end."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.pos = 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise _Damaged(f"truncated: {n} bytes wanted at offset {self.pos}, {self.left} left")
        data = self.f.read(n)
        if len(data) != n:
            raise _Damaged("the file changed while it was checked")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n > self.left:
            raise _Damaged(f"truncated: {n} bytes wanted at offset {self.pos}, {self.left} left")
        self.pos += n
        self.f.seek(self.pos)

    def fmt(self, code: str) -> int | float:
        value: int | float = struct.unpack("<" + code, self.take(struct.calcsize(code)))[0]
        return value

    def int_(self, code: str) -> int:
        return int(self.fmt(code))

    def fourcc(self) -> str:
        return self.take(4).decode("latin-1")

    def vector(self, elem: int, *, expect: int | None = None, what: str) -> int:
        """Skip a length-prefixed array of `elem`-byte items; its length."""
        n = self.int_("Q")
        if expect is not None and n != expect:
            raise _Damaged(f"{what} holds {n} items, expected {expect}")
        if n * elem > self.left:
            raise _Damaged(
                f"{what} claims {n} items of {elem} bytes, the file has {self.left} left"
            )
        self.skip(n * elem)
        return n

    def u64_array(self, *, what: str) -> np.ndarray:
        """Read a length-prefixed array of uint64 (list sizes: small)."""
        n = self.int_("Q")
        if n * 8 > self.left:
            raise _Damaged(f"{what} claims {n} items, the file has {self.left} bytes left")
        return np.frombuffer(self.take(n * 8), dtype="<u8")


def _header(c: _Cursor) -> tuple[int, int]:
    d = c.int_("i")
    ntotal = c.int_("q")
    c.skip(16)  # two unused int64
    c.skip(1)  # is_trained
    metric = c.int_("i")
    if metric > 1:
        c.skip(4)  # metric_arg
    if not 1 <= d <= MAX_DIM:
        raise _Damaged(f"dimension {d} is outside 1..{MAX_DIM}")
    if not 0 <= ntotal <= MAX_ROWS:
        raise _Damaged(f"vector count {ntotal} is outside 0..{MAX_ROWS}")
    return d, ntotal


def _flat(c: _Cursor, d: int, ntotal: int) -> None:
    # Codes are stored as a count of floats (4 bytes each).
    c.vector(4, expect=ntotal * d, what="flat codes")


def _transform(c: _Cursor) -> None:
    h = c.fourcc()
    if h not in ("LTra", "rrot"):
        raise _Unknown(h)
    c.skip(1)  # have_bias
    c.vector(4, what="transform matrix")
    c.vector(4, what="transform bias")
    d_in, d_out = c.int_("i"), c.int_("i")
    c.skip(1)  # is_trained
    if not (1 <= d_in <= MAX_DIM and 1 <= d_out <= MAX_DIM):
        raise _Damaged(f"transform of {d_in} -> {d_out} dimensions")


def _invlists(c: _Cursor, *, nlist: int, ntotal: int, code_size: int | None) -> None:
    h = c.fourcc()
    if h == "ilar":
        n, cs = c.int_("Q"), c.int_("Q")
        if n != nlist or (code_size is not None and cs != code_size):
            raise _Damaged(f"inverted lists of {n} x {cs} bytes, expected {nlist} x {code_size}")
        kind = c.fourcc()
        if kind == "full":
            sizes = c.u64_array(what="list sizes")
            if len(sizes) != nlist:
                raise _Damaged(f"{len(sizes)} list sizes for {nlist} lists")
        elif kind == "sprs":
            pairs = c.u64_array(what="sparse list sizes")
            if len(pairs) % 2 or (len(pairs) and int(pairs[0::2].max()) >= nlist):
                raise _Damaged("sparse list sizes name lists that do not exist")
            sizes = pairs[1::2]
        else:
            raise _Damaged(f"inverted list layout {kind!r} is unknown")
        total = int(sizes.sum(dtype=np.float64)) if len(sizes) else 0
        if total != ntotal or float(sizes.sum(dtype=np.float64)) * (cs + 8) > c.left:
            raise _Damaged(f"inverted lists hold {total} vectors, the index says {ntotal}")
        c.skip(total * (cs + 8))
    elif h == "ilbl":  # block lists of the fast-scan codes
        n = c.int_("Q")
        c.skip(24)  # code_size, n_per_block, block_size
        if n != nlist:
            raise _Damaged(f"{n} inverted lists, expected {nlist}")
        total = 0
        for _ in range(n):
            total += c.vector(8, what="list ids")
            c.vector(1, what="list codes")
        if total != ntotal:
            raise _Damaged(f"inverted lists hold {total} vectors, the index says {ntotal}")
    else:
        raise _Unknown(h)


def _pq(c: _Cursor, d: int) -> int:
    pq_d, m, nbits = c.int_("Q"), c.int_("Q"), c.int_("Q")
    if pq_d != d or not 1 <= m <= d or not 1 <= nbits <= 16:
        raise _Damaged(f"product quantizer of d={pq_d}, M={m}, nbits={nbits}")
    c.vector(4, expect=d * (1 << nbits), what="PQ centroids")
    return m


def _index(c: _Cursor, depth: int) -> tuple[str, int, int]:
    if depth > _MAX_DEPTH:
        raise _Damaged("indexes nested too deep")
    h = c.fourcc()
    d, ntotal = _header(c)
    if h in ("IxFI", "IxF2", "IxFl"):
        _flat(c, d, ntotal)
    elif h == "IHNf":
        c.vector(8, what="HNSW level probabilities")
        c.vector(4, what="HNSW neighbours per level")
        c.vector(4, expect=ntotal, what="HNSW levels")
        c.vector(8, expect=ntotal + 1, what="HNSW offsets")
        c.vector(4, what="HNSW neighbours")
        c.skip(20)  # entry point, max level, efConstruction, efSearch, unused
        _, sd, sn = _index(c, depth + 1)
        if (sd, sn) != (d, ntotal):
            raise _Damaged(f"HNSW storage of {sn} x {sd} under an index of {ntotal} x {d}")
    elif h in ("IwFl", "IwSq", "IwSQ", "IwPQ", "IwPf"):
        nlist = c.int_("Q")
        c.skip(8)  # nprobe
        _, qd, qn = _index(c, depth + 1)
        if qd != d or qn != nlist:
            raise _Damaged(f"coarse quantizer of {qn} x {qd} for {nlist} lists of dimension {d}")
        kind = c.int_("B")
        c.vector(8, what="direct map")
        if kind == 2:
            c.vector(16, what="direct map table")
        code_size: int | None = d * 4
        if h in ("IwSq", "IwSQ"):
            c.skip(12)  # qtype, rangestat, rangestat_arg
            sq_d, sq_code_size = c.int_("Q"), c.int_("Q")
            c.vector(4, what="scalar quantizer ranges")
            code_size = c.int_("Q")
            if sq_d != d or sq_code_size != code_size:
                raise _Damaged("scalar quantizer does not match its index")
            if h == "IwSq":
                c.skip(1)  # by_residual
        elif h == "IwPQ":
            c.skip(1)  # by_residual
            code_size = c.int_("Q")
            _pq(c, d)
        elif h == "IwPf":
            c.skip(33)  # by_residual, code_size, bbs, qbs, M2, implem, qbs2
            _pq(c, d)
            code_size = None
        _invlists(c, nlist=nlist, ntotal=ntotal, code_size=code_size)
    elif h == "IxPT":
        nt = c.int_("i")
        if not 0 <= nt <= _MAX_CHAIN:
            raise _Damaged(f"a chain of {nt} transforms")
        for _ in range(nt):
            _transform(c)
        _, _, inner_n = _index(c, depth + 1)
        if inner_n != ntotal:
            raise _Damaged(f"pre-transform of {ntotal} vectors over an index of {inner_n}")
    else:
        raise _Unknown(h)
    return h, d, ntotal


def _outer_header(c: _Cursor) -> tuple[str, int, int]:
    """The checks that hold for a file of any type: its header, a byte a vector at least."""
    c.pos = 0
    c.f.seek(0)
    h = c.fourcc()
    d, ntotal = _header(c)
    if ntotal > c.size:
        raise _Damaged(f"{ntotal} vectors claimed in {c.size} bytes")
    c.skip(c.left)
    return h, d, ntotal


def check_faiss_file(
    path: str | os.PathLike[str], *, d: int | None = None, ntotal: int | None = None
) -> FaissHeader:
    """Walk a FAISS file's structure against its size (see the module notes); its header.

    `d` and `ntotal`, when given, must be what the file holds.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            c = _Cursor(f, os.fstat(f.fileno()).st_size)
            try:
                h, fd, fn = _index(c, 0)
            except _Unknown:  # a raw factory string's index
                h, fd, fn = _outer_header(c)
            if c.left:
                raise _Damaged(f"{c.left} bytes left over after the index")
    except _Damaged as e:
        raise IndexCorruptError(
            f"{p}: index damaged: not a readable FAISS index (truncated or damaged: {e})"
        ) from e
    except (OSError, struct.error, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{p}: index damaged: cannot be read ({e})") from e
    if (d is not None and fd != d) or (ntotal is not None and fn != ntotal):
        raise IndexCorruptError(
            f"{p}: index damaged: holds {fn} x {fd} vectors, its sidecar says {ntotal} x {d}"
        )
    return FaissHeader(fourcc=h, d=fd, ntotal=fn)


def check_npy_file(
    path: str | os.PathLike[str],
    *,
    dtype: str,
    ndim: int,
    shape: tuple[int, ...] | None = None,
    what: str = "array",
) -> tuple[int, ...]:
    """The shape of a .npy file of `dtype` and `ndim` dimensions whose data fill it exactly.

    `what` names the array in errors ("re-scoring vectors").
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise _Damaged(f".npy format {version} is not one xretrieve writes")
            data = size - f.tell()
        if got_dtype != np.dtype(dtype) or len(got_shape) != ndim or fortran:
            raise _Damaged(f"holds {got_dtype} {got_shape}, expected {dtype} of {ndim} dimensions")
        if shape is not None and tuple(got_shape) != shape:
            raise _Damaged(f"holds {tuple(got_shape)} items, expected {shape}")
        if int(np.prod(got_shape, dtype=np.float64)) * np.dtype(dtype).itemsize != data:
            raise _Damaged(f"claims {tuple(got_shape)} items in {data} bytes of data")
    except _Damaged as e:
        raise IndexCorruptError(f"{p}: index damaged: the {what}: {e}") from e
    except (OSError, ValueError, EOFError) as e:
        raise IndexCorruptError(f"{p}: index damaged: the {what}: not a readable .npy ({e})") from e
    return tuple(int(n) for n in got_shape)


#: Metadata decompresses to at most this many times its file size, plus a slack (captions and
#: paths compress well, but not 64-fold).
PARQUET_MAX_EXPANSION = 64
_PARQUET_SLACK = 16 << 20


def check_parquet_file(path: str | os.PathLike[str], *, rows: int, what: str = "metadata") -> None:
    """`IndexCorruptError` unless a Parquet file's footer claims what its bytes can hold.

    Only the footer is read (its length is checked against the file first): `rows` rows as
    the manifest says, and decompressed column chunks within `PARQUET_MAX_EXPANSION` times
    the file's size, so that pyarrow never sizes buffers from a crafted claim.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size < 12:
                raise _Damaged("too short to be Parquet")
            f.seek(size - 8)
            tail = f.read(8)
        footer = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or footer > size - 12:
            raise _Damaged(f"its footer claims {footer} bytes in a {size}-byte file")
        meta = pq.read_metadata(p)
        if meta.num_rows != rows:
            raise _Damaged(f"holds {meta.num_rows} rows, the manifest says {rows}")
        claimed = sum(
            meta.row_group(g).column(c).total_uncompressed_size
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        )
        if claimed > PARQUET_MAX_EXPANSION * size + _PARQUET_SLACK:
            raise _Damaged(f"claims {claimed} decompressed bytes from {size} bytes")
    except _Damaged as e:
        raise IndexCorruptError(f"{p}: index damaged: the {what}: {e}") from e
    except (OSError, pa.ArrowException) as e:
        raise IndexCorruptError(
            f"{p}: index damaged: the {what}: not readable Parquet ({e})"
        ) from e

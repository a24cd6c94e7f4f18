"""`xretrieve.shutdown()`: the process-wide resources let go, made again on next use."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xretrieve
from xretrieve import store
from xretrieve.query import _where_ast
from xretrieve.query.filters import parse_where
from xretrieve.store import ann
from xretrieve.store.ann import topk


def test_shutdown_closes_the_parser_and_the_shard_pool_and_the_next_use_remakes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topk, "default_workers", lambda: 4)
    rng = np.random.default_rng(2)
    shards = []
    for n in (200, 100):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        shards.append(ann.build_index(x, ann.plan_index(n, 8, index_type="flat")))
    q = rng.standard_normal((2, 8)).astype(np.float32)
    columns = store.METADATA_SCHEMA.names

    parse_where("width > 1", columns=columns)
    ann.search_shards(shards, q, 3)
    parser, pool = _where_ast._parser, topk._pool
    assert parser is not None and pool is not None

    xretrieve.shutdown()
    assert _where_ast._parser is None and topk._pool is None
    with pytest.raises(RuntimeError):
        pool.submit(int)
    xretrieve.shutdown()  # twice is harmless

    assert parse_where("height < 2", columns=columns).columns == {"height"}
    got = ann.search_shards(shards, q, 3)
    np.testing.assert_array_equal(got[1][1], ann.search(shards[1], q, 3)[1])
    assert _where_ast._parser not in (None, parser)
    assert topk._pool not in (None, pool)
    xretrieve.shutdown()


def test_shutdown_imports_nothing_it_does_not_find_loaded() -> None:
    code = (
        "import sys, xretrieve\n"
        "before = set(sys.modules)\n"
        "xretrieve.shutdown()\n"
        "heavy = ('duckdb', 'faiss', 'torch', 'open_clip', 'xretrieve.query', 'xretrieve.store')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(heavy)))\n"
        "print(sorted(m for m in before if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]

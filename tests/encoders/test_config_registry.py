"""open_clip's config registry: xretrieve's configs added once, however many threads ask first."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import open_clip
import pytest

from xretrieve.encoders import factory

THREADS = 16
T = TypeVar("T")


def _all_at_once(fn: Callable[[int], T], n: int = THREADS) -> list[T]:
    """`fn(i)` for i < n on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_threads_asking_at_once_register_the_builtin_configs_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    added: list[Any] = []

    def slow_add(path: Any) -> None:
        time.sleep(0.05)  # a wide window: an unlocked check-then-add registers many times
        added.append(path)

    monkeypatch.setattr(factory, "_registered", False)
    monkeypatch.setattr(open_clip, "add_model_config", slow_add)
    _all_at_once(lambda _: factory._ensure_registered())
    assert added == [factory._BUILTIN_CONFIGS]
    factory._ensure_registered()
    assert len(added) == 1


def test_configs_registered_from_many_threads_at_once_are_all_kept(tmp_path: Path) -> None:
    base = json.loads((factory._BUILTIN_CONFIGS / "xr-tiny.json").read_text())
    names = [f"xr-registry-test-{i}" for i in range(THREADS)]
    for name in names:
        (tmp_path / f"{name}.json").write_text(json.dumps(base))
    got = _all_at_once(lambda i: factory.register_model_config(tmp_path / f"{names[i]}.json"))
    assert got == [[name] for name in names]  # each call reports its own config as new
    models = set(factory.list_models())
    assert set(names) <= models and "xr-tiny" in models

"""Inputs with no bound get one: k, oversample, index options."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox import one_line

import xretrieve
from xretrieve.errors import InputError
from xretrieve.query.options import MAX_K, SearchOptions


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"k": MAX_K + 1}, "k must be at most 10,000"),
        ({"k": 2**40}, "k must be at most"),
        ({"k": 10, "oversample": 10**9, "rerank": True}, "oversample must be"),
    ],
)
def test_search_bounds_are_input_errors(built_index: Path, opts: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=message):
        SearchOptions(**opts).validate()
    idx = xretrieve.open_index(built_index, device="cpu")
    with pytest.raises(InputError, match=message):
        idx.search("a red circle", **opts)


def test_k_at_the_bound_is_fine(built_index: Path) -> None:
    idx = xretrieve.open_index(built_index, device="cpu")
    hits = idx.search("a red circle", k=MAX_K)
    assert 0 < len(hits) <= MAX_K


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["search", "red", "-k", "10000001"], 2, "k must be at most"),
        (["index", "FOLDER", "--workers", "0"], 2, "--workers"),
        (["index", "FOLDER", "--workers", "100000"], 2, "--workers"),
        (["index", "FOLDER", "--torch-threads", "-3"], 2, "--torch-threads"),
        (["index", "FOLDER", "--index-type", "no-such-kind!!"], 2, "index type"),
    ],
)
def test_cli_bounds(
    built_index: Path, media_dir: Path, tmp_path: Path, cli, args, code, needle
) -> None:  # type: ignore[no-untyped-def]
    args = [str(media_dir) if a == "FOLDER" else a for a in args]
    target = built_index if args[0] == "search" else tmp_path / "new-index"
    extra = (
        ["--model", "xr-tiny", "--pretrained", "none", "--device", "cpu"]
        if args[0] == "index"
        else []
    )
    r = cli(*args, "--index", target, *extra)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr
    if args[0] == "search":
        one_line(r.stderr)
    assert not (tmp_path / "new-index" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"workers": 0}, "workers must be"),
        ({"workers": 10**6}, "workers must be"),
        ({"torch_threads": True}, "torch threads must be"),
        ({"batch_size": 2**40}, "batch size must be"),
        ({"commit_seconds": float("nan")}, "commit seconds"),
        ({"index_type": "IVF7,PQ1000x99"}, "FAISS factory string"),
        ({"index_type": " "}, "index type must be"),
    ],
)
def test_index_options_are_checked_before_any_write(
    media_dir: Path,
    tmp_path: Path,
    tiny_encoder,
    opts: dict,
    message: str,  # type: ignore[no-untyped-def, type-arg]
) -> None:
    out = tmp_path / "idx"
    with pytest.raises(InputError, match=message):
        xretrieve.index_folder(
            media_dir,
            out,
            encoder=tiny_encoder,
            options=xretrieve.IndexOptions(progress=False, **opts),
        )
    assert not out.exists()

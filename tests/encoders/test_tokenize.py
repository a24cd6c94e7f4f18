"""The torch-free tokenizer gives open_clip's ids exactly, and refuses tokenizers it cannot copy."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xretrieve.encoders import list_models
from xretrieve.encoders.tokenize import TextTokenizer, save_tokenizer

#: Architectures and their context lengths: the tiny test model's 16 and CLIP's usual 77.
MODELS = {"xr-tiny": 16, "ViT-B-32": 77}

_ALPHABET: list[str] = [
    *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    *" .,;:!?'\"-_()[]{}/\\@#$%^&*+=~`|<>",
    *"éèàüöñçÅØßœÉ",
    *"猫犬中文日本語한국어",
    "😀",
    "👍🏽",
    "🇫🇷",
    "❤️",
    "&amp;lt;",
    "&amp;",
    "&lt;",
    "&#39;",
    "&nbsp;",
    "\t",
    "\n",
    "\r\n",
    "  ",
    "\u00a0",
    "\u3000",
    "<end_of_text>",
    "<start_of_text>",
    "'s",
    "'ll",
    "don't",
    "I'M",
    "ﬁ",
    "½",
    "²",
]


def _fuzz(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(_ALPHABET, k=rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, TextTokenizer, Path]]:
    """Per architecture: open_clip's tokenizer, ours read from its saved file, and the file."""
    import open_clip

    list_models()  # registers xretrieve's own architectures (xr-tiny) with open_clip
    out = {}
    for name, ctx in MODELS.items():
        path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
        oc = open_clip.get_tokenizer(name)
        assert oc.context_length == ctx
        assert save_tokenizer(oc, path) is True
        out[name] = (oc, TextTokenizer(path, context_length=ctx), path)
    return out


def _assert_same(oc: Any, ours: TextTokenizer, texts: list[str]) -> None:
    want = oc(texts).numpy()
    got = ours(texts)
    assert got.dtype == np.int64
    assert got.shape == want.shape
    bad = [i for i in range(len(texts)) if not np.array_equal(got[i], want[i])]
    assert not bad, (
        f"{len(bad)} of {len(texts)} differ; first {texts[bad[0]]!r}: "
        f"open_clip {want[bad[0]].tolist()} ours {got[bad[0]].tolist()}"
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_fuzzed_texts_get_open_clips_ids(pairs: dict[str, Any], name: str) -> None:
    oc, ours, _ = pairs[name]
    _assert_same(oc, ours, _fuzz(2_000, seed=13))


@pytest.mark.parametrize("name", list(MODELS))
def test_literal_special_tokens_get_open_clips_ids(pairs: dict[str, Any], name: str) -> None:
    # open_clip matches a literal special token only where a new regex match starts: after a
    # letter, digit, space or the start, but not inside a run of punctuation ('!<end_of_text>').
    oc, ours, _ = pairs[name]
    texts = [
        "<end_of_text>",
        "x<end_of_text>",
        "5<start_of_text>",
        "a <end_of_text> b",
        "!<end_of_text>",
        "a.<end_of_text>",
        "(<start_of_text>)",
    ]
    _assert_same(oc, ours, texts)


@pytest.mark.parametrize("name", list(MODELS))
def test_long_texts_are_cut_with_the_end_token_kept(pairs: dict[str, Any], name: str) -> None:
    oc, ours, _ = pairs[name]
    ctx = MODELS[name]
    texts = ["word " * 200, "a " * 500, "猫" * 300, "x, " * 100 + "&amp;lt;" * 50]
    _assert_same(oc, ours, texts)
    got = ours(texts)
    assert (got[:, 0] == ours.sot).all()
    assert (got[:, -1] == ours.eot).all()  # cut, the last place holds the end token
    assert (got != 0).all(), "an over-long text fills every place"
    assert got.shape == (len(texts), ctx)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_empty_text_is_start_and_end(pairs: dict[str, Any], name: str) -> None:
    oc, ours, _ = pairs[name]
    _assert_same(oc, ours, ["", " ", "\n\t"])
    got = ours([""])[0]
    assert got[:2].tolist() == [ours.sot, ours.eot]
    assert not got[2:].any()
    assert ours([]).shape == (0, MODELS[name])


def test_other_tokenizers_are_not_saved(tmp_path: Path) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    for i, tok in enumerate(
        [
            SimpleTokenizer(clean="whitespace"),
            SimpleTokenizer(clean="canonicalize"),
            lambda texts: texts,
            object(),
        ]
    ):
        path = tmp_path / f"t{i}.json"
        assert save_tokenizer(tok, path) is False
        assert not path.exists()


def test_tokenizing_loads_no_torch(pairs: dict[str, Any]) -> None:
    oc, _, path = pairs["xr-tiny"]
    code = (
        "import json, sys\n"
        "from xretrieve.encoders.tokenize import TextTokenizer\n"
        f"t = TextTokenizer({str(path)!r}, context_length=16)\n"
        "ids = t(['a red dog on &amp;lt;grass&gt;', ''])\n"
        "print(json.dumps({'ids': ids.tolist(), 'torch': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["ids"] == oc(["a red dog on &amp;lt;grass&gt;", ""]).tolist()

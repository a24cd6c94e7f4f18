"""open_clip's CLIP tokenizer, run by the `tokenizers` library: text to ids without torch.

`save_tokenizer` (run once, when a model is converted; it imports open_clip) writes the
tokenizer's byte-level BPE as a ``tokenizer.json``; `TextTokenizer` reads it back and gives the
same ids as open_clip's `SimpleTokenizer`: the same cleaning (ftfy, HTML unescaping, spaces,
lower case), start and end tokens, cut to the context length with the end token kept, and
zero padding. A model whose tokenizer is anything else gets no file, and its converted
encoder tokenizes with open_clip.
"""

from __future__ import annotations

import functools
import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["TOKENIZER_FILE", "TextTokenizer", "save_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"
#: open_clip's pre-tokenising pattern (its `SimpleTokenizer.pat`, without the special tokens).
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def save_tokenizer(tokenizer: Any, path: str | os.PathLike[str]) -> bool:
    """Write open_clip `tokenizer` as a ``tokenizers`` file; False if it is not CLIP's plain BPE."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    if type(tokenizer) is not SimpleTokenizer or tokenizer.clean_fn is not _clean_lower:
        return False
    if tokenizer.reduction_fn is not None:
        return False
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    bpe = models.BPE(
        vocab=dict(tokenizer.encoder),
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
    )
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.save(str(path))
    return True


@functools.cache
def _specials() -> Any:
    import regex

    # open_clip's whole pattern: a special token is one only where a new match starts.
    return regex.compile("<start_of_text>|<end_of_text>|" + _PATTERN, regex.IGNORECASE)


def _clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class TextTokenizer:
    """Texts -> int64 ids (n, context_length), equal to open_clip's `SimpleTokenizer`."""

    def __init__(self, path: str | os.PathLike[str], *, context_length: int) -> None:
        from tokenizers import Tokenizer

        self._tk = Tokenizer.from_file(str(Path(path)))
        self.context_length = context_length
        vocab = self._tk.get_vocab()
        self.sot = vocab["<start_of_text>"]
        self.eot = vocab["<end_of_text>"]

    def __call__(self, texts: list[str]) -> npt.NDArray[np.int64]:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        cleaned = [_clean(t) for t in texts]
        for i, enc in enumerate(self._tk.encode_batch(cleaned)):
            body = self._with_specials(cleaned[i]) if "_of_text>" in cleaned[i] else enc.ids
            ids = [self.sot, *body, self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[i, : len(ids)] = ids
        return out

    def _with_specials(self, text: str) -> list[int]:
        """Ids of a text that spells out a special token (rare): piece by piece, as open_clip."""
        special = {"<start_of_text>": self.sot, "<end_of_text>": self.eot}
        ids: list[int] = []
        for piece in _specials().findall(text):
            ids += [special[piece]] if piece in special else self._tk.encode(piece).ids
        return ids

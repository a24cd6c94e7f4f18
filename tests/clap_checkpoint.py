"""A tiny CLAP checkpoint built locally (no download), for the CLAP tower and fitting tests.

`build_tiny_clap` saves a random-initialised `ClapModel` from a small `ClapConfig`, with a
word-level tokenizer built from a world's captions and a default `ClapFeatureExtractor`.
"""

from __future__ import annotations

import re
from pathlib import Path


def world_words(world: Path) -> list[str]:
    """The distinct lower-cased words and marks of a world's captions: the tiny vocabulary."""
    words = {
        w
        for p in sorted(world.rglob("*.txt"))
        for w in re.findall(r"\w+|[^\w\s]", p.read_text(encoding="utf-8").lower())
    }
    return sorted(words)


def build_tiny_clap(out: Path, words: list[str], *, seed: int = 0) -> Path:
    """Save a tiny random CLAP checkpoint folder (model, tokenizer, feature extractor)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # RoBERTa's ids: bos 0, pad 1, eos 2
    vocab = {w: i for i, w in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=32,
    )
    config = ClapConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 40,
        },
        # spec_size 256 is what the default feature extractor's 1001 x 64 mel frames need.
        audio_config={
            "patch_embeds_hidden_size": 8,
            "hidden_size": 16,
            "depths": [1, 1],
            "num_attention_heads": [2, 2],
            "window_size": 8,
            "spec_size": 256,
        },
        projection_dim=64,
    )
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ClapFeatureExtractor().save_pretrained(out)
    return out

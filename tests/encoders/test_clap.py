"""The CLAP adapter: a tiny locally built CLAP checkpoint mapped into a model folder's space.

No weights are downloaded: `tiny_clap` is a random-initialised `ClapModel` from a small
`ClapConfig`, saved with a word-level tokenizer built from the world's captions and a default
`ClapFeatureExtractor`. Its vectors mean nothing, so the tests check mechanics and the fit
itself (the map must predict CLIP text vectors of unseen sentences far better than chance).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import xretrieve
from xretrieve import store
from xretrieve.encoders import load_encoder
from xretrieve.encoders.audio_tower import AUDIO_CONFIG_FILE
from xretrieve.encoders.clap import (
    CLAP_MAP_FILE,
    RIDGE_GRID,
    ClapReport,
    add_clap,
    choose_ridge,
    collect_sentences,
    fit_ridge,
    fit_statistics,
    load_clap,
)
from xretrieve.errors import InputError, ModelError, ModelUnavailableError
from xretrieve.indexer import IndexOptions, index_folder


def _world_words(world: Path) -> list[str]:
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


@pytest.fixture(scope="session")
def tiny_clap(audio_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("clap") / "clap", _world_words(audio_world))


@pytest.fixture(scope="module")
def clap_model(
    base_model: Path, audio_world: Path, tiny_clap: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ClapReport]:
    """`base_model` plus the CLAP adapter fitted on the world's training captions."""
    folder = tmp_path_factory.mktemp("clapmodel") / "model"
    shutil.copytree(base_model, folder)
    return folder, add_clap(folder, tiny_clap, world=audio_world)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fit_ridge_recovers_an_exact_map_and_shrinks_with_ridge() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 12)) + 3.0).astype(np.float32)  # far from centred
    w0 = rng.standard_normal((12, 5)).astype(np.float32)
    b0 = rng.standard_normal(5).astype(np.float32)
    w, b = fit_ridge(x, x @ w0 + b0, ridge=0.0)
    np.testing.assert_allclose(w, w0, atol=1e-4)
    np.testing.assert_allclose(b, b0, atol=1e-3)
    shrunk, _ = fit_ridge(x, x @ w0 + b0, ridge=10.0)
    assert np.linalg.norm(shrunk) < 0.5 * np.linalg.norm(w0)
    # Fewer pairs than dimensions: ridge 0 is the minimum-norm solution, still finite.
    assert np.isfinite(fit_ridge(x[:5], (x @ w0)[:5], ridge=0.0)[0]).all()
    # Leave-one-out picks no shrinkage for an exact map and the most for pure noise.
    assert choose_ridge(x, x @ w0 + b0) == RIDGE_GRID[0]
    assert choose_ridge(x, rng.standard_normal((200, 5)).astype(np.float32)) == RIDGE_GRID[-1]


def test_fitted_map_predicts_clip_text_vectors_of_unseen_sentences(
    clap_model: tuple[Path, ClapReport], tiny_clap: Path, audio_world: Path
) -> None:
    _, report = clap_model
    fit = report.fit
    print("fit statistics:", json.dumps(report.to_dict()["fit"]))
    assert (report.clap_dim, report.dim) == (64, 32)
    assert fit.n_sentences == fit.n_fit + fit.n_heldout and fit.n_heldout >= 10
    assert fit.ridge_chosen and fit.ridge in RIDGE_GRID
    assert fit.r2_fit > 0.5 and fit.r2_heldout > 0.25
    assert fit.cosine_heldout > fit.cosine_baseline + 0.04
    assert fit.recall_at_1 >= 4 / fit.n_heldout  # chance is 1 / n_heldout
    # The pairing is what is learnt: the same vectors with sentences shuffled fit nothing.
    clap, tokenizer, _ = load_clap(tiny_clap)
    from xretrieve.encoders.clap import embed_clap_texts

    sentences = collect_sentences(world=audio_world)
    x = embed_clap_texts(clap, tokenizer, sentences)
    y = load_encoder(str(clap_model[0]), pretrained=None, device="cpu").encode_texts(sentences)
    _, again = fit_statistics(x, y)
    assert again == fit  # the report is reproducible from the same vectors
    _, shuffled = fit_statistics(x[np.random.default_rng(1).permutation(len(x))], y)
    print("shuffled control:", shuffled)
    assert shuffled.r2_heldout < 0.1 and shuffled.r2_heldout < fit.r2_heldout - 0.2
    assert shuffled.cosine_heldout < fit.cosine_heldout - 0.03


def test_adapter_loads_as_the_audio_tower_and_embeds_sound(
    clap_model: tuple[Path, ClapReport], base_model: Path, audio_world: Path
) -> None:
    folder, report = clap_model
    added = set(_digests(folder)) - set(_digests(base_model))
    assert added == {AUDIO_CONFIG_FILE, CLAP_MAP_FILE}
    base_files = _digests(base_model)
    assert {k: v for k, v in _digests(folder).items() if k in base_files} == base_files
    meta = json.loads((folder / AUDIO_CONFIG_FILE).read_text())
    enc = load_encoder(str(folder), pretrained=None, device="cpu", batch_size=4)
    assert meta["kind"] == "clap" and meta["trained_against"] == enc.spec.fingerprint
    assert meta["fit"]["n_sentences"] == report.fit.n_sentences
    assert enc.spec.towers == ("image", "text", "audio")
    assert enc.spec.audio_fingerprint == report.fingerprint == meta["fingerprint"]
    assert enc.audio_sample_rate == 48_000
    wavs = sorted((audio_world / "test").glob("*.wav"))[:3]
    vecs = enc.encode_audio(wavs)
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_audio(wavs), vecs, atol=1e-6)  # deterministic
    assert float(vecs[0] @ vecs[1]) < 0.9999
    # A short clip is repeated to fill CLAP's 10 s window, not padded with silence.
    tower = enc.audio_tower
    assert tower is not None
    cut = tower.windows(np.ones(4 * 48_000, np.float32))
    assert cut.shape == (1, 480_000) and cut[0, -1] == 0.0 and cut[0, 4 * 48_000 + 5] == 1.0


def test_indexing_puts_sounds_in_audio_shards_and_search_finds_them(
    clap_model: tuple[Path, ClapReport], audio_world: Path, tmp_path: Path
) -> None:
    folder, report = clap_model
    media = tmp_path / "media"
    shutil.copytree(audio_world / "test", media)
    enc = load_encoder(str(folder), pretrained=None, device="cpu", batch_size=8)
    n_wav = len(list(media.glob("*.wav")))
    got = index_folder(media, tmp_path / "idx", encoder=enc, options=IndexOptions(progress=False))
    assert got.audio == n_wav > 0
    manifest = store.read_manifest(tmp_path / "idx")
    assert manifest.rows_by_modality()["audio"] == n_wav
    assert manifest.model["audio_fingerprint"] == report.fingerprint
    idx = xretrieve.open_index(tmp_path / "idx", device="cpu")
    clip = sorted(media.glob("*.wav"))[1]
    same = idx.search(audio=clip, modality="audio", k=3)
    assert same[0].path == clip.name and same[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(idx.search(audio=clip, k=4)) == 4
    assert {h.modality for h in idx.search("a large red circle", modality="audio", k=2)} == {
        "audio"
    }


def test_wrong_clap_folder_and_too_few_sentences_are_refused(
    base_model: Path, tiny_clap: Path, audio_world: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(base_model, folder)
    with pytest.raises(ModelError, match="not a CLAP checkpoint folder") as e:
        add_clap(folder, base_model, world=audio_world)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelUnavailableError, match="CLAP folder not found"):
        add_clap(folder, tmp_path / "missing", world=audio_world)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_clap, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="cannot load the CLAP checkpoint"):
        add_clap(folder, no_weights, world=audio_world)
    few = tmp_path / "few.txt"
    few.write_text("a red circle\na blue star\n")
    with pytest.raises(InputError, match="at least 10"):
        add_clap(folder, tiny_clap, texts=few)
    with pytest.raises(InputError, match="--texts"):
        add_clap(folder, tiny_clap)
    with pytest.raises(InputError, match="ridge"):
        add_clap(folder, tiny_clap, world=audio_world, ridge=-1.0)
    assert not (folder / AUDIO_CONFIG_FILE).exists()  # nothing written on failure


def test_missing_transformers_says_how_to_install(
    clap_model: tuple[Path, ClapReport], tiny_clap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ModelError, match=re.escape("pip install -e '.[clap]'")):
        load_clap(tiny_clap)
    with pytest.raises(ModelError, match=re.escape("pip install -e '.[clap]'")):
        load_encoder(str(clap_model[0]), pretrained=None, device="cpu")


def test_changed_base_map_or_clap_folder_is_refused(
    clap_model: tuple[Path, ClapReport], tiny_clap: Path, audio_world: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(clap_model[0], folder)
    cfg = folder / AUDIO_CONFIG_FILE
    meta = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**meta, "trained_against": "0" * 32}))
    with pytest.raises(ModelError, match="other image/text weights"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    cfg.write_text(json.dumps(meta))
    blob = bytearray((folder / CLAP_MAP_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (folder / CLAP_MAP_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    shutil.copy(clap_model[0] / CLAP_MAP_FILE, folder / CLAP_MAP_FILE)
    other = build_tiny_clap(tmp_path / "other", _world_words(audio_world), seed=1)
    cfg.write_text(json.dumps({**meta, "clap_dir": str(other)}))
    with pytest.raises(ModelError, match="changed since"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    cfg.write_text(json.dumps({**meta, "clap_dir": str(tmp_path / "gone")}))
    with pytest.raises(ModelError, match="is gone"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    # add-clap repairs the folder even though its current adapter cannot load.
    add_clap(folder, tiny_clap, world=audio_world)
    assert "audio" in load_encoder(str(folder), pretrained=None, device="cpu").spec.towers


@pytest.mark.slow  # three CLI start-ups: about 17 s on an idle 2-core machine
def test_cli_adds_clap_end_to_end(
    base_model: Path, tiny_clap: Path, audio_world: Path, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "m"
    shutil.copytree(base_model, folder)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(collect_sentences(world=audio_world / "test")) + "\n")
    run = cli("add-clap", folder, tiny_clap, "--world", audio_world, "--texts", texts, "--json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["fit"]["n_sentences"] > 100 and got["fit"]["ridge_chosen"]
    assert json.loads((folder / AUDIO_CONFIG_FILE).read_text())["fingerprint"] == got["fingerprint"]
    run = cli("add-clap", folder, base_model, "--world", audio_world)
    assert run.returncode == 4 and "not a CLAP checkpoint folder" in run.stderr
    run = cli("add-clap", folder, tiny_clap)
    assert run.returncode == 2 and "--texts" in run.stderr

"""Fitting the CLAP adapter: the ridge map, its statistics, refusals, and the CLI.

No weights are downloaded: `tiny_clap` is a random-initialised CLAP checkpoint built locally
(`clap_checkpoint.build_tiny_clap`). Its vectors mean nothing, so the tests check mechanics and
the fit itself (the map must predict CLIP text vectors of unseen sentences far better than
chance).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xretrieve.encoders import load_encoder
from xretrieve.encoders.audio_tower import AUDIO_CONFIG_FILE
from xretrieve.encoders.clap import load_clap
from xretrieve.errors import InputError, ModelError, ModelUnavailableError
from xretrieve.train.clap_fit import (
    RIDGE_GRID,
    ClapReport,
    add_clap,
    choose_ridge,
    collect_sentences,
    embed_clap_texts,
    fit_ridge,
    fit_statistics,
)


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
    sentences = collect_sentences(world=audio_world)
    x = embed_clap_texts(clap, tokenizer, sentences)
    y = load_encoder(str(clap_model[0]), pretrained=None, device="cpu").encode_texts(sentences)
    _, again = fit_statistics(x, y)
    assert again == fit  # the report is reproducible from the same vectors
    _, shuffled = fit_statistics(x[np.random.default_rng(1).permutation(len(x))], y)
    print("shuffled control:", shuffled)
    assert shuffled.r2_heldout < 0.1 and shuffled.r2_heldout < fit.r2_heldout - 0.2
    assert shuffled.cosine_heldout < fit.cosine_heldout - 0.03


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
    with pytest.raises(InputError, match=r"sentences to fit the map on: texts .* world"):
        add_clap(folder, tiny_clap)
    with pytest.raises(InputError, match="ridge"):
        add_clap(folder, tiny_clap, world=audio_world, ridge=-1.0)
    assert not (folder / AUDIO_CONFIG_FILE).exists()  # nothing written on failure


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

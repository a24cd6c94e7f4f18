"""Audio-tower training: locked towers stay bit for bit, training pairs, the CLI, learning."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from recipes import QUICK_AUDIO as QUICK

from xretrieve.encoders import load_encoder
from xretrieve.encoders.audio_tower import AUDIO_CONFIG_FILE, AUDIO_WEIGHTS_FILE
from xretrieve.errors import FolderError, InputError
from xretrieve.train.audio import (
    DEFAULT_AUDIO_STEPS,
    AudioTrainConfig,
    find_audio_pairs,
    train_audio,
)
from xretrieve.train.clip import TrainConfig, train
from xretrieve.train.world import make_world
from xretrieve.train.world_audio import add_audio_to_world


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_training_leaves_image_and_text_towers_bit_for_bit(
    base_model: Path, audio_world: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(base_model, folder)
    before_files = _digests(folder)
    before = load_encoder(str(folder), pretrained=None, device="cpu")
    state = {k: v.clone() for k, v in before.model.state_dict().items()}
    texts = ["a large red circle in the top left", "a small blue star"]
    vec_before = before.encode_texts(texts)

    report = train_audio(folder, audio_world, config=QUICK)

    after_files = _digests(folder)
    assert set(after_files) - set(before_files) == {AUDIO_CONFIG_FILE, AUDIO_WEIGHTS_FILE}
    assert {k: after_files[k] for k in before_files} == before_files
    after = load_encoder(str(folder), pretrained=None, device="cpu")
    assert after.spec.fingerprint == before.spec.fingerprint
    assert after.spec.towers == ("image", "text", "audio")
    assert before.spec.towers == ("image", "text") and before.spec.audio_fingerprint is None
    assert after.spec.audio_fingerprint == report.fingerprint
    for k, v in after.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    np.testing.assert_array_equal(after.encode_texts(texts), vec_before)
    assert report.steps == 3 and report.n_sounds == 38 and report.n_images == 38
    assert report.n_captions == 3 * 38 and np.isfinite(report.final_loss)
    assert report.steps_per_second > 0 and report.threads >= 1


def test_same_seed_and_steps_give_the_same_tower(
    base_model: Path, audio_world: Path, tmp_path: Path
) -> None:
    prints = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folder = tmp_path / name
        shutil.copytree(base_model, folder)
        cfg = AudioTrainConfig(**{**QUICK.__dict__, "seed": seed, "threads": 1})
        prints.append(train_audio(folder, audio_world, config=cfg).fingerprint)
    assert prints[0] == prints[1] != prints[2]


def test_the_default_recipe_is_a_step_budget() -> None:
    cfg = AudioTrainConfig()
    assert cfg.max_seconds is None and cfg.max_steps == DEFAULT_AUDIO_STEPS == 1200


def test_train_audio_refuses_bad_inputs(base_model: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model folder"):
        train_audio("xr-tiny", tmp_path, config=QUICK)
    with pytest.raises(FolderError):
        train_audio(base_model, tmp_path / "nothing", config=QUICK)
    (tmp_path / "lonely.wav").write_bytes(b"")
    with pytest.raises(FolderError, match="at least 2"):
        find_audio_pairs(tmp_path)
    with pytest.raises(InputError):
        AudioTrainConfig(max_seconds=None, max_steps=None)
    with pytest.raises(InputError):
        AudioTrainConfig(text_weight=0, image_weight=0)


def test_pairs_take_captions_and_images_of_the_same_stem(audio_world: Path) -> None:
    pairs = find_audio_pairs(audio_world)  # a world folder means its train split
    assert len(pairs) == 38
    p = pairs[0]
    assert p.audio.parent.name == "train" and p.image == p.audio.with_suffix(".png")
    assert len(p.captions) == 3


@pytest.mark.slow
def test_cli_trains_and_evaluates_audio(
    base_model: Path, audio_world: Path, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "m"
    shutil.copytree(base_model, folder)
    run = cli("train-audio", folder, audio_world, "--max-steps", "2", "--batch-size", "8", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["steps"] == 2
    run = cli("eval", folder, "--world", audio_world, "--json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert set(got["recall"]) == {"audio->image", "image->audio", "text->audio", "audio->text"}
    assert set(got["text_to_image"]) == {"R@1", "R@5", "R@10"}  # the image/text part is there too
    assert got["n_sounds"] == 10
    run = cli("train-audio", tmp_path / "nope", audio_world, "--max-steps", "1")
    assert run.returncode == 4 and "error:" in run.stderr


@pytest.mark.slow
def test_short_training_retrieves_far_above_chance(tmp_path: Path) -> None:
    from xretrieve.train.evaluate_audio import evaluate_audio

    world = tmp_path / "w"
    make_world(world, n=400, seed=5, image_size=32)
    add_audio_to_world(world, seed=0)
    model = tmp_path / "m"
    train(
        world / "train",
        model,
        config=TrainConfig(
            model="xr-tiny", max_seconds=None, max_steps=150, batch_size=64, lr=3e-4
        ),
    )
    train_audio(
        model, world, config=AudioTrainConfig(max_seconds=None, max_steps=150, batch_size=64)
    )
    enc = load_encoder(str(model), pretrained=None, device="cpu")
    report = evaluate_audio(enc, world)
    print(report.format_table())
    # 150 steps of xr-tiny give a text tower with some concept structure but an image tower near
    # chance, so only the directions through text are held to a bar here (measured: R@5 0.24
    # and 0.23 against chance 0.067); the image directions are measured by the recipe run.
    for direction in ("text->audio", "audio->text"):
        assert report.recall[direction][5] > 2.5 * report.chance[direction][5], direction
        assert report.recall[direction][10] > 2 * report.chance[direction][10], direction

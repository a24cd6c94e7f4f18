"""Shared fixtures: a tiny deterministic world and a random-initialised tiny encoder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Remembered model specs and converted towers go to a cache of this run's own (subprocesses
# inherit it), never the user's: a test must not pass because an earlier run left a file.
os.environ.setdefault("XRETRIEVE_CACHE", tempfile.mkdtemp(prefix="xretrieve-test-cache-"))
from clap_checkpoint import build_tiny_clap, world_words
from recipes import QUICK_AUDIO

from xretrieve.encoders import Encoder, load_encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.train.audio import train_audio
from xretrieve.train.clap_fit import ClapReport, add_clap
from xretrieve.train.clip import TrainConfig, train
from xretrieve.train.world import make_world
from xretrieve.train.world_audio import add_audio_to_world

TINY = "xr-tiny"


@pytest.fixture(scope="session")
def tiny_encoder() -> Encoder:
    """A random-initialised (seeded) tiny open_clip model: fast, deterministic, meaningless."""
    return load_encoder(TINY, pretrained=None, device="cpu", batch_size=16)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated world (images + caption sidecars + labels), built once per run."""
    root = tmp_path_factory.mktemp("world") / "w"
    make_world(root, n=40, seed=7, image_size=32)
    return root


@pytest.fixture()
def media_dir(world_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the test split of the world."""
    dst = tmp_path / "media"
    shutil.copytree(world_dir / "test", dst)
    return dst


@pytest.fixture(scope="session")
def built_index(
    world_dir: Path, tiny_encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The world's test split indexed with the tiny encoder (read-only for tests)."""
    out = tmp_path_factory.mktemp("idx") / "index"
    index_folder(
        world_dir / "test", out, encoder=tiny_encoder, options=IndexOptions(progress=False)
    )
    return out


def run_cli(
    *args: str | os.PathLike[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `xretrieve` command as a subprocess."""
    exe = Path(sys.executable).with_name("xretrieve")
    cmd = [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "xretrieve.cli"]),
    ]
    return subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )


@pytest.fixture(scope="session")
def cli():  # type: ignore[no-untyped-def]
    """The `run_cli` function, as a fixture."""
    return run_cli


@pytest.fixture(scope="session")
def audio_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world whose scenes also sound (NAME.wav beside NAME.png)."""
    root = tmp_path_factory.mktemp("aworld") / "w"
    make_world(root, n=48, seed=11, image_size=32)
    add_audio_to_world(root, seed=0)
    return root


@pytest.fixture(scope="session")
def base_model(audio_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image/text model folder (2 steps: meaningless but real weights)."""
    out = tmp_path_factory.mktemp("base") / "model"
    cfg = TrainConfig(model="xr-tiny", max_seconds=None, max_steps=2, batch_size=16)
    train(audio_world / "train", out, config=cfg)
    return out


@pytest.fixture(scope="session")
def audio_model(
    base_model: Path, audio_world: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`base_model` plus a briefly trained audio tower: three towers in one folder."""
    out = tmp_path_factory.mktemp("audio") / "model"
    shutil.copytree(base_model, out)
    train_audio(out, audio_world, config=QUICK_AUDIO)
    return out


@pytest.fixture(scope="session")
def tiny_clap(audio_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("clap") / "clap", world_words(audio_world))


@pytest.fixture(scope="module")
def clap_model(
    base_model: Path, audio_world: Path, tiny_clap: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ClapReport]:
    """`base_model` plus the CLAP adapter fitted on the world's training captions."""
    folder = tmp_path_factory.mktemp("clapmodel") / "model"
    shutil.copytree(base_model, folder)
    return folder, add_clap(folder, tiny_clap, world=audio_world)

"""The encoder's identity: one weights fingerprint for every tower, and no training code loaded."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import torch

from xretrieve._fs import sha256_file
from xretrieve.encoders import Encoder, weights_fingerprint
from xretrieve.encoders.audio_tower import AudioTower, AudioTowerConfig, tower_fingerprint


def _reference_fingerprint(state: dict[str, torch.Tensor]) -> str:
    # The formula indexes were built with: changing it would orphan every index's fingerprint.
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def test_image_text_fingerprint_is_the_weights_fingerprint(tiny_encoder: Encoder) -> None:
    fp = tiny_encoder.spec.fingerprint
    assert fp == weights_fingerprint(tiny_encoder.model)
    assert fp == _reference_fingerprint(tiny_encoder.model.state_dict())
    # A change of one weight changes the print.
    state = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] += 1.0
    assert _reference_fingerprint(state) != fp


def test_audio_tower_fingerprint_leaves_out_the_filterbank() -> None:
    torch.manual_seed(0)
    tower = AudioTower(AudioTowerConfig(embed_dim=8, channels=(8, 8), pooled_time=2, hidden=16))
    learned = {k: v for k, v in tower.state_dict().items() if k != "filterbank"}
    assert tower_fingerprint(tower) == _reference_fingerprint(learned)
    assert tower_fingerprint(tower) == weights_fingerprint(tower, exclude=("filterbank",))
    assert tower_fingerprint(tower) != weights_fingerprint(tower)


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 9000  # more than one 1 MiB read
    (tmp_path / "f").write_bytes(blob)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(blob).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()


def test_encoders_never_import_training_code() -> None:
    code = (
        "import sys\n"
        "import xretrieve.encoders, xretrieve.encoders.audio_tower, xretrieve.encoders.clap\n"
        "import xretrieve.encoders.encoder, xretrieve.encoders.features\n"
        "print(sorted(m for m in sys.modules if m.startswith('xretrieve.train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

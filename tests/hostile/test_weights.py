"""Class 3: a pickle or damaged file offered as model weights is one line, and never runs."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from sandbox import Sandbox, one_line

from xretrieve.encoders import load_encoder
from xretrieve.errors import ModelError

MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "xretrieve" / "model_configs"


class _Payload:
    """Unpickling this writes into the victim folder: the sandbox fixture then fails."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.target, "pwned"))


def _files(box: Sandbox) -> dict[str, Path]:
    w = box.work
    evil = w / "evil.bin"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(box.victim / "pwned.txt")}, protocol=4))
    zipped = w / "evil_zip.pt"  # a torch zip checkpoint whose pickle holds an object
    torch.save({"state_dict": _Payload(box.victim / "pwned.txt")}, zipped)
    garbage = w / "garbage.bin"
    garbage.write_bytes(os.urandom(3000))
    empty = w / "empty.bin"
    empty.write_bytes(b"")
    return {"pickle": evil, "zip pickle": zipped, "garbage": garbage, "empty": empty}


def _model_folder(box: Sandbox, weights: Path, name: str) -> Path:
    cfg = json.loads((MODEL_CONFIGS / "xr-tiny.json").read_text())
    folder = box.work / f"model-{name}"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {}})
    )
    (folder / name).write_bytes(weights.read_bytes())
    return folder


@pytest.mark.parametrize("kind", ["pickle", "zip pickle", "garbage", "empty"])
def test_weights_that_are_not_tensors_are_one_model_error(sandbox: Sandbox, kind: str) -> None:
    path = _files(sandbox)[kind]
    with pytest.raises(ModelError) as e:
        load_encoder("xr-tiny", pretrained=str(path), device="cpu")
    assert "\n" not in str(e.value)
    for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
        folder = _model_folder(sandbox, path, name)
        with pytest.raises(ModelError) as e:
            load_encoder(str(folder), device="cpu")
        assert "\n" not in str(e.value), str(e.value)
        (folder / name).unlink()
        (folder / "open_clip_config.json").unlink()
        folder.rmdir()


def test_cli_refuses_pickled_weights_in_one_line(sandbox: Sandbox, built_index: Path, cli) -> None:  # type: ignore[no-untyped-def]
    files = _files(sandbox)
    folder = _model_folder(sandbox, files["pickle"], "open_clip_pytorch_model.bin")
    for args in (
        ("--model", "xr-tiny", "--pretrained", files["pickle"]),
        ("--model", folder),
        ("--model", "xr-tiny", "--pretrained", files["empty"]),
    ):
        r = cli("search", "red", "--index", built_index, *args, "--device", "cpu")
        assert r.returncode == 4, r.stderr
        line = one_line(r.stderr)
        assert "pickle" in line or "empty" in line, line

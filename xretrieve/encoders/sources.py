"""Where a model's weights come from, and what they were found to be, without loading them.

Loading a model (torch, open_clip, the weights) takes seconds; its `ModelSpec` is a few bytes.
Each time a model is loaded its spec is remembered under a *source key*: the model folder's
files, or the checkpoint file, by path, size and modification time; a pretrained tag by name
and open_clip's version; a random init by name, versions and config. A later run with the same
source reads the spec back (`recall_spec`) and can check an index, or find that nothing needs
encoding, without loading anything. A spec read back is trusted only until the model is
loaded: the loader compares the real fingerprint and forgets an entry that lied.

Rules: no torch, no open_clip here; the cache lives under `cache_root()` (``XRETRIEVE_CACHE``,
else ``$XDG_CACHE_HOME/xretrieve``, else ``~/.cache/xretrieve``); failing to write it is never
an error, and an unreadable entry is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from xretrieve._fs import atomic_write_bytes
from xretrieve.encoders.spec import ModelSpec
from xretrieve.errors import ModelError

__all__ = [
    "cache_root",
    "check_remembered",
    "converted_dir",
    "forget_spec",
    "local_folder",
    "note_config",
    "recall_spec",
    "remember_spec",
    "source_key",
]

#: Bumped when what a spec holds changes, so older entries are not read back.
_FORMAT = 1
_BUILTIN_CONFIGS = Path(__file__).parent.parent / "model_configs"
#: Digests of model configs registered in this process, by architecture name.
_registered: dict[str, str] = {}


def cache_root() -> Path:
    """The folder for remembered specs and converted towers of models that are not folders."""
    env = os.environ.get("XRETRIEVE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xretrieve"


def local_folder(model: str) -> Path | None:
    """The model folder `model` names (``/dir`` or ``local-dir:/dir``), or None for a name."""
    raw = model[len("local-dir:") :] if model.startswith("local-dir:") else model
    p = Path(raw).expanduser()
    return p.resolve() if p.is_dir() else None


def converted_dir(model: str, fingerprint: str) -> Path:
    """Where the converted towers of these weights live: beside a model folder, else the cache.

    A model folder that cannot be written to falls back to the cache root.
    """
    folder = local_folder(model)
    if folder is not None and os.access(folder, os.W_OK):
        return folder / "converted" / fingerprint
    return cache_root() / "converted" / fingerprint


def note_config(name: str, path: str | os.PathLike[str]) -> None:
    """Record the config file registered for `name`, so a random init keys on its contents."""
    try:
        _registered[name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        _registered.pop(name, None)


def _stat(p: Path) -> list[Any]:
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _config_digest(name: str) -> str:
    if name in _registered:
        return _registered[name]
    builtin = _BUILTIN_CONFIGS / f"{name}.json"
    return hashlib.sha256(builtin.read_bytes()).hexdigest() if builtin.is_file() else ""


def source_key(model: str, pretrained: str | None, *, audio: bool = True) -> str | None:
    """A key that changes whenever the weights `model` + `pretrained` name may have changed.

    None for sources that cannot be keyed cheaply (a hub address).
    """
    try:
        folder = local_folder(model)
        if folder is not None:
            files = sorted(_stat(f) for f in folder.iterdir() if f.is_file())
            parts: list[Any] = ["folder", str(folder), files, audio]
        elif model.startswith("hf-hub:"):
            return None
        elif (
            pretrained and pretrained.lower() != "none" and Path(pretrained).expanduser().is_file()
        ):
            f = Path(pretrained).expanduser().resolve()
            parts = ["file", model, str(f), _stat(f), _config_digest(model)]
        elif pretrained and pretrained.lower() != "none":
            parts = ["tag", model, pretrained, _version("open_clip_torch")]
        else:
            parts = ["random", model, _version("open_clip_torch"), _version("torch")]
            parts.append(_config_digest(model))
    except OSError:
        return None
    blob = json.dumps([_FORMAT, *parts], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _entry(key: str) -> Path:
    return cache_root() / "specs" / f"{key}.json"


def recall_spec(model: str, pretrained: str | None, *, audio: bool = True) -> ModelSpec | None:
    """The spec remembered for this source, or None (never seen, changed, or unreadable)."""
    key = source_key(model, pretrained, audio=audio)
    if key is None:
        return None
    try:
        with open(_entry(key), encoding="utf-8") as f:
            d = json.load(f)
        return ModelSpec.from_dict(d["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_spec(
    model: str, pretrained: str | None, spec: ModelSpec, *, audio: bool = True
) -> None:
    """Remember `spec` (in fp32, its precision is the caller's) for this source; best effort."""
    key = source_key(model, pretrained, audio=audio)
    if key is None:
        return
    d = spec.to_dict()
    d["precision"] = "fp32"
    try:
        _entry(key).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(_entry(key), json.dumps({"spec": d}, sort_keys=True).encode())
    except OSError:
        pass  # a read-only home: every run loads the model, as before


def check_remembered(
    remembered: ModelSpec, loaded: ModelSpec, source: tuple[str, str | None, bool]
) -> None:
    """Refuse with `ModelError` (and forget the entry) weights that are not the remembered ones."""
    if loaded.fingerprint != remembered.fingerprint:
        model, pretrained, audio = source
        forget_spec(model, pretrained, audio=audio)
        raise ModelError(
            f"the weights of {model} changed while in use (fingerprint "
            f"{loaded.fingerprint}, expected {remembered.fingerprint}); run again"
        )


def forget_spec(model: str, pretrained: str | None, *, audio: bool = True) -> None:
    """Drop the entry for this source (it named a fingerprint the weights no longer have)."""
    key = source_key(model, pretrained, audio=audio)
    if key is not None:
        with contextlib.suppress(OSError):  # an unusable cache holds nothing to forget
            _entry(key).unlink(missing_ok=True)

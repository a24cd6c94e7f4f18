"""The manifest's model.precision: one of the encoders' precisions, or refused as damage."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from xretrieve._types import PRECISIONS
from xretrieve.errors import IndexCorruptError
from xretrieve.store.schema import validate_manifest


@pytest.fixture(scope="module")
def manifest(built_index: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((built_index / "manifest.json").read_text())
    return data


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_validates(manifest: dict[str, Any], precision: str) -> None:
    m = copy.deepcopy(manifest)
    m["model"]["precision"] = precision
    validate_manifest(m)


def test_a_manifest_without_precision_validates(manifest: dict[str, Any]) -> None:
    m = copy.deepcopy(manifest)
    m["model"].pop("precision", None)  # indexes written before precisions existed
    validate_manifest(m)


@pytest.mark.parametrize("value", ["int4", "BF16", "", 7, [], None, {"p": "bf16"}])
def test_other_precisions_are_damage(manifest: dict[str, Any], value: Any) -> None:
    m = copy.deepcopy(manifest)
    m["model"]["precision"] = value
    with pytest.raises(IndexCorruptError) as e:
        validate_manifest(m, where="M")
    msg = str(e.value)
    assert msg.startswith("M: index damaged: model.precision"), msg
    assert "\n" not in msg

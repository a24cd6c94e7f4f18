"""The CLI's hints: keyed by error type and code, never by the words of a message."""

from __future__ import annotations

import inspect

import pytest
import typer

from xretrieve import errors
from xretrieve.cli._app import HINTS, fail, hint
from xretrieve.encoders.spec import check_precision
from xretrieve.errors import (
    FolderError,
    IndexCorruptError,
    IndexNotFoundError,
    InputError,
    ModelMismatchError,
    ModelUnavailableError,
    ShardMissingError,
    XRetrieveError,
)

ERROR_TYPES = {getattr(errors, n) for n in errors.__all__}


def _codes(cls: type[XRetrieveError]) -> set[str]:
    """The codes a class declares or inherits: its upper-case string constants."""
    return {v for k, v in inspect.getmembers(cls) if k.isupper() and isinstance(v, str)}


def test_every_hint_key_is_a_real_type_and_code() -> None:
    keys = [(cls, code) for cls, code, _ in HINTS]
    assert len(keys) == len(set(keys)), "a (type, code) pair keyed twice: the second never wins"
    for cls, code in keys:
        assert cls in ERROR_TYPES, cls
        assert code is None or code in _codes(cls), (cls, code)


def test_every_declared_code_has_a_hint() -> None:
    declared = {(cls, code) for cls in ERROR_TYPES for code in _codes(cls)}
    keyed = {(cls, code) for cls, code, _ in HINTS}
    # A subclass inherits its parent's codes; the parent's row is the one that counts.
    orphans = {
        (cls, code)
        for cls, code in declared
        if not any(issubclass(cls, k) and code == c for k, c in keyed)
    }
    assert not orphans, orphans


@pytest.mark.parametrize(
    ("error", "want"),
    [
        (ModelUnavailableError("x", code=ModelUnavailableError.OFFLINE), "--pretrained /path"),
        (ModelMismatchError("x"), "--model names another copy"),
        (IndexNotFoundError("x"), "builds one"),
        (IndexCorruptError("x"), "--full` rebuilds it"),
        (ShardMissingError("x"), "--full` rebuilds it"),
        (InputError("x", code=InputError.UNKNOWN_MODEL), "--model-config FILE"),
        (InputError("x", code=InputError.NO_CUDA), "--device cpu"),
        (InputError("x", code=InputError.PRECISION_MISMATCH), "--precision names the index's"),
        (InputError("x", code=InputError.CAPTION_COLUMN), "--column names it"),
        (InputError("x", code=InputError.SPLIT_UNCHOSEN), "--split NAME"),
        (FolderError("x", code=FolderError.SPLIT_UNCHOSEN), "--split NAME"),
        (FolderError("x", code=FolderError.NO_SOUNDS), "make-world --audio"),
    ],
)
def test_an_error_gets_the_hint_of_its_type_and_code(error: XRetrieveError, want: str) -> None:
    got = hint(error)
    assert got is not None and want in got


def test_the_words_of_a_message_choose_nothing() -> None:
    # The phrases the old table matched, with no code: no hint.
    assert hint(ModelUnavailableError("cannot fetch x: no network")) is None
    assert hint(InputError("torch sees no CUDA GPU")) is None
    assert hint(FolderError("it holds annotation files: choose a split")) is None
    # Another type carrying the same code string is not the keyed row.
    assert hint(ModelUnavailableError("x", code=InputError.NO_CUDA)) is None


def test_a_wrapped_error_keeps_its_causes_hint() -> None:
    try:
        try:
            raise ModelUnavailableError("offline", code=ModelUnavailableError.OFFLINE)
        except ModelUnavailableError as e:
            raise ModelUnavailableError(f"built with m, which cannot be loaded ({e})") from e
    except ModelUnavailableError as wrapped:
        assert wrapped.code is None
        assert hint(wrapped) == hint(wrapped.__cause__)  # type: ignore[arg-type]


def test_raise_sites_pass_their_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError) as info:
        check_precision("fp16", "cpu")
    assert info.value.code == InputError.GPU_ONLY_PRECISION
    with pytest.raises(InputError) as info:
        check_precision("int8", "cuda")
    assert info.value.code == InputError.CPU_ONLY_PRECISION
    with pytest.raises(typer.Exit) as exited:
        fail(info.value)
    assert exited.value.exit_code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: precision int8") and line.endswith("(hint: --device cpu)")

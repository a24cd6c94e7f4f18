"""The exception tree and the public surface."""

from __future__ import annotations

import inspect

import xretrieve
from xretrieve import errors


def test_every_error_derives_from_the_root() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)
    ]
    assert len(classes) >= 10
    for c in classes:
        assert issubclass(c, errors.XRetrieveError), c


def test_input_errors_are_value_errors_and_have_their_exit_code() -> None:
    assert issubclass(errors.EmptyQueryError, ValueError)
    codes = {
        c.exit_code
        for c in (errors.InputError, errors.FolderError, errors.ModelError, errors.IndexStoreError)
    }
    assert len(codes) == 4 and 0 not in codes


def test_media_error_names_path_and_reason() -> None:
    e = errors.MediaError("a/b.jpg", "empty file")
    assert str(e) == "a/b.jpg: empty file" and e.path == "a/b.jpg"


def test_public_surface_is_exactly_all() -> None:
    for name in xretrieve.__all__:
        assert getattr(xretrieve, name) is not None, name
    public = {n for n in dir(xretrieve) if not n.startswith("_")}
    assert public <= set(xretrieve.__all__)

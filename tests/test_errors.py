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


def test_input_errors_are_value_errors_and_exit_codes_live_in_the_cli() -> None:
    from xretrieve.cli._app import exit_code

    assert issubclass(errors.EmptyQueryError, ValueError)
    # A bad file met while indexing is reported, not the caller's fault: not an InputError.
    assert not issubclass(errors.MediaError, errors.InputError)
    assert not any(hasattr(c, "exit_code") for c in vars(errors).values() if isinstance(c, type))
    samples = [
        errors.InputError("x"),
        errors.FolderError("x"),
        errors.ModelError("x"),
        errors.IndexStoreError("x"),
    ]
    codes = [exit_code(e) for e in samples]
    assert codes == [2, 3, 4, 5]
    assert exit_code(errors.MediaError("a.jpg", "empty file")) == 2
    assert exit_code(errors.ShardMissingError("x")) == 5
    assert exit_code(errors.XRetrieveError("x")) == 1


def test_media_error_names_path_and_reason() -> None:
    e = errors.MediaError("a/b.jpg", "empty file")
    assert str(e) == "a/b.jpg: empty file" and e.path == "a/b.jpg"


#: The public surface, written out: a name added to or dropped from `__all__` must show here.
PUBLIC = {
    "CorpusReport", "EmptyQueryError", "Encoder", "FolderError", "Hit", "Hits", "Index",
    "IndexCorruptError", "IndexLockedError", "IndexNotFoundError", "IndexOptions", "IndexReport",
    "IndexStoreError", "InputError", "MediaError", "ModelError", "ModelMismatchError",
    "ModelSpec", "ModelUnavailableError", "NotAnIndexError", "SearchOptions", "ShardMissingError",
    "XRetrieveError",
    "__version__", "add_captions", "configure_process", "index_folder", "list_models", "load_encoder", "open_index",
    "register_model_config", "shutdown",
}  # fmt: skip


def test_public_surface_is_exactly_all() -> None:
    assert set(xretrieve.__all__) == PUBLIC
    for name in xretrieve.__all__:
        assert getattr(xretrieve, name) is not None, name
    # Every public name of the package's own namespace (after the lazy names loaded) is listed.
    public = {n for n in vars(xretrieve) if not n.startswith("_")}
    public -= {"annotations", "importlib", "TYPE_CHECKING", "Any"}
    public -= {"errors", "media", "encoders", "store", "indexer", "query", "serve", "cli", "train"}
    assert public <= PUBLIC, public - PUBLIC
    for name in errors.__all__:  # every error class is reachable from the top
        assert getattr(xretrieve, name) is getattr(errors, name)

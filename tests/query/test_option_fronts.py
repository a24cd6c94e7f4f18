"""The search options are declared once (`SearchOptions`): the CLI and HTTP fronts cannot drift.

Each front is read as its users meet it: the CLI's click parameters and its answers to bad
values, the HTTP request model's JSON schema fields and bounds.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from xretrieve.errors import InputError
from xretrieve.query.options import OPTIONS, OptionSpec, SearchOptions

pytest.importorskip("fastapi")


def _search_command() -> Any:
    """The click command typer makes of `xretrieve search` (typer vendors its own click)."""
    from xretrieve.cli import app

    return typer.main.get_command(app).commands["search"]  # type: ignore[attr-defined]


def _cli_params() -> dict[str, Any]:
    return {p.name: p for p in _search_command().params if p.name}


def _http_fields() -> dict[str, Any]:
    from xretrieve.serve.models import SearchRequest

    return dict(SearchRequest.model_fields)


def _bad_values(spec: OptionSpec) -> list[Any]:
    """Values just outside each bound of `spec`, and a wrong choice."""
    step = 1 if spec.kind is int else 0.01
    out: list[Any] = []
    if spec.ge is not None:
        out.append(spec.ge - step)
    if spec.le is not None:
        out.append(spec.le + step)
    if spec.choices is not None:
        out.append("nonsense")
    return out


BOUNDED = [(name, v) for name, spec in OPTIONS.items() for v in _bad_values(spec)]


def test_every_option_is_declared_with_help_and_a_default_that_passes_its_own_check() -> None:
    assert list(OPTIONS) == [f for f in SearchOptions.__dataclass_fields__]
    assert all(spec.help for spec in OPTIONS.values())
    SearchOptions(**{name: spec.default for name, spec in OPTIONS.items()})
    assert len(BOUNDED) >= 10  # k, rrf_k, alpha, oversample, mmr, dedup, modality, fusion


def test_cli_flags_have_the_options_names_defaults_help_and_types() -> None:
    params = _cli_params()
    for name, spec in OPTIONS.items():
        p = params.get(name)
        assert p is not None, f"--{name.replace('_', '-')} missing from `xretrieve search`"
        assert p.default == spec.default, name
        assert getattr(p, "help", None) == spec.help, name
        assert p.type_descriptor.annotation is spec.kind, name
        assert p.min is None and p.max is None, f"{name}: the CLI bounds it itself"


def test_http_fields_have_the_options_names_defaults_help_bounds_and_types() -> None:
    fields = _http_fields()
    hints = typing.get_type_hints(SearchOptions)
    for name, spec in OPTIONS.items():
        f = fields.get(name)
        assert f is not None, f"{name} missing from the HTTP SearchRequest"
        assert f.default == spec.default, name
        if name != "k":  # k's text adds the paging rule
            assert f.description == spec.help, name
        bounds = {type(m).__name__: m for m in f.metadata}
        assert getattr(bounds.get("Ge"), "ge", None) == spec.ge, name
        assert getattr(bounds.get("Le"), "le", None) == spec.le, name
        if spec.choices is not None:
            assert typing.get_args(f.annotation) == spec.choices, name
        else:
            assert f.annotation == hints[name], name


@pytest.mark.parametrize(("name", "value"), BOUNDED)
def test_cli_refuses_what_the_options_refuse_with_the_same_words(name: str, value: Any) -> None:
    with pytest.raises(InputError) as want:
        SearchOptions(**{name: value})
    flag = "-k" if name == "k" else f"--{name.replace('_', '-')}"
    from xretrieve.cli import app

    args = ["search", "red", flag, str(value), "--index", "/nonexistent"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert str(want.value) in " ".join(r.output.split())


@pytest.mark.parametrize(("name", "value"), BOUNDED)
def test_http_refuses_what_the_options_refuse(name: str, value: Any) -> None:
    from pydantic import ValidationError

    from xretrieve.serve.models import SearchRequest

    with pytest.raises(InputError):
        SearchOptions(**{name: value})
    with pytest.raises(ValidationError) as e:
        SearchRequest(text="red", **{name: value})
    assert e.value.errors()[0]["loc"] == (name,)

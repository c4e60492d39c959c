"""The Store's public surface is StoreContract, and it speaks in typed values: no method
returns a dict or a bare tuple (a row by position), however deeply nested."""

import contextlib
import dataclasses
import inspect
import types
import typing
from datetime import date, datetime
from typing import NamedTuple, Protocol

import pytest

from bot.models import Paper
from storage import Store, StoreContract
from storage.postgres import PgStore

LEAVES = (type(None), bool, int, float, str, bytes, datetime, date)
SEQUENCES = (list, set, frozenset)


def shape_problems(hint, where: str, seen: set | None = None) -> list[str]:
    """Why `hint` is not made of typed values: dicts, bare tuples, Any, unannotated parts."""
    seen = set() if seen is None else seen
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return [p for arg in args for p in shape_problems(arg, where, seen)]
    if origin in SEQUENCES:
        return shape_problems(args[0], f"{where}[item]", seen) if args else [f"{where}: {hint} without item type"]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: an immutable sequence of X
            return shape_problems(args[0], f"{where}[item]", seen)
        return [f"{where}: bare tuple {hint}"]
    if origin is contextlib.AbstractContextManager:  # transaction()
        return []
    if hint in LEAVES:
        return []
    named_tuple = isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")
    if named_tuple or isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if hint in seen:
            return []
        seen.add(hint)
        return [p for name, field in typing.get_type_hints(hint).items()
                for p in shape_problems(field, f"{where}.{name}", seen)]
    return [f"{where}: {hint!r} is not a typed value"]  # dict, Mapping, bare tuple, Any, object, ...


def public_methods(cls) -> dict[str, object]:
    return {name: member for name, member in inspect.getmembers(cls, callable) if not name.startswith("_")}


def return_problems(cls) -> list[str]:
    problems = []
    for name, method in public_methods(cls).items():
        hints = typing.get_type_hints(method)
        if "return" not in hints:
            problems.append(f"{cls.__name__}.{name}: no return annotation")
            continue
        problems += shape_problems(hints["return"], f"{cls.__name__}.{name}()")
    return problems


@pytest.mark.parametrize("cls", [StoreContract, Store, PgStore])
def test_no_store_method_returns_a_dict_or_a_bare_tuple(cls):
    assert return_problems(cls) == []


@pytest.mark.parametrize("cls", [Store, PgStore])
def test_the_contract_names_the_whole_public_surface_of_the_store(cls):
    assert set(public_methods(cls)) == set(public_methods(StoreContract))
    for name, method in public_methods(StoreContract).items():
        assert inspect.getdoc(method), f"StoreContract.{name} has no contract"
        ours = inspect.signature(getattr(cls, name))
        assert list(ours.parameters) == list(inspect.signature(method).parameters), name


def test_the_check_finds_dicts_and_bare_tuples_wherever_they_are():
    class Row(NamedTuple):
        id: int
        paper: Paper

    @dataclasses.dataclass(frozen=True)
    class Holder:
        counts: dict[str, int]

    class Bad(Protocol):
        def counts(self) -> dict[str, int]: ...
        def pair(self) -> tuple[int, int]: ...
        def pairs(self) -> list[tuple[str, int]]: ...
        def maybe(self) -> typing.Mapping[str, int] | None: ...
        def nested(self) -> list[Holder]: ...
        def anything(self) -> typing.Any: ...
        def unannotated(self): ...

    class Good(Protocol):
        def papers(self) -> list[Paper]: ...
        def rows(self) -> list[Row]: ...
        def ids(self) -> set[int] | None: ...
        def names(self) -> tuple[str, ...]: ...
        def nothing(self) -> None: ...

    assert sorted(p.split(":")[0] for p in return_problems(Bad)) == [
        "Bad.anything()", "Bad.counts()", "Bad.maybe()", "Bad.nested()[item].counts", "Bad.pair()", "Bad.pairs()[item]",
        "Bad.unannotated",
    ]
    assert return_problems(Good) == []

"""Config dataclasses from ``params.yaml`` mappings: unknown keys and wrong types named by key.

One checker for every section built into a dataclass (``preprocess``, ``train.data``, each
method's ``net`` / ``optim``), so ``batch_size: "eight"`` fails as ``train.data.batch_size: must be
int, got 'eight'`` before any comparison inside the dataclass can fail without naming its key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (parsed YAML) fits the annotation ``hint``; annotations it does not know
    pass (the dataclass checks them)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is list or args[-1] is Ellipsis) else Any
        return all(_matches(v, item) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (tuple, list):
        return f"a list of {_type_name(typing.get_args(hint)[0])}" if typing.get_args(hint) else "a list"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def check_types(cls, d: dict | None, where: str, fixed: tuple[str, ...] = ()) -> dict:
    """Check a params mapping against the fields of dataclass ``cls`` without building it.

    Args:
        cls: the dataclass. d: the mapping (None: empty). where: the dotted section for errors.
        fixed: field names the code sets (not accepted from params).

    Returns:
        ``d`` (``{}`` for None).

    Raises:
        ValueError: ``d`` is not a mapping; an unknown key (named, with the known ones); a value of
            the wrong type (``<where>.<key>: must be int, got 'eight'``).
    """
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ValueError(f"{where}: must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    for key, value in d.items():
        if not _matches(value, hints[key]):
            raise ValueError(f"{where}.{key}: must be {_type_name(hints[key])}, got {value!r}")
    return d


def typed_config(cls, d: dict | None, where: str, **fixed):
    """``cls(**d, **fixed)`` for a config dataclass, after checking every key of ``d``.

    Args:
        cls: the dataclass.
        d: the params mapping, e.g. ``params["train"]["data"]`` (None: empty).
        where: the dotted section named in errors, e.g. ``"train.data"``.
        fixed: arguments set by the code, not by params (not checked).

    Returns:
        The dataclass instance.

    Raises:
        ValueError: what :func:`check_types` raises, or what ``cls`` raises for a bad value.
    """
    return cls(**check_types(cls, d, where, tuple(fixed)), **fixed)

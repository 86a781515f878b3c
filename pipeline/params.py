"""Loading ``params.yaml`` and reading typed values from it, with errors that name the dotted key.

Every stage reads its section with :func:`load_params` + :func:`get`, so a bad value fails before
any work starts with a message such as ``manifest.datasets.crema_d.crowd_filter: must be one of
none, voice, face, multimodal (got 'vocie')``.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A missing or invalid parameter; the message starts with the dotted key (or the file)."""


def error_line(stage: str, path: str | Path, err: Exception) -> str:
    """The one line a stage CLI prints for a bad params file: ``<stage>: error: <file>: <key>: ...``
    (the file named once, also when the message already starts with it)."""
    message = str(err)
    return f"{stage}: error: {message}" if message.startswith(str(path)) else f"{stage}: error: {path}: {message}"


_REQUIRED = object()


def load_params(path: str | Path) -> dict:
    """Read a params YAML file.

    Args:
        path: the YAML file (usually ``params.yaml`` at the repository root).

    Returns:
        The parsed top-level mapping.

    Raises:
        ParamsError: the file does not exist, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:  # one line: where and what
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _type_name(type_: type | tuple[type, ...]) -> str:
    types = type_ if isinstance(type_, tuple) else (type_,)
    return " or ".join(t.__name__ for t in types)


def get(params: Mapping, key: str, type_: type | tuple[type, ...] = object, *, default: Any = _REQUIRED,
        choices: Collection | None = None) -> Any:
    """Read ``params[k1][k2]...`` for ``key = "k1.k2..."``, checking type and allowed values.

    A key that is absent or set to ``null`` yields ``default``. ``int`` never accepts a bool;
    ``float`` also accepts an int (returned as float).

    Args:
        params: the loaded params mapping.
        key: dotted path, e.g. ``"manifest.datasets.crema_d.root"``.
        type_: the expected type(s) of the value.
        default: the value for an absent/null key; omit to make the key required.
        choices: if given, the value must be one of these.

    Returns:
        The value (``default`` when absent).

    Raises:
        ParamsError: the key is required and missing, a parent is not a mapping, the value has
            the wrong type, or it is not one of ``choices``.
    """
    node: Any = params
    walked = []
    for part in key.split("."):
        if not isinstance(node, Mapping):
            raise ParamsError(f"{'.'.join(walked)}: expected a mapping, got {node!r}")
        walked.append(part)
        node = node.get(part)
        if node is None:
            break
    if node is None:
        if default is _REQUIRED:
            raise ParamsError(f"{key}: required key is missing")
        return default
    types = type_ if isinstance(type_, tuple) else (type_,)
    if float in types and isinstance(node, int) and not isinstance(node, bool):
        node = float(node)
    if not isinstance(node, types) or (isinstance(node, bool) and bool not in types and object not in types):
        raise ParamsError(f"{key}: must be {_type_name(type_)}, got {node!r}")
    if choices is not None and node not in choices:
        raise ParamsError(f"{key}: must be one of {', '.join(map(str, choices))} (got {node!r})")
    return node


def set_dotted(params: dict, key: str, value) -> None:
    """Set ``params[k1][k2]... = value`` (a deep copy) for ``key = "k1.k2..."``, creating mappings
    on the way (``--set`` overrides, presets).

    Raises: ParamsError: a parent on the way holds a non-mapping value.
    """
    node = params
    *parents, last = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{key}: {part} holds {child!r}, not a mapping")
        node = child
    node[last] = copy.deepcopy(value)


def has_dotted(params: Mapping, key: str) -> bool:
    """Whether ``params[k1][k2]...`` exists for ``key = "k1.k2..."`` (a null value counts)."""
    node = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True

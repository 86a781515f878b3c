"""Building network config dataclasses from ``params.yaml`` mappings."""

from __future__ import annotations

from dataclasses import asdict

from primitives.config import typed_config


def config_from_dict(cls, d: dict, where: str):
    """``cls(**d)`` for a config dataclass, refusing keys that are not fields (typos in params.yaml)
    and values of the wrong type (:func:`primitives.config.typed_config`).

    Args:
        cls: the dataclass.
        d: the mapping, e.g. ``params["train"]["methods"]["cvae"]["net"]``.
        where: the params section named in the error, e.g. ``"cvae.net"``.

    Raises:
        ValueError: an unknown key (named, with the known ones), a wrong type (named), or what ``cls``
            raises for a bad value.
    """
    return typed_config(cls, d, where)


def config_to_dict(cfg) -> dict:
    """A config dataclass as a plain dict (lists instead of tuples) for JSON / MLflow."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}

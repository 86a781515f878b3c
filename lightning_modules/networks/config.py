"""Building network config dataclasses from ``params.yaml`` mappings."""

from __future__ import annotations

from dataclasses import asdict, fields


def config_from_dict(cls, d: dict, where: str):
    """``cls(**d)`` for a config dataclass, refusing keys that are not fields (typos in params.yaml).

    Args:
        cls: the dataclass.
        d: the mapping, e.g. ``params["train"]["methods"]["cvae"]["net"]``.
        where: the params section named in the error, e.g. ``"cvae.net"``.

    Raises:
        ValueError: an unknown key (named, with the known ones), or what ``cls`` raises for a bad value.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    return cls(**d)


def config_to_dict(cfg) -> dict:
    """A config dataclass as a plain dict (lists instead of tuples) for JSON / MLflow."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}

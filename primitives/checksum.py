"""Checksums of local weight files (pretrained networks are never downloaded at run time)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["checked_sha256", "file_sha256", "hub_name_prefix"]

MIN_PREFIX = 8
"""Shortest hex prefix accepted as an expected digest (torch.hub file names carry 8)."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_name_prefix(path: str | Path) -> str | None:
    """The sha256 prefix in a torch.hub file name (``vgg19-dcbb9e9d.pth`` -> ``"dcbb9e9d"``), else None."""
    m = re.search(r"-([0-9a-f]{8,})\.pth$", Path(path).name)
    return m.group(1) if m else None


def checked_sha256(path: str | Path, expected: str | None = None, where: str | None = None) -> str:
    """The file's hex sha256, checked against ``expected`` when one is given.

    Args:
        path: local weight file.
        expected: the full hex digest, or a prefix of at least 8 hex digits (torch.hub's file
            names); case-insensitive. ``None`` skips the comparison.
        where: how to get the file (added to the not-found message), e.g. a pip package or URL.

    Raises:
        FileNotFoundError: the file does not exist (the message names it and ``where``).
        ValueError: the digest differs from ``expected`` (a wrong or corrupt file), or
            ``expected`` is not a hex string of 8..64 digits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}" + (f"; {where}" if where else ""))
    digest = file_sha256(path)
    if expected is None:
        return digest
    want = expected.lower()
    if not re.fullmatch(r"[0-9a-f]{%d,64}" % MIN_PREFIX, want):
        raise ValueError(f"expected sha256 for {path} must be 8..64 hex digits, got {expected!r}")
    if not digest.startswith(want):
        raise ValueError(f"checksum mismatch for {path}: sha256 {digest} does not match the expected {expected} "
                         "(wrong or corrupt file)")
    return digest

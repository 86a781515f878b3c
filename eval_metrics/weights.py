"""Checksums of local weight files (pretrained evaluators are never downloaded at run time)."""

from __future__ import annotations

import hashlib
from pathlib import Path


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


def checked_sha256(path: str | Path, expected: str | None) -> str:
    """The file's hex sha256, compared with ``expected`` when one is given (case-insensitive).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the digest differs from ``expected`` (a wrong or corrupt file).
    """
    digest = file_sha256(path)
    if expected is not None and digest != expected.lower():
        raise ValueError(f"checksum mismatch for {path}: sha256 {digest} does not match the expected {expected} "
                         "(wrong or corrupt file)")
    return digest

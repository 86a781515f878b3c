"""Records shared by the dataset readers: one :class:`ClipRow` per clip, one :class:`ManifestIssue` per problem.

Each reader (:mod:`.crema_d`, :mod:`.mead`, :mod:`.csv_list`) returns ``(rows, issues)``: rows
sorted by id with unique ids, and an issue for every clip it dropped (``kept=False``) or kept
despite a defect (``kept=True``). Nothing is dropped without an issue.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from primitives.vocab import EMOTIONS

SEXES: tuple[str, ...] = ("female", "male", "")
"""Allowed ``ClipRow.sex`` values ("" = unknown)."""

_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NOT_CLIPS = {"thumbs.db", "desktop.ini"}


def is_valid_id(value: str) -> bool:
    """True when ``value`` is a usable clip id / WebDataset key (letters, digits, ``_`` and ``-``)."""
    return bool(_ID_RE.match(value))


def sanitize_id(value: str) -> str:
    """Turn ``value`` into a valid id: accents dropped (``é`` -> ``e``), every other run of
    characters outside ``[A-Za-z0-9_-]`` replaced with ``_``. When a non-ASCII character other than
    an accent was lost that way (``ß``, CJK, emoji, ...), ``_`` + 8 hex digits of the SHA-256 of
    ``value`` are appended, so names that differ only there keep distinct ids (``Grüße 你好 clip`` /
    ``Grüße 世界 clip``). Deterministic; "" only for an empty ``value``."""
    import hashlib
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", value)
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", decomposed.encode("ascii", "ignore").decode()).strip("_")
    lost = any(not c.isascii() and not unicodedata.category(c).startswith("M") for c in decomposed)  # M: accents
    if lost:
        clean = f"{clean}_{hashlib.sha256(value.encode()).hexdigest()[:8]}".strip("_")
    return clean


def is_ignorable(path: Path) -> bool:
    """True for files that are clearly not clips (hidden files, OS thumbnails): skipped silently."""
    return path.name.startswith(".") or path.name.lower() in _NOT_CLIPS


@dataclass(frozen=True)
class ClipRow:
    """One clip of the manifest (one parquet row; fields in column order).

    Attributes:
        id: unique clip id, a valid WebDataset key (no dots or slashes).
        dataset: dataset name (``crema_d``, ``mead`` or the config name of a CSV list).
        video_path: video file, as configured (root joined with the relative path, not resolved).
        audio_path: separate audio file, or "" to use the video's own audio track.
        speaker: speaker / actor id.
        sex: ``"female"``, ``"male"`` or ``""`` (unknown).
        emotion: one of :data:`primitives.vocab.EMOTIONS`.
        intensity: 0 = unspecified, else the dataset's level (CREMA-D LO/MD/HI = 1/2/3, MEAD level n).
        sentence: sentence code (CREMA-D ``"IEO"``, MEAD clip index ``"001"``).
        split: ``"train"``, ``"val"``, ``"test"``, or ``""`` before splits are assigned.

    Raises:
        ValueError: (on construction) invalid id, emotion, sex or intensity.
    """

    id: str
    dataset: str
    video_path: str
    audio_path: str
    speaker: str
    sex: str
    emotion: str
    intensity: int
    sentence: str
    split: str = ""

    def __post_init__(self) -> None:
        if not is_valid_id(self.id):
            raise ValueError(f"invalid clip id {self.id!r}: use letters, digits, '_' and '-' only")
        if self.emotion not in EMOTIONS:
            raise ValueError(f"{self.id}: unknown emotion {self.emotion!r} (expected one of {EMOTIONS})")
        if self.sex not in SEXES:
            raise ValueError(f"{self.id}: sex must be one of {SEXES}, got {self.sex!r}")
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int) or self.intensity < 0:
            raise ValueError(f"{self.id}: intensity must be an int >= 0, got {self.intensity!r}")


@dataclass(frozen=True)
class ManifestIssue:
    """A problem found while building a manifest (one line of ``<name>.issues.jsonl``).

    Attributes:
        path: the file (or folder) concerned.
        problem: short code, e.g. ``"unparseable_name"``, ``"missing_audio"``.
        message: human-readable explanation naming the file.
        kept: whether the clip stays in the manifest (False: dropped, or not a clip at all).
        clip_id: the clip's id when known, else "".
    """

    path: str
    problem: str
    message: str
    kept: bool
    clip_id: str = ""


Candidate = tuple[ClipRow, list[ManifestIssue]]
"""A parsed row with the ``kept=True`` issues that belong to it (see :func:`finalize`)."""


def finalize(candidates: list[Candidate], issues: list[ManifestIssue]) -> tuple[list[ClipRow], list[ManifestIssue]]:
    """Sort rows by id and drop duplicate ids, keeping the first (stable: in the reader's order).

    Args:
        candidates: parsed rows with their own kept issues, in discovery order.
        issues: the reader's other issues (dropped files, file-level problems).

    Returns:
        ``(rows, issues)``: rows sorted by id, unique ids; all issues sorted by path/problem, with a
        ``duplicate_id`` issue per dropped duplicate (whose own issues are marked ``kept=False``).
    """
    rows: list[ClipRow] = []
    out = list(issues)
    seen: dict[str, ClipRow] = {}
    for row, row_issues in sorted(candidates, key=lambda c: c[0].id):
        first = seen.get(row.id)
        if first is None:
            seen[row.id] = row
            rows.append(row)
            out.extend(row_issues)
            continue
        out.extend(dataclasses.replace(i, kept=False) for i in row_issues)
        out.append(ManifestIssue(row.video_path, "duplicate_id",
                                 f"{row.video_path}: id {row.id!r} already used by {first.video_path}; dropped",
                                 kept=False, clip_id=row.id))
    out.sort(key=lambda i: (i.path, i.problem, i.clip_id))
    return rows, out

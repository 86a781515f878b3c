"""CSV list reader for users' own clips.

Columns ``video_path, speaker, emotion, intensity`` are required; ``audio_path, sex, sentence, id``
are optional. Relative paths are relative to the CSV's folder (joined, not resolved).

Policy (every problem is a :class:`~pipeline.datasets.ManifestIssue`):

* ``emotion``: a name from :data:`primitives.vocab.EMOTIONS` (case-insensitive), else
  ``unknown_emotion``, dropped;
* ``intensity``: a non-negative integer, empty = 0 (unspecified), else ``bad_intensity``, dropped;
* empty ``speaker`` -> ``missing_speaker``, dropped; missing video file -> ``missing_video``, dropped;
* ``id``: when given it must be a valid id (letters, digits, ``_``, ``-``), else ``bad_id``,
  dropped; when absent it is ``<speaker>_<video stem>`` with other characters replaced by ``_``;
* ``sex``: female/f/w, male/m, or empty/unknown -> ""; anything else -> ``unknown_sex``, kept with "";
* ``audio_path`` given but not a file -> ``missing_audio``, kept with ``audio_path=""``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.datasets import Candidate, ClipRow, ManifestIssue, finalize, is_valid_id, sanitize_id
from primitives.vocab import EMOTIONS

REQUIRED_COLUMNS: tuple[str, ...] = ("video_path", "speaker", "emotion", "intensity")
OPTIONAL_COLUMNS: tuple[str, ...] = ("audio_path", "sex", "sentence", "id")
_SEX = {"female": "female", "f": "female", "w": "female", "male": "male", "m": "male", "": "", "unknown": ""}


def _join(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def read_csv_list(path: str | Path, dataset: str = "csv") -> tuple[list[ClipRow], list[ManifestIssue]]:
    """Read a CSV list of clips into manifest rows (policy in the module docstring).

    Args:
        path: the CSV file.
        dataset: value of ``ClipRow.dataset``.

    Returns:
        ``(rows, issues)``: rows sorted by id (``split=""``), issues sorted by path.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a required column is missing (the message names it and the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV clip list not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        for column in REQUIRED_COLUMNS:
            if column not in header:
                raise ValueError(f"{path}: missing required column {column!r} "
                                 f"(required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(header) or 'none'})")
        reader.fieldnames = header
        records = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    issues: list[ManifestIssue] = []
    candidates = [c for line, record in enumerate(records, start=2)
                  if (c := _parse(record, f"{path}:{line}", path.parent, dataset, issues)) is not None]
    return finalize(candidates, issues)


def _parse(record: dict[str, str], where: str, base: Path, dataset: str,
           issues: list[ManifestIssue]) -> Candidate | None:
    """One CSV record -> a candidate row, or None after appending the issue that drops it."""
    video = _join(base, record["video_path"]) if record["video_path"] else None
    speaker, emotion, intensity = record["speaker"], record["emotion"].lower(), record["intensity"] or "0"
    clip_id = record.get("id") or sanitize_id(f"{speaker}_{video.stem if video else ''}")

    def drop(problem: str, message: str) -> None:
        target = str(video) if video else where
        issues.append(ManifestIssue(target, problem, f"{where} ({target}): {message}; dropped", False,
                                    clip_id if is_valid_id(clip_id) else ""))

    if video is None:
        drop("missing_video", "empty video_path")
    elif not speaker:
        drop("missing_speaker", "empty speaker")
    elif emotion not in EMOTIONS:
        drop("unknown_emotion", f"emotion {record['emotion']!r} is not one of {', '.join(EMOTIONS)}")
    elif not (intensity.isascii() and intensity.isdigit()):
        drop("bad_intensity", f"intensity {record['intensity']!r} is not a non-negative integer")
    elif not is_valid_id(clip_id):
        drop("bad_id", f"id {clip_id!r} is not usable (letters, digits, '_' and '-' only)")
    elif not video.is_file():
        drop("missing_video", "video file not found")
    else:
        return _row(record, clip_id, video, base, dataset, where)
    return None


def _row(record: dict[str, str], clip_id: str, video: Path, base: Path, dataset: str, where: str) -> Candidate:
    """Build the row of a valid record, with kept issues for missing audio / unknown sex."""
    kept = []
    audio_path = ""
    if record.get("audio_path"):
        audio = _join(base, record["audio_path"])
        if audio.is_file():
            audio_path = str(audio)
        else:
            kept.append(ManifestIssue(str(audio), "missing_audio", f"{where}: audio {audio} not found; kept, "
                                                                   "preprocessing uses the video's audio track",
                                      True, clip_id))
    sex = _SEX.get(record.get("sex", "").lower())
    if sex is None:
        kept.append(ManifestIssue(str(video), "unknown_sex", f"{where}: sex {record['sex']!r} not recognised "
                                                             "(female/male); kept with sex unknown", True, clip_id))
        sex = ""
    row = ClipRow(id=clip_id, dataset=dataset, video_path=str(video), audio_path=audio_path,
                  speaker=record["speaker"], sex=sex, emotion=record["emotion"].lower(),
                  intensity=int(record["intensity"] or 0), sentence=record.get("sentence", ""))
    return row, kept

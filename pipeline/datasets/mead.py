"""MEAD reader: ``<Speaker>/video/<view>/<emotion>/level_<n>/<idx>.mp4`` + the matching ``.m4a``.

Audio: ``<Speaker>/audio/<emotion>/level_<n>/<idx>.m4a`` (view-independent).

Row id ``<Speaker>_<emotion>_<n>_<idx>`` (e.g. ``M030_sad_3_001``); sex from the speaker id's
prefix (``M`` male, ``W`` female, else unknown); ``sentence`` is the clip index ``"001"``.

Policy (every problem is a :class:`~pipeline.datasets.ManifestIssue`):

* unknown emotion folder, bad ``level_<n>`` folder, clip name that is not digits, empty video,
  speaker folder name unusable in an id -> one issue per file, dropped;
* missing or empty m4a -> ``missing_audio`` / ``empty_audio``, kept with ``audio_path=""``;
* a speaker without ``video/<view>`` -> ``missing_view``; an m4a without its mp4 -> ``missing_video``;
* hidden files (``.DS_Store``...) are skipped silently; any other non-mp4 entry in the video
  tree, or a stray file at the root -> ``unexpected_file``. Other speaker-level entries (tarballs,
  other views) are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.datasets import Candidate, ClipRow, ManifestIssue, finalize, is_ignorable, is_valid_id
from primitives.vocab import EMOTIONS, MEAD_LEVELS

_LEVEL_RE = re.compile(r"^level_(\d+)$")
_SEX_PREFIX = {"M": "male", "W": "female"}


def _files_under(folder: Path) -> list[Path]:
    """Non-ignorable files below ``folder`` (sorted), or ``[folder]`` when there are none."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not is_ignorable(p)]
    return files or [folder]


def _level(name: str) -> int | None:
    match = _LEVEL_RE.match(name)
    return int(match.group(1)) if match and int(match.group(1)) in MEAD_LEVELS else None


def read_mead(root: str | Path, view: str = "front",
              dataset: str = "mead") -> tuple[list[ClipRow], list[ManifestIssue]]:
    """Read a MEAD download (one camera view) into manifest rows (policy in the module docstring).

    Args:
        root: folder holding one folder per speaker; paths in rows start with it as given.
        view: camera view folder under ``<Speaker>/video/`` (``front``, ``left_30``, ...).
        dataset: value of ``ClipRow.dataset``.

    Returns:
        ``(rows, issues)``: rows sorted by id (``split=""``), issues sorted by path.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MEAD root folder not found: {root} (expected <root>/<Speaker>/video/{view}/...)")
    issues: list[ManifestIssue] = []
    candidates: list[Candidate] = []
    for speaker_dir in sorted(root.iterdir()):
        if is_ignorable(speaker_dir):
            continue
        if not speaker_dir.is_dir():
            issues.append(ManifestIssue(str(speaker_dir), "unexpected_file",
                                        f"{speaker_dir}: not a speaker folder; ignored", False))
            continue
        video_dir = speaker_dir / "video" / view
        if not video_dir.is_dir():
            issues.append(ManifestIssue(str(video_dir), "missing_view",
                                        f"{video_dir}: speaker {speaker_dir.name} has no {view!r} videos", False))
            continue
        candidates.extend(_read_speaker(speaker_dir, video_dir, dataset, issues))
    return finalize(candidates, issues)


def _read_speaker(speaker_dir: Path, video_dir: Path, dataset: str, issues: list[ManifestIssue]) -> list[Candidate]:
    """Rows of one speaker's ``video/<view>`` tree; appends dropped files and orphan audio to ``issues``."""
    speaker = speaker_dir.name

    def drop(path: Path, problem: str, message: str, clip_id: str = "") -> None:
        issues.append(ManifestIssue(str(path), problem, f"{path}: {message}; dropped", False, clip_id))

    if not is_valid_id(speaker):
        for path in _files_under(video_dir):
            drop(path, "unparseable_name", f"speaker folder {speaker!r} is not usable in a clip id")
        return []
    candidates: list[Candidate] = []
    for emotion_dir in sorted(video_dir.iterdir()):
        if is_ignorable(emotion_dir):
            continue
        if not emotion_dir.is_dir() or emotion_dir.name not in EMOTIONS:
            for path in _files_under(emotion_dir):
                drop(path, "unknown_emotion",
                     f"emotion folder {emotion_dir.name!r} is not one of {', '.join(EMOTIONS)}")
            continue
        for level_dir in sorted(emotion_dir.iterdir()):
            if is_ignorable(level_dir):
                continue
            level = _level(level_dir.name) if level_dir.is_dir() else None
            if level is None:
                for path in _files_under(level_dir):
                    drop(path, "unknown_level", f"folder {level_dir.name!r} is not level_<n> with n in {MEAD_LEVELS}")
                continue
            for clip in sorted(level_dir.iterdir()):
                if is_ignorable(clip):
                    continue
                if not clip.is_file() or clip.suffix.lower() != ".mp4":
                    issues.append(ManifestIssue(str(clip), "unexpected_file", f"{clip}: not an .mp4 clip; ignored",
                                                False))
                elif not clip.stem.isdigit():
                    drop(clip, "unparseable_name", "clip name is not <digits>.mp4")
                elif clip.stat().st_size == 0:
                    drop(clip, "empty_video", "file is empty", f"{speaker}_{emotion_dir.name}_{level}_{clip.stem}")
                else:
                    candidates.append(_row(speaker_dir, clip, emotion_dir.name, level, dataset))
    _orphan_audio(speaker_dir, {c[0].id for c in candidates}, video_dir, issues)
    return candidates


def _row(speaker_dir: Path, clip: Path, emotion: str, level: int, dataset: str) -> Candidate:
    """The row of one well-named mp4, with a kept issue when its m4a is missing or empty."""
    speaker, idx = speaker_dir.name, clip.stem
    clip_id = f"{speaker}_{emotion}_{level}_{idx}"
    audio = speaker_dir / "audio" / emotion / f"level_{level}" / f"{idx}.m4a"
    kept = []
    if not audio.is_file() or audio.stat().st_size == 0:
        problem = "missing_audio" if not audio.is_file() else "empty_audio"
        kept.append(ManifestIssue(str(audio), problem, f"{audio}: {problem.replace('_', ' ')} for {clip}; kept, "
                                                       "preprocessing uses the video's audio track", True, clip_id))
    row = ClipRow(id=clip_id, dataset=dataset, video_path=str(clip), audio_path="" if kept else str(audio),
                  speaker=speaker, sex=_SEX_PREFIX.get(speaker[:1], ""), emotion=emotion, intensity=level,
                  sentence=idx)
    return row, kept


def _orphan_audio(speaker_dir: Path, clip_ids: set[str], video_dir: Path, issues: list[ManifestIssue]) -> None:
    """A ``missing_video`` issue for each well-placed m4a whose mp4 is not a row."""
    audio_root = speaker_dir / "audio"
    if not audio_root.is_dir():
        return
    for audio in sorted(audio_root.glob("*/level_*/*.m4a")):
        emotion, level = audio.parent.parent.name, _level(audio.parent.name)
        if is_ignorable(audio) or emotion not in EMOTIONS or level is None:
            continue
        clip_id = f"{speaker_dir.name}_{emotion}_{level}_{audio.stem}"
        expected = video_dir / emotion / audio.parent.name / f"{audio.stem}.mp4"
        if clip_id not in clip_ids and not expected.exists():
            issues.append(ManifestIssue(str(audio), "missing_video",
                                        f"{audio}: no video {expected}; audio ignored", False, clip_id))

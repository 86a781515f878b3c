"""CREMA-D reader: ``<root>/VideoFlash/<Actor>_<Sentence>_<EMO>_<LVL>.flv`` + ``<root>/AudioWAV/<same>.wav``.

Policy (every problem is a :class:`~pipeline.datasets.ManifestIssue`):

* unparseable name, unknown emotion code, unknown level, empty video -> dropped;
* missing or empty WAV -> kept with ``audio_path=""`` (preprocessing uses the FLV's audio track);
* actor missing from the demographics CSV -> kept with ``sex=""`` (one issue per clip); no
  demographics file at all -> one issue, every clip ``sex=""``;
* ``crowd_filter`` other than ``none``: the clip's crowd vote in ``summaryTable.csv``
  (VoiceVote / FaceVote / MultiModalVote) must be exactly the acted emotion's letter (a tie such
  as ``"N:H"`` is a mismatch) -> else ``crowd_vote_mismatch``, dropped; a clip absent from the
  table -> ``not_in_summary_table``, dropped. With ``none`` the table is not read;
* a WAV without an FLV -> ``missing_video`` (not a row); other non-hidden files -> ``unexpected_file``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pipeline.datasets import Candidate, ClipRow, ManifestIssue, finalize, is_ignorable
from primitives.vocab import CREMA_D_EMOTIONS, CREMA_D_LEVELS, CREMA_D_VOTES

CROWD_FILTERS: dict[str, str | None] = {
    "none": None, "voice": "VoiceVote", "face": "FaceVote", "multimodal": "MultiModalVote",
}
"""``crowd_filter`` value -> ``summaryTable.csv`` vote column."""

_NAME_RE = re.compile(r"^(?P<actor>\d+)_(?P<sentence>[A-Z]+)_(?P<emotion>[A-Za-z]+)_(?P<level>[A-Za-z]+)$")
_VOTE_LETTER = {name: letter for letter, name in CREMA_D_VOTES.items()}


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV as stripped strings; ValueError naming a missing column and the file."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        for column in required:
            if column not in header:
                raise ValueError(f"{path}: missing required column {column!r} (found: {', '.join(header)})")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def read_demographics(path: str | Path) -> dict[str, str]:
    """Map ActorID -> ``"female"`` / ``"male"`` / ``""`` (unrecognised Sex value).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the ``ActorID`` or ``Sex`` column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CREMA-D demographics CSV not found: {path}")
    sexes = {}
    for row in _read_csv(path, ("ActorID", "Sex")):
        sex = row["Sex"].lower()
        sexes[row["ActorID"]] = sex if sex in ("female", "male") else ""
    return sexes


def read_votes(path: str | Path, column: str) -> dict[str, str]:
    """Map clip name -> crowd vote (e.g. ``"A"`` or ``"N:H"``) from ``summaryTable.csv``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the ``FileName`` or vote column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CREMA-D summary table not found: {path}")
    return {row["FileName"]: row[column] for row in _read_csv(path, ("FileName", column))}


def _demographics_issue(path: str | Path | None, n_clips: int) -> ManifestIssue:
    what = f"demographics CSV {path} not found" if path is not None else "no demographics CSV configured"
    return ManifestIssue(str(path or ""), "missing_demographics",
                         f"{what}: sex unknown for all {n_clips} clips (splits are not stratified by sex)",
                         kept=True)


def read_crema_d(root: str | Path, demographics: str | Path | None = None, summary_table: str | Path | None = None,
                 crowd_filter: str = "none", dataset: str = "crema_d",
                 parts: tuple[str, ...] = ("",)) -> tuple[list[ClipRow], list[ManifestIssue]]:
    """Read a CREMA-D download into manifest rows (policy in the module docstring).

    Args:
        root: folder holding ``VideoFlash/`` and ``AudioWAV/``; paths in rows start with it as given.
        demographics: ``VideoDemographics.csv`` (ActorID, Sex, ...); None or absent -> sex unknown.
        summary_table: ``summaryTable.csv``; required unless ``crowd_filter`` is ``"none"``.
        crowd_filter: ``none`` | ``voice`` | ``face`` | ``multimodal``.
        dataset: value of ``ClipRow.dataset``.
        parts: sub-folders of ``root`` that are each a CREMA-D tree, read as one dataset (a clip
            name found in two parts is a ``duplicate_id``, the first part wins); ``("",)``: root itself.

    Returns:
        ``(rows, issues)``: rows sorted by id (``split=""``), issues sorted by path.

    Raises:
        FileNotFoundError: a part's ``VideoFlash`` or a needed summary table does not exist.
        ValueError: bad ``crowd_filter``, no part, or a metadata CSV lacks a required column.
    """
    if crowd_filter not in CROWD_FILTERS:
        raise ValueError(f"crowd_filter must be one of {', '.join(CROWD_FILTERS)}, got {crowd_filter!r}")
    if not parts:
        raise ValueError("parts must name at least one CREMA-D tree ('' for the root itself)")
    trees = [Path(root) / part for part in parts]
    for tree in trees:
        if not (tree / "VideoFlash").is_dir():
            raise FileNotFoundError(f"CREMA-D video folder not found: {tree / 'VideoFlash'} "
                                    "(expected <root>/<part>/VideoFlash/*.flv)")
    column = CROWD_FILTERS[crowd_filter]
    if column is not None and summary_table is None:
        raise ValueError(f"crowd_filter={crowd_filter!r} needs a summary_table (summaryTable.csv)")
    votes = read_votes(summary_table, column) if column is not None else None
    sexes = None
    if demographics is not None and Path(demographics).is_file():
        sexes = read_demographics(demographics)

    issues: list[ManifestIssue] = []
    candidates: list[Candidate] = []
    for tree in trees:
        _read_tree(tree, sexes, votes, crowd_filter, dataset, candidates, issues)
    if sexes is None:
        issues.append(_demographics_issue(demographics, len(candidates)))
    return finalize(candidates, issues)


def _read_tree(tree: Path, sexes: dict[str, str] | None, votes: dict[str, str] | None, crowd_filter: str,
               dataset: str, candidates: list[Candidate], issues: list[ManifestIssue]) -> None:
    """Append the candidates and issues of one ``VideoFlash/`` + ``AudioWAV/`` tree."""
    video_dir, audio_dir = tree / "VideoFlash", tree / "AudioWAV"
    stems = set()
    for path in sorted(video_dir.iterdir()):
        if is_ignorable(path):
            continue
        if not path.is_file() or path.suffix.lower() != ".flv":
            issues.append(ManifestIssue(str(path), "unexpected_file", f"{path}: not a .flv clip; ignored", False))
            continue
        stems.add(path.stem)
        candidate = _parse_clip(path, audio_dir, sexes, votes, crowd_filter, dataset, issues)
        if candidate is not None:
            candidates.append(candidate)
    if audio_dir.is_dir():
        for wav in sorted(audio_dir.glob("*.wav")):
            if wav.stem not in stems:
                issues.append(ManifestIssue(str(wav), "missing_video",
                                            f"{wav}: no {video_dir / (wav.stem + '.flv')}; audio ignored", False))


def _parse_clip(path: Path, audio_dir: Path, sexes: dict[str, str] | None, votes: dict[str, str] | None,
                crowd_filter: str, dataset: str, issues: list[ManifestIssue]) -> Candidate | None:
    """One FLV -> a candidate row, or None after appending the issue that drops it."""
    name, video = path.stem, str(path)

    def drop(problem: str, message: str) -> None:
        issues.append(ManifestIssue(video, problem, f"{video}: {message}; dropped", False,
                                    name if match else ""))

    match = _NAME_RE.match(name)
    if match is None:
        drop("unparseable_name", "name is not <Actor>_<Sentence>_<EMO>_<LVL>.flv")
        return None
    actor, sentence, code, level = match.group("actor", "sentence", "emotion", "level")
    if code not in CREMA_D_EMOTIONS:
        drop("unknown_emotion", f"unknown emotion code {code!r} (expected {', '.join(CREMA_D_EMOTIONS)})")
        return None
    if level not in CREMA_D_LEVELS:
        drop("unknown_level", f"unknown level {level!r} (expected {', '.join(CREMA_D_LEVELS)})")
        return None
    if path.stat().st_size == 0:
        drop("empty_video", "file is empty")
        return None
    emotion = CREMA_D_EMOTIONS[code]
    if votes is not None:
        if name not in votes:
            drop("not_in_summary_table", f"not in the summary table (crowd_filter={crowd_filter})")
            return None
        if votes[name] != _VOTE_LETTER[emotion]:
            drop("crowd_vote_mismatch", f"acted {emotion} ({_VOTE_LETTER[emotion]}) but the {crowd_filter} "
                                        f"crowd vote is {votes[name]!r}")
            return None
    kept: list[ManifestIssue] = []
    audio = audio_dir / f"{name}.wav"
    audio_path = str(audio)
    if not audio.is_file() or audio.stat().st_size == 0:
        problem = "missing_audio" if not audio.is_file() else "empty_audio"
        kept.append(ManifestIssue(str(audio), problem, f"{audio}: {problem.replace('_', ' ')} for {video}; kept, "
                                                       "preprocessing uses the video's audio track", True, name))
        audio_path = ""
    sex = ""
    if sexes is not None:
        sex = sexes.get(actor, "")
        if not sex:
            why = "not in the demographics CSV" if actor not in sexes else "has no recognised Sex value"
            kept.append(ManifestIssue(video, "missing_demographics",
                                      f"{video}: actor {actor} {why}; kept with sex unknown", True, name))
    row = ClipRow(id=name, dataset=dataset, video_path=video, audio_path=audio_path, speaker=actor, sex=sex,
                  emotion=emotion, intensity=CREMA_D_LEVELS[level], sentence=sentence)
    return row, kept

"""Each speaker's closed-mouth neutral frame: the identity image I_n of paper 002 (Sinha et al., §3.2
and A.1: "a neutral image ... with closed lips"), chosen from the training split.

Rule (ours; the papers name no frame): over the speaker's ``neutral`` clips, the frame whose inner
lips are most closed (:func:`mouth_opening`); a speaker without a neutral clip takes the same rule
over all its clips (``NeutralFrame.neutral`` is then False). Used by sinha's texture generator
(``optim.texture_source: speaker_neutral``, its neutral landmarks with ``optim.neutral: speaker``)
and by cvae's training reference (``optim.reference: speaker_neutral``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

__all__ = ["INNER_LIP_PAIRS", "NeutralFrame", "mouth_opening", "most_closed_neutral_frames",
           "speaker_neutral_frames", "replace_by_speaker"]

INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
"""Upper / lower inner-lip point pairs of the 68-point (iBUG) layout, 0-based."""


def mouth_opening(lmk: Tensor) -> Tensor:
    """Mean inner-lip gap (points 61-67, 62-66, 63-65) in inter-ocular units; (..., 68, 2) -> (...)."""
    iod = (lmk[..., 42:48, :].mean(-2) - lmk[..., 36:42, :].mean(-2)).norm(dim=-1)
    gaps = torch.stack([(lmk[..., a, :] - lmk[..., b, :]).norm(dim=-1) for a, b in INNER_LIP_PAIRS], -1).mean(-1)
    return gaps / iod


@dataclass(frozen=True)
class NeutralFrame:
    """One speaker's chosen frame.

    Attributes:
        key: the clip's shard key.
        t: the frame's index in that clip.
        neutral: False when the speaker has no neutral clip (the most closed frame of any emotion).
        opening: its :func:`mouth_opening` (inter-ocular units, >= 0).
        lmk: (68, 2) float32 landmarks, crop pixels.
        lmk_crop_size: the shard's ``meta.lmk_crop_size`` (None where the meta has none).
        image: (S, S, 3) uint8 frame, once read (:func:`speaker_neutral_frames` with ``frames_key``).
    """

    key: str
    t: int
    neutral: bool
    opening: float
    lmk: np.ndarray
    lmk_crop_size: int | None = None
    image: np.ndarray | None = None


def most_closed_neutral_frames(clips: Iterable[dict]) -> dict[str, NeutralFrame]:
    """Per speaker, its most closed-mouth neutral frame (module docstring), in one streamed pass.

    Args:
        clips: whole clips (``DecodeSample`` dicts) with ``key``, ``meta`` (``speaker``, ``emotion``)
            and ``lmk`` (T, 68, 2) crop pixels.

    Returns:
        speaker -> :class:`NeutralFrame` (``image`` None).
    """
    best: dict[str, NeutralFrame] = {}
    for clip in clips:
        lmk = np.asarray(clip["lmk"], dtype=np.float32)
        opening = mouth_opening(torch.from_numpy(lmk)).numpy()
        t = int(np.argmin(opening))
        meta = clip["meta"]
        speaker, neutral = str(meta.get("speaker", "")), meta["emotion"] == "neutral"
        old = best.get(speaker)
        if old is None or (neutral, -float(opening[t])) > (old.neutral, -old.opening):
            best[speaker] = NeutralFrame(str(clip.get("key", "")), t, neutral, float(opening[t]), lmk[t].copy(),
                                         meta.get("lmk_crop_size"))
    return best


def speaker_neutral_frames(datamodule, frames_key: str | None = None) -> dict[str, NeutralFrame]:
    """:func:`most_closed_neutral_frames` over every training clip (landmarks and meta only, streamed:
    a seeded sample of clips would leave MEAD's speakers whose neutral clips it missed to the
    fallback), then, with ``frames_key``, those frames' images (only the chosen clips are decoded).

    Args:
        datamodule: anything with ``iter_training_clips(keys, max_clips=..., clip_keys=...)``
            (:class:`datamodules.talking_face.TalkingFaceDataModule`).
        frames_key: ``frames_<S>`` to read the images from; None = landmarks only.

    Returns:
        speaker -> :class:`NeutralFrame`, ``image`` (S, S, 3) uint8 when ``frames_key`` is given.
    """
    chosen = most_closed_neutral_frames(datamodule.iter_training_clips(("lmk",), max_clips=None))
    if frames_key is not None:
        speaker_of = {frame.key: speaker for speaker, frame in chosen.items()}
        for clip in datamodule.iter_training_clips((frames_key,), clip_keys=frozenset(speaker_of)):
            speaker = speaker_of[clip["key"]]
            chosen[speaker] = replace(chosen[speaker], image=np.ascontiguousarray(clip[frames_key][chosen[speaker].t]))
    return chosen


def replace_by_speaker(speakers: Sequence[str], table: Mapping[str, tuple[Tensor, ...]],
                       *rows: Tensor) -> tuple[Tensor, ...]:
    """Copies of ``rows`` (each (B, ...)) in which sample i's row is ``table[speakers[i]]`` (one
    tensor per row, cast to the row's device and dtype); a speaker not in ``table`` keeps its rows.
    cvae's training reference (table: speaker -> (frame,)) and sinha's G_T source (speaker ->
    (frame, lmk)) with their ``speaker_neutral`` options.

    Raises:
        ValueError: ``speakers`` and a row differ in length.
    """
    if any(len(speakers) != len(row) for row in rows):
        raise ValueError(f"{len(speakers)} speakers for rows of {[len(row) for row in rows]} samples")
    rows = tuple(row.clone() for row in rows)
    for i, speaker in enumerate(speakers):
        for row, value in zip(rows, table.get(speaker, ())):
            row[i] = value.to(row.device, row.dtype)
    return rows

"""Each speaker's closed-mouth neutral frame (``primitives.speaker_neutral``), on clips with known
inner-lip gaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from primitives.speaker_neutral import most_closed_neutral_frames, mouth_opening, replace_by_speaker


def _lmk(gaps: list[float], iod: float = 2.0) -> np.ndarray:
    """(T, 68, 2) landmarks with eye centres ``iod`` apart and inner-lip gaps ``gaps`` (pixels)."""
    lmk = np.zeros((len(gaps), 68, 2), dtype=np.float32)
    lmk[:, 42:48, 0] = iod
    for t, gap in enumerate(gaps):
        lmk[t, 65:68, 1] = gap  # 67, 66, 65 under 61, 62, 63
    return lmk


def _clip(key: str, speaker: str, emotion: str, gaps: list[float]) -> dict:
    return {"key": key, "meta": {"speaker": speaker, "emotion": emotion, "lmk_crop_size": 256}, "lmk": _lmk(gaps)}


def test_mouth_opening_is_the_inner_lip_gap_in_inter_ocular_units():
    assert mouth_opening(torch.from_numpy(_lmk([0.5, 1.0, 0.0]))).tolist() == pytest.approx([0.25, 0.5, 0.0])


def test_neutral_clips_win_and_the_most_closed_frame_is_taken():
    clips = [_clip("a_ang", "A", "angry", [0.0, 0.0]),  # closed, but not neutral
             _clip("a_neu1", "A", "neutral", [0.6, 0.4, 0.8]),
             _clip("a_neu2", "A", "neutral", [0.5, 0.2, 0.3]),
             _clip("b_sad", "B", "sad", [0.9, 0.7]),  # B has no neutral clip: its most closed frame of any
             _clip("b_hap", "B", "happy", [0.3, 0.6])]
    chosen = most_closed_neutral_frames(clips)
    a, b = chosen["A"], chosen["B"]
    assert (a.key, a.t, a.neutral, a.lmk_crop_size) == ("a_neu2", 1, True, 256)
    assert a.opening == pytest.approx(0.1) and np.array_equal(a.lmk, _lmk([0.2])[0]) and a.image is None
    assert (b.key, b.t, b.neutral) == ("b_hap", 0, False) and b.opening == pytest.approx(0.15)


def test_replace_by_speaker_overwrites_only_known_speakers_rows_and_leaves_the_inputs():
    frames = torch.zeros(3, 2, 2, 3, dtype=torch.uint8)
    lmk = torch.zeros(3, 68, 2, dtype=torch.float64)
    table = {"a": (torch.full((2, 2, 3), 7, dtype=torch.uint8), torch.ones(68, 2, dtype=torch.float32))}
    out_frames, out_lmk = replace_by_speaker(["a", "b", "a"], table, frames, lmk)
    assert out_frames[:, 0, 0, 0].tolist() == [7, 0, 7] and out_lmk[:, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert out_lmk.dtype == torch.float64 and frames.sum() == 0 and lmk.sum() == 0  # copies, inputs kept
    with pytest.raises(ValueError, match="3 speakers"):
        replace_by_speaker(["a", "b", "a"], table, frames[:2])

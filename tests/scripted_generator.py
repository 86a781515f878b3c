"""A generator for protocol tests whose output encodes what it was given.

:class:`ScriptedGenerator` knows the real test clips (by their first frame). For each clip it is
asked to render it returns that clip's REAL frames with every value moved by exactly
``d = 1 + emotion + 8 * intensity`` (up where that stays <= 255, else down), so the protocol's
MSE of the clip is exactly ``d ** 2`` and each frame's PSNR ``20 log10(255 / d)`` -- but only when
every scored frame is compared with the real frame of the same instant and the clip's own label
and level reached ``generate``. It records every call's inputs for the test to compare with the clip.
"""

from __future__ import annotations

import numpy as np
import torch


def shift(frames: np.ndarray, d: int) -> np.ndarray:
    """uint8 frames with every value moved by exactly ``d`` (up if it stays <= 255, else down)."""
    up = frames.astype(np.int16) + d
    return np.where(up <= 255, up, frames.astype(np.int16) - d).astype(np.uint8)


def offset(emotion: int, intensity: int) -> int:
    """The per-clip value offset that encodes the label and level."""
    return 1 + emotion + 8 * intensity


class ScriptedGenerator:
    """``VideoGenerator`` over known real clips (dicts as ``pipeline.protocol.clips.split_clips``
    yields them, with ``frames_key``). ``calls``: one dict per rendered clip."""

    batch_clips = True

    def __init__(self, clips: list[dict], frames_key: str):
        self.by_reference = {clip[frames_key][0].tobytes(): clip for clip in clips}
        self.frames_key, self.calls = frames_key, []

    def generate(self, reference: torch.Tensor, mel: torch.Tensor, emotion: torch.Tensor, n_frames: int,
                 ref_lmk: torch.Tensor | None = None, intensity: torch.Tensor | None = None) -> torch.Tensor:
        videos = []
        for b in range(len(reference)):
            clip = self.by_reference[reference[b].numpy().tobytes()]  # KeyError: not a test clip's first frame
            level = 0 if intensity is None else int(intensity[b])
            self.calls.append({"key": clip["key"], "emotion": int(emotion[b]), "intensity": level,
                               "mel": mel[b].numpy(), "n_frames": n_frames,
                               "ref_lmk": None if ref_lmk is None else ref_lmk[b].numpy()})
            real = clip[self.frames_key][:n_frames]
            real = np.concatenate([real, np.repeat(real[-1:], n_frames - len(real), axis=0)])
            videos.append(shift(real, offset(int(emotion[b]), level)))
        return torch.from_numpy(np.stack(videos))

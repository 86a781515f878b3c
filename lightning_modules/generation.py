"""The one interface every video-generating method implements, and the copy-the-reference baseline.

The evaluation protocol renders each test clip from ONE reference frame (the clip's first frame),
the clip's own audio (mel) and its emotion label, then compares the rendering with the real clip.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class VideoGenerator(Protocol):
    """What ``pipeline.evaluate_video`` needs from a method.

    A generator may also set ``batch_clips = True``: then each clip's frames are the same (to float
    rounding) whether it is rendered alone or in one call beside longer clips whose per-frame inputs
    (``mel``, ``phones``, ...) its own were padded to by repeating their last row, its output cut
    back to its own length. The evaluation then renders ``evaluate.clips_per_forward`` clips per
    call. Methods whose frames depend on the clip's length (a window clamped at the clip's end, a
    clip-level statistic, one-shot tuning per reference) leave it unset: one clip per call.

    A generator whose frames do not depend on ``emotion`` sets ``takes_emotion = False`` (and may
    say where its emotion comes from in ``emotion_source``): the evaluation then draws no emotion
    grid for it (``pipeline.protocol.grids.emotion_grid``).

    A generator lists the scores beyond the shared protocol it offers in ``protocol_extras`` (names
    of ``pipeline.protocol.extras.EXTRAS``, each with the method it needs: ``dubbing`` -> ``dub``,
    ``edits`` -> ``edit``, ``autoencoder``, ``prompt_grid`` -> ``prompt_e_emo``, ``own_landmarks``
    -> ``test_metrics``, ``fine_tune``).
    """

    def generate(self, reference: torch.Tensor, mel: torch.Tensor, emotion: torch.Tensor,
                 n_frames: int, ref_lmk: torch.Tensor | None = None) -> torch.Tensor:
        """Render talking-face frames.

        Args:
            reference: (B, S, S, 3) uint8 RGB, one aligned face crop per clip.
            mel: (B, M, 80) float32 in [-4, 4], the driving audio's log-mel at 80 frames/s
                (M >= floor(3.2 * n_frames)).
            emotion: (B,) int64 in [0, 8), the target emotion (``primitives.vocab.EMOTIONS``).
            n_frames: frames to render at 25 fps.
            ref_lmk: (B, 68, 2) float32, the reference's landmarks in pixels of the shards' 256 px
                crop (``meta.lmk_crop_size``); landmark-driven methods need it, others ignore it.

        Returns:
            (B, n_frames, S, S, 3) uint8 RGB.
        """
        ...


def frames_to_chw(frames: torch.Tensor) -> torch.Tensor:
    """``(..., S, S, 3)`` uint8 RGB frames -> ``(..., 3, S, S)`` float32 in [0, 1]."""
    return frames.movedim(-1, -3).float() / 255.0


def chw_to_frames(images: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`frames_to_chw`: ``(..., 3, S, S)`` float in [0, 1] (clamped) ->
    ``(..., S, S, 3)`` uint8 RGB, contiguous."""
    return (images.clamp(0, 1) * 255).round().byte().movedim(-3, -1).contiguous()


class CopyReference(nn.Module):
    """Baseline that repeats the reference frame: no lip motion, perfect identity.

    It gives every metric a floor (PSNR/SSIM of a still face, LSE of a closed mouth, EmoAcc of the
    reference expression) that a real method must beat.
    """

    batch_clips = True
    takes_emotion = False
    emotion_source = "the reference frame's own expression"

    def generate(self, reference: torch.Tensor, mel: torch.Tensor, emotion: torch.Tensor,
                 n_frames: int, ref_lmk: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`VideoGenerator.generate`; ``mel``, ``emotion`` and ``ref_lmk`` are ignored."""
        if reference.dim() != 4 or reference.shape[-1] != 3:
            raise ValueError(f"reference must be (B, S, S, 3), got {tuple(reference.shape)}")
        return reference[:, None].expand(-1, n_frames, -1, -1, -1).contiguous()


GENERATORS: dict[str, type] = {"copy_reference": CopyReference}
"""Video-generating methods that need no training; trained ones load from their checkpoints."""

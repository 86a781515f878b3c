"""SyncNet's input windows: 5 video frames (lower face half) and the matching 16 mel rows.

Shared by the expert's training (``lightning_modules``), the generators' lip-sync losses and the
LSE evaluators (``eval_metrics.sync``), so all cut the same rows (Wav2Lip convention: 25 fps
video, 80 mel rows per second, video frame ``t`` starts at mel row ``int(3.2 t) == (16 t) // 5``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MEL_ROWS_PER_FRAME", "SYNC_FRAMES", "SYNC_MEL_ROWS", "clip_windows", "face_windows", "mel_start",
           "mel_windows"]

SYNC_FRAMES = 5
"""Video frames per sync window (0.2 s at 25 fps)."""
SYNC_MEL_ROWS = 16
"""Mel rows per sync window (0.2 s at 80 Hz)."""
MEL_ROWS_PER_FRAME = 3.2
"""Mel rows per video frame (80 Hz / 25 fps)."""


def mel_start(frame: Tensor | int) -> Tensor | int:
    """First mel row of video frame ``frame``: ``int(3.2 * frame)`` computed exactly as ``16 f // 5``
    (the same rows the DataModule's windows use). Works on ints and integer tensors."""
    return (16 * frame) // 5


def _as_starts(start: Tensor | int, batch: int, device: torch.device) -> Tensor:
    start = torch.as_tensor(start, device=device, dtype=torch.long)
    if start.ndim == 0:
        start = start.expand(batch)
    if start.shape != (batch,):
        raise ValueError(f"start must be an int or a (B,) tensor with B={batch}, got shape {tuple(start.shape)}")
    return start


def face_windows(frames: Tensor, start: Tensor | int) -> Tensor:
    """Cut 5-frame lower-half windows from a batch of clips.

    Args:
        frames: ``(B, T, S, S, 3)`` uint8 RGB crops (or float in [0, 1]).
        start: first frame, an int or ``(B,)`` int64 tensor, ``0 <= start <= T - 5``.

    Returns:
        ``(B, 15, S/2, S)`` float32 in [0, 1]: rows ``S/2 .. S`` of frames ``start .. start+4``,
        frame-major channel order (the SyncNet face input).
    """
    b, t, h, w, c = frames.shape
    start = _as_starts(start, b, frames.device)
    if int(start.min()) < 0 or int(start.max()) > t - SYNC_FRAMES:
        raise ValueError(f"face window starts must lie in [0, {t - SYNC_FRAMES}], got {start.tolist()}")
    idx = start[:, None] + torch.arange(SYNC_FRAMES, device=frames.device)  # (B, 5)
    win = frames[torch.arange(b, device=frames.device)[:, None], idx, h // 2:]  # (B, 5, S/2, S, 3)
    win = win.permute(0, 1, 4, 2, 3).reshape(b, SYNC_FRAMES * c, h - h // 2, w)
    return win.float() / 255.0 if frames.dtype == torch.uint8 else win.float()


def mel_windows(mel: Tensor, start: Tensor | int) -> Tensor:
    """Cut the 16-row mel windows matching 5-frame windows that start at video frame ``start``.

    Args:
        mel: ``(B, M, 80)`` float32 in [-4, 4], row 0 = video frame 0.
        start: first *video* frame, an int or ``(B,)`` int64 tensor; the window takes rows
            ``(16 start) // 5 .. + 16`` which must lie inside ``M``.

    Returns:
        ``(B, 1, 80, 16)`` float32 (mel bins x time), the SyncNet audio input.
    """
    b, m, n_mels = mel.shape
    start = _as_starts(start, b, mel.device)
    rows = mel_start(start)
    if int(rows.min()) < 0 or int(rows.max()) + SYNC_MEL_ROWS > m:
        raise ValueError(f"mel windows for frame starts {start.tolist()} exceed the {m} mel rows")
    idx = rows[:, None] + torch.arange(SYNC_MEL_ROWS, device=mel.device)  # (B, 16)
    win = mel[torch.arange(b, device=mel.device)[:, None], idx]  # (B, 16, 80)
    return win.transpose(1, 2).unsqueeze(1).float()


def clip_windows(frames: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
    """All aligned window pairs of one clip, one per frame position.

    Args:
        frames: ``(T, S, S, 3)`` uint8 RGB crops of one clip.
        mel: ``(M, 80)`` float32 mel of the same clip (row 0 = frame 0).

    Returns:
        ``faces (N, 15, S/2, S)`` and ``mels (N, 1, 80, 16)`` for window starts ``t = 0 .. N-1``,
        where ``N`` is the number of positions where both the 5 frames and the 16 mel rows exist
        (``N = T - 4`` when ``M >= floor(3.2 T)``).
    """
    t_frames, m = frames.shape[0], mel.shape[0]
    n = t_frames - SYNC_FRAMES + 1
    while n > 0 and mel_start(n - 1) + SYNC_MEL_ROWS > m:
        n -= 1
    if n < 1:
        raise ValueError(f"clip too short for one sync window: {t_frames} frames, {m} mel rows")
    starts = torch.arange(n, device=frames.device)
    faces = face_windows(frames[None].expand(n, *frames.shape), starts)
    mels = mel_windows(mel[None].expand(n, *mel.shape), starts)
    return faces, mels

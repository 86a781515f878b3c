"""Training targets whose speech window lies inside the loaded training window.

A centred speech window of W frames around frame ``t`` covers ``t - W // 2 .. t + W - W // 2 - 1``
(sinha's and emotalker's ``speech_windows``). Cut from a T-frame training window, a target near
either edge would hear its window clamped (edge frames repeated): audio shifted by up to W / 2
frames that inference, which has the whole clip, never gives. Drawing targets from the frames whose
whole window is inside avoids that without loading more context.
"""

from __future__ import annotations

import torch
from torch import Tensor


def inner_targets(batch: int, t_len: int, window: int, device: torch.device | str = "cpu") -> Tensor:
    """Random target frames whose centred ``window`` lies inside ``0 .. t_len - 1``.

    Args:
        batch: B, targets to draw (one per training window).
        t_len: T, frames per training window.
        window: W, speech-window length in video frames (>= 1).

    Returns:
        (B,) int64 uniform in ``[W // 2, T - W + W // 2]``; when T < W no frame qualifies and the
        whole ``[0, T - 1]`` is used (the caller's clamping then applies).
    """
    low, high = window // 2, t_len - window + window // 2  # inclusive bounds
    if high < low:
        low, high = 0, t_len - 1
    return torch.randint(low, high + 1, (batch,), device=device)

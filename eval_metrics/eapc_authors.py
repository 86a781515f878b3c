"""Paper 001 (EAPC) as its authors computed Table 1: their landmark and image metrics, labelled.

Read from the first author's public development repository (``cxnam-vnuhcmus/TalkingHeadProject``
at 5847f9a, ``my_framework/evaluation/`` and ``Evaluation.ipynb``; facts in
``../shared/reference/README.md``, "eapc-authors/"), written here from that description, to put
the published numbers and ours on the same footing. They differ from our protocol
(:mod:`eval_metrics.landmarks`, :mod:`eval_metrics.image`) in four ways:

* **Landmark regions**: M = points 48-67, F = points 0-47 (the mouth left out; ours: all 68).
* **No head-motion alignment** (§4.2 says there is one), point-wise mean Euclidean distance in the
  landmarks' own pixels, mean over points, frames and windows (their ``calculate_LMD`` /
  ``calculate_LMV`` with ``norm_distance = 1``).
* **Overlapping windows**: 25-frame windows every 3 frames of each clip, so middle frames weigh more.
* **PSNR / SSIM in greyscale on uint8 frames**: ``np.mean((a - b) ** 2)`` on ``uint8`` arrays
  wraps around modulo 256 twice (the difference and its square), so an error of 16 grey levels
  counts as 0 and one of 255 as 1: their PSNR is inflated. SSIM is scikit-image's on the grey uint8
  frames (data range 255, 7 x 7 window). A frame pair with zero "MSE" scores 100 dB, as theirs.

Keys (never mixed with ours): ``authors_mouth_ld``, ``authors_mouth_lvd``, ``authors_face_ld``,
``authors_face_lvd``, ``authors_psnr_gray_wrap``, ``authors_ssim_gray``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from eval_metrics.landmarks import _ld_update, _lvd_update

AUTHORS_REGIONS = {"mouth": range(48, 68), "face": range(0, 48)}
"""The authors' M (48-67) and F (0-47) point sets."""
WINDOW, STRIDE = 25, 3
"""Their 25-frame windows, taken every 3 frames."""


def strided_windows(lmk: Tensor, window: int = WINDOW, stride: int = STRIDE) -> Tensor:
    """(T, K, 2) -> (N, window, K, 2): windows starting at 0, stride, 2 stride, ... that fit in T
    (N = 0 when T < window).

    Raises: ValueError: ``lmk`` is not (T, K, 2).
    """
    if lmk.ndim != 3 or lmk.shape[-1] != 2:
        raise ValueError(f"landmarks must be (T, K, 2), got {tuple(lmk.shape)}")
    if len(lmk) < window:
        return lmk.new_zeros((0, window, *lmk.shape[1:]))
    return lmk.unfold(0, window, stride).permute(0, 3, 1, 2)  # (N, K, 2, window) -> (N, window, K, 2)


class AuthorsLandmarkScores(Metric):
    """The authors' M-LD, M-LVD, F-LD, F-LVD (module docstring): update with one clip's generated
    and real landmarks ``(T, 68, 2)`` float (pixels); its stride-3 windows are scored by
    :mod:`eval_metrics.landmarks`' sums without alignment. Every window has the same number of
    frames and points, so the overall mean equals their mean over windows of per-window means.
    Sums and counts are summed over DDP ranks.

    ``compute()``: dict of the four ``authors_*`` keys, float, >= 0 (NaN before any window).
    """

    full_state_update = False
    KEYS = ("mouth_ld", "mouth_lvd", "face_ld", "face_lvd")

    def __init__(self, window: int = WINDOW, stride: int = STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.window, self.stride = int(window), int(stride)
        for name in self.KEYS:
            self.add_state(f"{name}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        p = strided_windows(preds, self.window, self.stride)
        g = strided_windows(target, self.window, self.stride)
        for region, idx in AUTHORS_REGIONS.items():
            for name, update in (("ld", _ld_update), ("lvd", _lvd_update)):
                total, count = update(p, g, idx, align=False)
                getattr(self, f"{region}_{name}_sum").add_(total.to(torch.float64).cpu())
                getattr(self, f"{region}_{name}_count").add_(count.cpu())

    def compute(self) -> dict[str, float]:
        out = {}
        for name in self.KEYS:  # float64 (eval_metrics.landmarks' compute returns float32)
            total, count = getattr(self, f"{name}_sum"), getattr(self, f"{name}_count").item()
            out[f"authors_{name}"] = (total / count).item() if count else float("nan")
        return out


def gray(frames: Tensor) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB -> (N, S, S) uint8 grey, as ``cv2.imread(..., IMREAD_GRAYSCALE)``
    reads their saved frames (ITU-R BT.601 weights, rounded)."""
    import cv2

    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames.cpu().numpy()])


def psnr_gray_wrap(a: np.ndarray, b: np.ndarray) -> float:
    """The authors' PSNR of two grey uint8 frames (S, S): ``20 log10(255 / sqrt(mean((a - b) ** 2)))``
    evaluated in uint8 arithmetic (wrap-around modulo 256), 100 when that mean is 0."""
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError("the authors' PSNR is defined on uint8 frames (its bug is uint8 wrap-around)")
    mse = float(np.mean((a - b) ** 2))
    return 100.0 if mse == 0 else 20 * np.log10(255.0 / np.sqrt(mse))


class AuthorsImageScores(Metric):
    """The authors' PSNR and SSIM per frame (module docstring), averaged over every frame scored:
    update with generated and real frames ``(N, S, S, 3)`` uint8 RGB. ``compute()``: dict
    ``authors_psnr_gray_wrap`` (dB, their bug included) and ``authors_ssim_gray`` (NaN before any frame)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("psnr_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ssim_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        from skimage.metrics import structural_similarity

        for a, b in zip(gray(preds), gray(target)):
            self.psnr_sum += psnr_gray_wrap(a, b)
            self.ssim_sum += float(structural_similarity(a, b))
            self.frames += 1

    def compute(self) -> dict[str, float]:
        n = self.frames.item()
        return {"authors_psnr_gray_wrap": (self.psnr_sum / n).item() if n else float("nan"),
                "authors_ssim_gray": (self.ssim_sum / n).item() if n else float("nan")}

"""2-D similarity fits and affine crops shared by preprocessing, metrics and evaluators."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["square_crop_matrix", "umeyama", "warp_frames"]


def umeyama(src: Tensor, dst: Tensor, eps: float = 1e-12) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` onto ``dst``
    (Umeyama 1991, eq. 40-42; reflections excluded), fitted per leading index, vectorised.

    Args:
        src: ``(..., K, 2)`` float points, K >= 2.
        dst: ``(..., K, 2)`` corresponding points; its leading dims broadcast against ``src``'s.
        eps: floor on the variance of ``src`` (all points equal -> scale 0, no NaN).

    Returns:
        ``(..., 2, 3)`` matrices ``M`` (dtype of the inputs) with ``dst ~= src @ M[..., :2].mT +
        M[..., 2]``, the ``cv2.warpAffine`` convention.
    """
    k = src.shape[-2]
    mu_src = src.mean(dim=-2, keepdim=True)  # (..., 1, 2)
    mu_dst = dst.mean(dim=-2, keepdim=True)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.mT @ src_c / k  # (..., 2, 2)
    u, sig, vh = torch.linalg.svd(cov)
    det = torch.linalg.det(u) * torch.linalg.det(vh)
    d = torch.where(det < 0, -torch.ones_like(det), torch.ones_like(det))
    diag = torch.stack([torch.ones_like(d), d], dim=-1)  # (..., 2)
    rot = (u * diag.unsqueeze(-2)) @ vh  # U diag(1, d) V^T
    var_src = (src_c ** 2).sum(dim=(-1, -2)) / k
    scale = ((sig * diag).sum(dim=-1) / var_src.clamp_min(eps))[..., None, None]  # (..., 1, 1)
    linear = scale * rot  # (..., 2, 2)
    shift = mu_dst.mT - linear @ mu_src.mT  # (..., 2, 1)
    return torch.cat([linear, shift], dim=-1)


def square_crop_matrix(centre: tuple[float, float], side: float, size: int) -> np.ndarray:
    """Affine map taking the axis-aligned square of ``side`` pixels centred at ``centre`` (x, y)
    onto a ``size`` x ``size`` output (pixel coordinates as ``cv2.warpAffine``); used to cut an
    evaluator's input (ArcFace, FER2013) out of our aligned crops.

    Returns:
        (2, 3) float64 matrix for :func:`warp_frames`.
    """
    k = size / side  # output px per input px
    return np.array([[k, 0.0, size / 2 - k * centre[0]], [0.0, k, size / 2 - k * centre[1]]])


def warp_frames(frames: np.ndarray, matrices: np.ndarray, size: int) -> np.ndarray:
    """Apply per-frame affine transforms and crop.

    Args:
        frames: (T, H, W, 3) or (T, H, W) uint8.
        matrices: (T, 2, 3) float affine matrices (or (2, 3): the same for every frame).
        size: output side in pixels.

    Returns:
        (T, size, size[, 3]) uint8, bilinear; pixels outside the frame replicate its border.
    """
    if matrices.ndim == 2:
        matrices = np.repeat(matrices[None], len(frames), axis=0)
    return np.stack([
        cv2.warpAffine(f, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for f, m in zip(frames, matrices)
    ])


def resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    """Resize (T, S, S, 3) uint8 crops to (T, size, size, 3): area averaging (no aliasing) when
    shrinking, as the preprocess stage makes its smaller crops from the largest; bilinear when growing."""
    if crops.shape[1] == size:
        return crops
    interpolation = cv2.INTER_AREA if size < crops.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c, (size, size), interpolation=interpolation) for c in crops])

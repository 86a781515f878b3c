"""Similarity-transform face alignment and cropping.

Five points (eye centres, nose tip, mouth corners) are mapped onto a template by a least-squares
similarity transform (Umeyama 1991). The template is ArcFace's 112 px five-point template, scaled
down by ``face_scale`` around the crop centre so the crop shows the whole head, as talking-face
crops do (``face_scale = 1`` gives ArcFace's tight recognition crop).
"""

from __future__ import annotations

import numpy as np
import torch

from primitives.geometry import umeyama

# ArcFace's five-point template (insightface), divided by its 112 px crop size.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
) / 112.0


def five_points(lmk68: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from 68-point landmarks.

    Args:
        lmk68: (..., 68, 2) landmarks.

    Returns:
        (..., 5, 2) in the same units, ordered as ``ARCFACE_TEMPLATE``.
    """
    return np.stack(
        [lmk68[..., 36:42, :].mean(-2), lmk68[..., 42:48, :].mean(-2), lmk68[..., 30, :],
         lmk68[..., 48, :], lmk68[..., 54, :]],
        axis=-2,
    )


def crop_transforms(lmk68: np.ndarray, size: int, face_scale: float, mode: str = "clip") -> np.ndarray:
    """Per-frame similarity transforms from frame pixels to a ``size`` x ``size`` face crop.

    Args:
        lmk68: (T, 68, 2) landmarks in frame pixels.
        size: crop side in pixels.
        face_scale: template size relative to ArcFace's tight crop, in (0, 1].
        mode: ``"clip"``: one transform fitted to all frames' points (head motion stays in the
            video, the crop does not jitter); ``"frame"``: one per frame (head motion removed).

    Returns:
        (T, 2, 3) float64 affine matrices.

    Raises:
        ValueError: unknown ``mode``.
    """
    template = (0.5 + face_scale * (ARCFACE_TEMPLATE - 0.5)) * size  # (5, 2) crop pixels
    points = five_points(lmk68.astype(np.float64))  # (T, 5, 2)
    if mode == "clip":
        matrix = umeyama(torch.from_numpy(points.reshape(-1, 2)), torch.from_numpy(template).repeat(len(points), 1))
        return np.repeat(matrix.numpy()[None], len(points), axis=0)
    if mode == "frame":
        return umeyama(torch.from_numpy(points), torch.from_numpy(template)).numpy()  # (T, 2, 3)
    raise ValueError(f"preprocess.align must be 'clip' or 'frame', got {mode!r}")


def transform_points(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Map (T, K, C) points (x, y[, z]) through (T, 2, 3) similarity transforms.

    x, y are transformed; z (mediapipe's depth, on the x scale) is multiplied by the scale.

    Returns:
        (T, K, C) float32.
    """
    xy = np.einsum("tkj,tij->tki", points[..., :2], matrices[:, :, :2]) + matrices[:, None, :, 2]
    if points.shape[-1] == 2:
        return xy.astype(np.float32)
    scale = np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))[:, None, None]  # (T, 1, 1)
    return np.concatenate([xy, points[..., 2:] * scale], axis=-1).astype(np.float32)

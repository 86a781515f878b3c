"""Landmark losses (EAPC stage 1, paper file 001, §3.6, eq. 11-13).

Plain torch functions (no lightning). Landmark tensors are (..., K, 2) float, typically
(B, T, 68, 2) in crop pixels. Pass ``unit`` (e.g. the crop size, 256) to :func:`eapc_loss` to
compute the landmark terms in crop-normalised units -- the scale of mediapipe's normalised
coordinates the paper trained on -- so the MSE (squared units) and the distance term (units) are
balanced; with ``unit=1`` they are in px^2 and px.

Reading of eq. 12 (landmark distance loss). As printed,
``L_lmd = 1/N sum_i sum_j ||Output^i - Output^j||`` sums distances between *predicted* landmarks
only, with no ground truth; minimising it collapses the face to a point, which cannot be the
intent ("spatial relationships and relative distances between the predicted landmarks",
"consistent with the structural characteristics of the face"). Two readings are implemented:

* ``mode="pairwise"`` (default): L1 between the predicted and ground-truth pairwise-distance
  matrices, ``mean_{i<j} | ||p_i - p_j|| - ||g_i - g_j|| |`` -- structure-preserving,
  invariant to a common translation (and rotation) of the prediction.
* ``mode="point"``: mean Euclidean distance between predicted and ground-truth points,
  ``mean_i ||p_i - g_i||`` (the LD metric as a loss).

Eq. 13: ``L_total = L_lmd + L_mse``; we add weights and an optional cross-entropy of the LLFs
encoder's per-frame emotion logits against the clip's emotion label (our addition: the paper
says the encoder outputs emotion probabilities, §3.3, but not how it is trained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["landmark_mse", "landmark_distance_loss", "eapc_loss", "LMD_MODES"]

LMD_MODES = ("pairwise", "point")


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 2 or pred.shape[-1] != 2:
        raise ValueError(f"landmarks must have shape (..., K, 2), got {tuple(pred.shape)}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise ValueError(f"landmarks must be floating point, got {pred.dtype} / {target.dtype}")


def _safe_norm(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean norm with a zero (not NaN) gradient where the norm is 0 (coincident points)."""
    sq = (x * x).sum(dim)
    nonzero = sq > 0
    safe = torch.where(nonzero, sq, torch.ones_like(sq))
    return torch.where(nonzero, safe.sqrt(), torch.zeros_like(sq))


def landmark_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Landmark MSE (file 001, eq. 11): mean over landmarks of the squared Euclidean error.

    Args:
        pred, target: (..., K, 2) float, same shape and units (e.g. crop pixels).

    Returns:
        Scalar tensor, ``mean_{..., k} ||pred_k - target_k||^2`` (units^2; = 2 x the element-wise
        MSE). 0 iff pred == target.

    Raises:
        ValueError: shape mismatch, last dim != 2, or non-float tensors.
    """
    _check_pair(pred, target)
    return (pred - target).pow(2).sum(-1).mean()


def landmark_distance_loss(pred: Tensor, target: Tensor, mode: str = "pairwise") -> Tensor:
    """Landmark distance loss (file 001, eq. 12; reading chosen by ``mode``, see module docstring).

    Args:
        pred, target: (..., K, 2) float, same shape and units.
        mode: ``"pairwise"`` -- ``mean_{..., i<j} | ||p_i - p_j|| - ||g_i - g_j|| |``
            (translation-invariant); ``"point"`` -- ``mean_{..., i} ||p_i - g_i||``.

    Returns:
        Scalar tensor in the landmarks' units; 0 when pred == target (both modes). Gradients are
        finite when landmarks coincide.

    Raises:
        ValueError: unknown mode, shape mismatch, last dim != 2, K < 2 for "pairwise".
    """
    if mode not in LMD_MODES:
        raise ValueError(f"mode must be one of {LMD_MODES}, got {mode!r}")
    _check_pair(pred, target)
    if mode == "point":
        return _safe_norm(pred - target).mean()
    k = pred.shape[-2]
    if k < 2:
        raise ValueError(f"pairwise mode needs at least 2 landmarks, got {k}")
    i, j = torch.triu_indices(k, k, offset=1, device=pred.device)
    d_pred = _safe_norm(pred[..., i, :] - pred[..., j, :])
    d_gt = _safe_norm(target[..., i, :] - target[..., j, :])
    return (d_pred - d_gt).abs().mean()


def eapc_loss(
    pred: Tensor,
    target: Tensor,
    emotion_logits: Tensor | None = None,
    emotion: Tensor | None = None,
    w_mse: float = 1.0,
    w_lmd: float = 1.0,
    w_emotion: float = 1.0,
    lmd_mode: str = "pairwise",
    unit: float = 1.0,
) -> dict[str, Tensor]:
    """EAPC stage-1 objective (file 001, eq. 13) plus an optional emotion cross-entropy (ours).

    ``total = w_mse * L_mse (eq. 11) + w_lmd * L_lmd (eq. 12) + w_emotion * CE``; the paper's
    eq. 13 is ``w_mse = w_lmd = 1, w_emotion = 0``.

    Args:
        pred, target: (B, T, K, 2) float landmarks (any (..., K, 2)), same units (crop pixels).
        emotion_logits: (B, T, C) float per-frame LLFs-encoder logits (eq. 1), or None.
        emotion: (B,) int64 clip labels in [0, C) (every frame gets its clip's label), or None.
        w_mse, w_lmd, w_emotion: non-negative weights; ``w_emotion = 0`` disables the CE (the
            logits and label may then be None).
        lmd_mode: ``"pairwise"`` or ``"point"``, see :func:`landmark_distance_loss`.
        unit: landmarks are divided by ``unit`` before the landmark terms (pass the crop size to
            work in crop-normalised units); must be > 0.

    Returns:
        dict of scalar tensors: ``"mse"``, ``"lmd"``, ``"emotion_ce"`` (present when logits and
        labels are given, also when ``w_emotion = 0``, for logging) and ``"total"``.

    Raises:
        ValueError: negative weight, ``unit <= 0``, ``w_emotion > 0`` without logits / labels,
            mismatched shapes, or labels outside [0, C).
    """
    for name, w in (("w_mse", w_mse), ("w_lmd", w_lmd), ("w_emotion", w_emotion)):
        if not (w >= 0):
            raise ValueError(f"{name} must be >= 0, got {w!r}")
    if not (unit > 0):
        raise ValueError(f"unit must be > 0, got {unit!r}")
    p, g = pred / unit, target / unit
    out: dict[str, Tensor] = {
        "mse": landmark_mse(p, g),
        "lmd": landmark_distance_loss(p, g, mode=lmd_mode),
    }
    total = w_mse * out["mse"] + w_lmd * out["lmd"]
    if emotion_logits is not None and emotion is not None:
        if emotion_logits.dim() != 3 or emotion.dim() != 1 or emotion.shape[0] != emotion_logits.shape[0]:
            raise ValueError(
                f"emotion_logits must be (B, T, C) and emotion (B,), got {tuple(emotion_logits.shape)} "
                f"and {tuple(emotion.shape)}"
            )
        c = emotion_logits.shape[-1]
        if emotion.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"emotion labels must be integers, got {emotion.dtype}")
        if emotion.numel() and (emotion.min() < 0 or emotion.max() >= c):
            raise ValueError(f"emotion labels must lie in [0, {c}), got {emotion.tolist()}")
        b, t = emotion_logits.shape[:2]
        labels = emotion.long()[:, None].expand(b, t).reshape(-1)
        out["emotion_ce"] = F.cross_entropy(emotion_logits.reshape(b * t, c), labels)
        if w_emotion > 0:
            total = total + w_emotion * out["emotion_ce"]
    elif w_emotion > 0:
        raise ValueError("w_emotion > 0 needs emotion_logits and emotion labels (pass w_emotion=0 to disable)")
    out["total"] = total
    return out

"""Background replacement for in-the-wild faces (paper 002 A.1, Fig. 12).

A texture network trained on one dataset has only seen that dataset's backdrop (MEAD: a fixed dark
green). Before generation the input's background is replaced by the training background; after
it, the generated frames' background is replaced by the input's own. The person mask comes from
mediapipe's selfie segmentation (its model ships in the mediapipe 0.10.14 wheel).
"""

from __future__ import annotations

import numpy as np


def person_mask(frames: np.ndarray, model_selection: int = 0) -> np.ndarray:
    """Soft person masks.

    Args:
        frames: (T, H, W, 3) uint8 RGB (or one (H, W, 3) image).
        model_selection: mediapipe's selfie model: 0 = general (256 x 256 input), 1 = landscape.

    Returns:
        (T, H, W) float32 in [0, 1] (1 = person), or (H, W) for one image.

    Raises:
        ValueError: not uint8 RGB.
    """
    import mediapipe as mp

    one = frames.ndim == 3
    batch = frames[None] if one else frames
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"person_mask needs (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection) as segmenter:
        masks = np.stack([segmenter.process(np.ascontiguousarray(f)).segmentation_mask for f in batch])
    masks = np.clip(masks.astype(np.float32), 0.0, 1.0)
    return masks[0] if one else masks


def background_colour(frames: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Median RGB of the background pixels (mask < ``threshold``) of ``frames``.

    Args:
        frames: (N, H, W, 3) uint8; masks: (N, H, W) float in [0, 1] (:func:`person_mask`).

    Returns:
        (3,) float32 RGB in [0, 255].

    Raises:
        ValueError: no pixel is background.
    """
    background = frames[masks < threshold]  # (P, 3)
    if len(background) == 0:
        raise ValueError("no background pixels: every pixel is covered by the person mask")
    return np.median(background, axis=0).astype(np.float32)


def composite(foreground: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``mask * foreground + (1 - mask) * background``, rounded to uint8.

    Args:
        foreground: (..., H, W, 3) uint8; mask: (..., H, W) float in [0, 1];
        background: broadcastable to ``foreground`` (an (H, W, 3) image or an (3,) RGB colour), 0-255.

    Returns:
        uint8 array shaped like ``foreground``.
    """
    m = mask[..., None].astype(np.float32)
    out = m * foreground.astype(np.float32) + (1.0 - m) * np.asarray(background, dtype=np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)

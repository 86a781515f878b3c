"""Face landmarks: mediapipe's 478-point face mesh, mapped to the standard 68-point scheme.

mediapipe 0.10.14's legacy ``solutions.face_mesh`` ships its TFLite models inside the wheel, so
this works offline. The papers (EAPC, Sinha et al.) use the 68-point iBUG/dlib scheme; ``MP_TO_68``
picks, for each of the 68 points, the mesh vertex at the same anatomical place.
"""

from __future__ import annotations

import numpy as np

from pipeline.extract.errors import ClipFailure

# fmt: off
MP_TO_68: tuple[int, ...] = (
    # jaw 0-16, image left (subject's right ear) to image right, chin = 8
    127, 234, 93, 132, 58, 172, 136, 149, 152, 378, 365, 397, 288, 361, 323, 454, 356,
    # right brow 17-21 (outer -> inner), left brow 22-26 (inner -> outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, nose base 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47 (corner, upper lid x2, corner, lower lid x2)
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lip 48-59 (right corner, upper lip, left corner, lower lip)
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # inner lip 60-67
    78, 81, 13, 311, 308, 402, 14, 178,
)
# fmt: on
assert len(MP_TO_68) == 68

MOUTH_68 = slice(48, 68)
"""The 20 mouth points of the 68-point scheme."""


def mesh_to_68(lmk478: np.ndarray) -> np.ndarray:
    """Select the 68 standard points from mediapipe's mesh.

    Args:
        lmk478: (..., 478, C) mesh vertices (C = 2 or 3).

    Returns:
        (..., 68, 2) float32, same units as the input.
    """
    return np.ascontiguousarray(lmk478[..., MP_TO_68, :2], dtype=np.float32)


def detect_face_mesh(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run mediapipe's face mesh (478 points with iris refinement) over a clip's frames.

    A new tracker per clip, in video mode (detection on the first frame, tracking after), so the
    result depends only on this clip's frames and is reproducible.

    Args:
        frames: (T, H, W, 3) uint8 RGB.

    Returns:
        lmk478: (T, 478, 3) float32 in pixels of the input frames (x, y; z on the x scale);
            NaN for frames without a face.
        found: (T,) bool, whether a face was found in each frame.
    """
    import mediapipe as mp

    n, height, width = frames.shape[:3]
    lmk = np.full((n, 478, 3), np.nan, dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    scale = np.array([width, height, width], dtype=np.float32)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, max_num_faces=1, refine_landmarks=True,
        min_detection_confidence=0.5, min_tracking_confidence=0.5,
    ) as mesh:
        for t in range(n):
            result = mesh.process(frames[t])
            if result.multi_face_landmarks:
                points = result.multi_face_landmarks[0].landmark
                lmk[t] = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32) * scale
                found[t] = True
    return lmk, found


def fill_missing_faces(lmk: np.ndarray, found: np.ndarray, max_missing: float) -> np.ndarray:
    """Linearly interpolate landmarks over frames where no face was found.

    Args:
        lmk: (T, K, C) float32 with NaN rows where ``found`` is False.
        found: (T,) bool.
        max_missing: largest accepted fraction of frames without a face, in [0, 1].

    Returns:
        (T, K, C) float32 with every frame filled (edges take the nearest found frame).

    Raises:
        ClipFailure: ``step="landmarks"`` when no frame, or too many frames, has a face.
    """
    n_missing = int((~found).sum())
    if n_missing == len(found):
        raise ClipFailure("landmarks", "no face found in any frame")
    if n_missing > max_missing * len(found):
        raise ClipFailure(
            "landmarks", f"no face in {n_missing}/{len(found)} frames (max_missing_face={max_missing})"
        )
    if n_missing == 0:
        return lmk
    t = np.arange(len(found))
    flat = lmk.reshape(len(found), -1)  # (T, K*C)
    filled = np.stack([np.interp(t, t[found], flat[found, j]) for j in range(flat.shape[1])], axis=1)
    return filled.reshape(lmk.shape).astype(np.float32)

"""dlib's 68 landmarks as the EAPC authors extracted them (paper 001's published numbers use them).

From the authors' public repository (``../shared/reference/README.md``, "eapc-authors/"; read, not
copied): each frame is centre-cropped to a square and resized to 512 x 512 (area), converted to
grey; MediaPipe's full-range face detector (``model_selection=1``, confidence >= 0.8; the most
confident face) gives a box, grown by 50 px on every side; dlib's frontal face detector and its
68-point shape predictor run inside that box; the points, relative to the box's top-left corner,
are scaled by ``256 / box width`` (x and y alike). So every frame has its own box (no head-motion
alignment) and the landmarks are in pixels of a 256 px box: the eye-centre distance is about 70 px,
where our aligned 256 px crops give about 48 (their LD / LVD are about 1.45x ours).

Shards carry them as ``lmk_dlib68.npy`` (T, 68, 2) float32 when ``preprocess.eapc_authors`` is on;
a frame where a detector finds no face is NaN (counted by the caller).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from eval_metrics.identity import packaged_weight_path
from primitives.checksum import checked_sha256

SHAPE_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
SHAPE_PREDICTOR_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
"""dlib.net's 68-point model as shipped in ``face-recognition-models==0.3.0``."""
FRAME_SIDE, BOX_MARGIN, BOX_SIDE = 512, 50, 256


@lru_cache(maxsize=1)
def _models():
    import dlib
    import mediapipe as mp

    path = packaged_weight_path(SHAPE_PREDICTOR)
    checked_sha256(path, SHAPE_PREDICTOR_SHA256, where="pip install face-recognition-models==0.3.0")
    detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.8)
    return detector, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def square_512(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the centred H x H square resized to 512 x 512 (area), as theirs."""
    h, w = frame.shape[:2]
    x = (w - h) // 2
    return cv2.resize(frame[:, x:x + h], (FRAME_SIDE, FRAME_SIDE), interpolation=cv2.INTER_AREA)


def authors_dlib68(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames (W >= H) -> (T, 68, 2) float32 landmarks in pixels of each
    frame's own 256 px face box (module docstring); NaN rows where no face was found.

    Raises:
        FileNotFoundError / ValueError: the packaged shape predictor is missing or altered.
    """
    face_detection, dlib_detector, predictor = _models()
    out = np.full((len(frames), 68, 2), np.nan, dtype=np.float32)
    for t, frame in enumerate(frames):
        grey = cv2.cvtColor(square_512(frame), cv2.COLOR_RGB2GRAY)
        found = face_detection.process(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)).detections
        if not found:
            continue
        box = max(found, key=lambda d: d.score[0]).location_data.relative_bounding_box
        x0, y0 = int(box.xmin * FRAME_SIDE) - BOX_MARGIN, int(box.ymin * FRAME_SIDE) - BOX_MARGIN
        x1 = int(box.xmin * FRAME_SIDE) + int(box.width * FRAME_SIDE) + BOX_MARGIN
        y1 = int(box.ymin * FRAME_SIDE) + int(box.height * FRAME_SIDE) + BOX_MARGIN
        cx, cy = max(x0, 0), max(y0, 0)  # a box past the frame's edge is cut there (theirs slices unclamped)
        face = np.ascontiguousarray(grey[cy:y1, cx:x1])
        rects = dlib_detector(face, 1)
        if not rects:
            continue
        shape = predictor(face, rects[0])
        points = np.array([(p.x + cx - x0, p.y + cy - y0) for p in shape.parts()], dtype=np.float32)  # box pixels
        out[t] = points * (BOX_SIDE / (x1 - x0))
    return out

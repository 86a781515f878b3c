"""Face landmarks: mediapipe's 478-point face mesh, mapped to the standard 68-point scheme.

mediapipe 0.10.14's legacy ``solutions`` ship their TFLite models inside the wheel, so this works
offline. The face mesh's own detector is short-range (faces filling much of the frame); a face
~110 px wide in a 1920x1080 frame is not found by it. :func:`detect_face_mesh` therefore finds
faces with the **full-range** detector (``solutions.face_detection``, ``model_selection=1``),
follows one face through the clip, and runs the mesh on a square crop around it, mapping the
points back to the frame.

The papers (EAPC, Sinha et al.) use the 68-point iBUG/dlib scheme; :func:`mesh_to_68` takes the
brows, nose, eyes and lips from fixed mesh vertices (``MP_TO_68``) and the 17 jaw points by
arc-length resampling of the mesh's face-oval contour (``JAW_CONTOUR``), as iBUG's jaw points are
evenly spaced along the jaw line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import cv2
import numpy as np

from pipeline.extract.errors import ClipFailure
from primitives.geometry import square_crop_matrix

# fmt: off
MP_TO_68: tuple[int, ...] = (
    # jaw 0-16 (nearest mesh vertices; mesh_to_68 resamples the jaw along JAW_CONTOUR instead)
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
JAW_CONTOUR: tuple[int, ...] = (
    # the face oval (FACEMESH_FACE_OVAL) from the image-left ear to the chin (152) to the image-right ear
    127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356,
)
# fmt: on
assert len(MP_TO_68) == 68
_CHIN = JAW_CONTOUR.index(152)

MOUTH_68 = slice(48, 68)
"""The 20 mouth points of the 68-point scheme."""


def _resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along ``(..., P, 2)`` polylines (both ends kept)."""
    seg = np.linalg.norm(np.diff(points, axis=-2), axis=-1)  # (..., P-1)
    cum = np.concatenate([np.zeros(seg.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)  # (..., P)
    targets = cum[..., -1:] * np.linspace(0.0, 1.0, n)  # (..., n)
    # segment holding each target: the last vertex at or before it, at most the second-to-last
    idx = np.clip((cum[..., None, :] <= targets[..., :, None]).sum(axis=-1) - 1, 0, points.shape[-2] - 2)  # (..., n)
    start = np.take_along_axis(cum, idx, axis=-1)
    frac = np.where(np.take_along_axis(seg, idx, axis=-1) > 0,
                    (targets - start) / np.maximum(np.take_along_axis(seg, idx, axis=-1), 1e-12), 0.0)
    p0 = np.take_along_axis(points, idx[..., None], axis=-2)  # (..., n, 2)
    p1 = np.take_along_axis(points, idx[..., None] + 1, axis=-2)
    return p0 + frac[..., None] * (p1 - p0)


def mesh_to_68(lmk478: np.ndarray) -> np.ndarray:
    """The 68 standard points from mediapipe's mesh.

    Points 17-67 are the mesh vertices of ``MP_TO_68``; the jaw (0-16) is the face-oval contour
    ``JAW_CONTOUR`` resampled by arc length: points 0-8 evenly from the image-left end to the chin
    (vertex 152), 8-16 evenly from the chin to the image-right end, so point 8 stays on the chin.

    Args:
        lmk478: (..., 478, C) mesh vertices (C = 2 or 3), finite.

    Returns:
        (..., 68, 2) float32, same units as the input.
    """
    xy = np.asarray(lmk478[..., :2], dtype=np.float64)
    out = xy[..., MP_TO_68, :].copy()
    contour = xy[..., JAW_CONTOUR, :]  # (..., 23, 2)
    out[..., 0:9, :] = _resample_polyline(contour[..., :_CHIN + 1, :], 9)
    out[..., 8:17, :] = _resample_polyline(contour[..., _CHIN:, :], 9)
    return np.ascontiguousarray(out, dtype=np.float32)


class FaceMesh(NamedTuple):
    """Result of :func:`detect_face_mesh` for a clip of T frames.

    Attributes:
        lmk478: (T, 478, 3) float32 in pixels of the input frames (x, y; z on the x scale); NaN
            for frames without a face.
        found: (T,) bool, whether the mesh found the tracked face in each frame.
        faces_seen: most faces the full-range detector saw in one frame (0: none; the mesh then
            ran on whole frames).
    """

    lmk478: np.ndarray
    found: np.ndarray
    faces_seen: int


ROI_SCALE = 2.0
"""Side of the square the mesh sees, relative to the larger side of the detector's face box."""
ROI_SIZE = 256
"""Pixels of that square (the mesh resizes to 192 internally)."""
MIN_IOU = 0.1
"""A detection continues the track when its IoU with the track's last box is at least this."""


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box with ``(N, 4)`` boxes, all ``(x0, y0, x1, y1)``."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def track_face(detections: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """One face followed through a clip.

    The track starts at the first frame with a detection, on its largest box (ties: the one
    nearest the frame centre); each later frame continues it with the detection of highest IoU
    with the track's last box (at least :data:`MIN_IOU`), else the frame has no track box.

    Args:
        detections: per frame, ``(N_t, 4)`` float boxes ``(x0, y0, x1, y1)`` in pixels.
        width, height: frame size in pixels.

    Returns:
        (T, 4) float64 track boxes, NaN where the track has no detection.
    """
    boxes = np.full((len(detections), 4), np.nan)
    last = None
    for t, dets in enumerate(detections):
        if len(dets) == 0:
            continue
        if last is None:
            area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            centre = np.hypot((dets[:, 0] + dets[:, 2]) / 2 - width / 2, (dets[:, 1] + dets[:, 3]) / 2 - height / 2)
            pick = int(np.lexsort((centre, -area))[0])
        else:
            iou = _iou(last, dets)
            pick = int(np.argmax(iou))
            if iou[pick] < MIN_IOU:
                continue
        boxes[t] = last = dets[pick]
    return boxes


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a moment: mediapipe's graphs print C++ log lines
    (TFLite's "Created ... XNNPACK delegate", absl's "Feedback manager requires a model with a
    single signature ...") in every process when they start, before absl logging can be set up,
    and no environment variable turns them off. Python exceptions are unaffected."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _run_graph(make: Callable[[], Any], images: Iterable[np.ndarray]) -> list:
    """``make().process(image)`` for each image, the graph's start and first frame kept quiet."""
    results, graph = [], None
    try:
        for i, image in enumerate(images):
            if i == 0:
                with _native_stderr_silenced():
                    graph = make()
                    results.append(graph.process(image))
            else:
                results.append(graph.process(image))
    finally:
        if graph is not None:
            graph.close()
    return results


def _detect_faces(frames: np.ndarray) -> list[np.ndarray]:
    """Full-range BlazeFace boxes ``(N_t, 4)`` (x0, y0, x1, y1 pixels) per frame."""
    import mediapipe as mp

    height, width = frames.shape[1:3]
    out = []
    make = lambda: mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)  # noqa: E731
    for result in _run_graph(make, frames):
        boxes = [(b.xmin * width, b.ymin * height, (b.xmin + b.width) * width, (b.ymin + b.height) * height)
                 for b in (d.location_data.relative_bounding_box for d in result.detections or [])]
        out.append(np.array(boxes, dtype=np.float64).reshape(-1, 4))
    return out


def _roi_matrices(boxes: np.ndarray) -> np.ndarray:
    """(T, 2, 3) frame -> ROI affine maps: squares of ROI_SCALE x the box's larger side, centred on
    the box, as ROI_SIZE px; frames without a box take the nearest frame's box."""
    have = ~np.isnan(boxes[:, 0])
    t = np.arange(len(boxes))
    nearest = t[have][np.abs(t[:, None] - t[have][None]).argmin(axis=1)]
    boxes = boxes[nearest]
    side = ROI_SCALE * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # (T,)
    centres = np.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], axis=1) / 2  # (T, 2)
    return np.stack([square_crop_matrix(tuple(c), s, ROI_SIZE) for c, s in zip(centres, side)])


def _run_mesh(images, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 478-point mesh (video mode, one face) over an iterable of RGB images of one size."""
    import mediapipe as mp

    def make():
        return mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                               min_detection_confidence=0.5, min_tracking_confidence=0.5)

    results = _run_graph(make, images)
    lmk = np.full((len(results), 478, 3), np.nan, dtype=np.float32)
    found = np.zeros(len(results), dtype=bool)
    for t, result in enumerate(results):
        if result.multi_face_landmarks:
            points = result.multi_face_landmarks[0].landmark
            lmk[t] = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32) * scale
            found[t] = True
    return lmk, found


def detect_face_mesh(frames: np.ndarray) -> FaceMesh:
    """Find, follow and mesh one face per clip (module docstring; parameters ``ROI_*``, ``MIN_IOU``).

    New detector and mesh per clip (video mode: the mesh tracks between frames), so the result
    depends only on this clip's frames and is reproducible. When the full-range detector finds no
    face in any frame, the mesh runs on the whole frames (its own detector).

    Args:
        frames: (T, H, W, 3) uint8 RGB.

    Returns:
        :class:`FaceMesh` (points in pixels of ``frames``).
    """
    height, width = frames.shape[1:3]
    detections = _detect_faces(frames)
    faces_seen = max((len(d) for d in detections), default=0)
    if faces_seen == 0:
        lmk, found = _run_mesh(frames, np.array([width, height, width], dtype=np.float32))
        return FaceMesh(lmk, found, 0)
    matrices = _roi_matrices(track_face(detections, width, height))  # (T, 2, 3)
    # lazily, one frame at a time (primitives.geometry.warp_frames would hold every crop of the clip)
    crops = (cv2.warpAffine(f, m, (ROI_SIZE, ROI_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
             for f, m in zip(frames, matrices))
    lmk, found = _run_mesh(crops, np.array([ROI_SIZE, ROI_SIZE, ROI_SIZE], dtype=np.float32))
    k = matrices[:, 0, 0][:, None]  # (T, 1) ROI px per frame px
    lmk[..., 0] = (lmk[..., 0] - matrices[:, 0, 2][:, None]) / k
    lmk[..., 1] = (lmk[..., 1] - matrices[:, 1, 2][:, None]) / k
    lmk[..., 2] = lmk[..., 2] / k
    return FaceMesh(lmk, found, faces_seen)


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

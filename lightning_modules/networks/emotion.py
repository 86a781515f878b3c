"""Video emotion classifier over short windows of aligned face crops (plain ``nn.Module``).

Source: paper file 000 (emotion-controllable CVAE), §2.1 "Emotion Loss": "The emotion
discriminator is first pre-trained which similar to that in [3] (Eskimez et al.) for several
epochs, we adjust the image resolution 64x64 pixels [...] we use cross-entropy loss" (eq. 3).
The same network serves as our own EmoAcc evaluator (``eval_metrics.emotion``).

Architecture (our reading; the paper gives no layer list beyond "similar to [3]"):

* every frame is resized to ``image_size`` x ``image_size`` (default 64, the paper's resolution)
  with bilinear antialiased interpolation and mapped from uint8 [0, 255] to float [-1, 1];
* a per-frame CNN: ``len(widths)`` blocks of ``Conv3x3(stride 2) + BatchNorm + LeakyReLU(0.2)``
  (default widths ``(32, 64, 128, 256)``: 64 -> 32 -> 16 -> 8 -> 4 px), then global average
  pooling -> a ``widths[-1]``-d feature per frame;
* temporal pooling (``temporal``): ``"mean"`` (default) averages the frame features over the
  window; ``"gru"`` runs a 1-layer GRU of ``gru_hidden`` units and takes its last state (closer to
  Eskimez et al.'s recurrent discriminator);
* dropout ``dropout`` then ``Linear -> n_emotions`` logits.

Classes: ``n_emotions`` = 8 in the shared vocabulary ``primitives.vocab.EMOTIONS`` (neutral, angry,
contempt, disgusted, fear, happy, sad, surprised). CREMA-D has only 6 of them (no contempt, no
surprise); trained on CREMA-D those two logits simply never receive a positive target, so the
model rarely predicts them. MEAD uses all 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict

__all__ = ["EmotionClassifier", "EmotionClassifierConfig", "frames_to_input"]


@dataclass
class EmotionClassifierConfig:
    """Hyper-parameters of :class:`EmotionClassifier` (``train.methods.emotion_classifier.net``).

    Attributes:
        n_emotions: number of classes (8 = ``primitives.vocab.EMOTIONS``; CREMA-D uses 6 of them).
        image_size: side frames are resized to (paper 000 §2.1: 64), >= 16.
        widths: output channels of the stride-2 conv blocks (default (32, 64, 128, 256), ~0.4M params).
        temporal: ``"mean"`` (average frame features) or ``"gru"`` (last GRU state).
        gru_hidden: GRU units when ``temporal="gru"``.
        dropout: dropout before the final linear layer, in [0, 1).
    """

    n_emotions: int = 8
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    temporal: str = "mean"
    gru_hidden: int = 128
    dropout: float = 0.2

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.n_emotions < 2:
            raise ValueError(f"n_emotions must be >= 2, got {self.n_emotions}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {self.widths}")
        if self.temporal not in ("mean", "gru"):
            raise ValueError(f"temporal must be 'mean' or 'gru', got {self.temporal!r}")
        if self.gru_hidden < 1:
            raise ValueError(f"gru_hidden must be >= 1, got {self.gru_hidden}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> EmotionClassifierConfig:
        """Build from ``train.methods.emotion_classifier.net``; see :func:`config_from_dict`."""
        return config_from_dict(cls, d, "emotion_classifier.net")


def frames_to_input(frames: Tensor, image_size: int) -> Tensor:
    """Frames (B, T, S, S, 3) uint8 RGB (or float in [0, 255]) -> (B*T, 3, image_size, image_size)
    float32 in [-1, 1].

    Raises:
        ValueError: not a 5-d tensor with 3 channels last.
    """
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (B, T, S, S, 3), got {tuple(frames.shape)}")
    b, t, h, w, _ = frames.shape
    x = frames.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()
    if (h, w) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x / 127.5 - 1.0


class EmotionClassifier(nn.Module):
    """Window of face crops -> emotion logits.

    ``forward(frames)``: frames (B, T, S, S, 3) uint8 RGB, any S (resized to ``cfg.image_size``),
    T >= 1 -> logits (B, n_emotions) float32. ``predict_proba`` gives softmax probabilities.
    """

    def __init__(self, cfg: EmotionClassifierConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or EmotionClassifierConfig()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in cfg.widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.frame_encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if cfg.temporal == "gru":
            self.gru = nn.GRU(c_in, cfg.gru_hidden, batch_first=True)
            c_in = cfg.gru_hidden
        else:
            self.gru = None
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(c_in, cfg.n_emotions))

    def forward(self, frames: Tensor) -> Tensor:
        """(B, T, S, S, 3) uint8 -> logits (B, n_emotions) float32."""
        b, t = frames.shape[:2]
        feats = self.frame_encoder(frames_to_input(frames, self.cfg.image_size)).reshape(b, t, -1)
        if self.gru is not None:
            _, h = self.gru(feats)
            pooled = h[-1]
        else:
            pooled = feats.mean(dim=1)
        return self.head(pooled)

    @torch.no_grad()
    def predict_proba(self, frames: Tensor) -> Tensor:
        """Class probabilities (B, n_emotions) float32, rows sum to 1 (no gradient; call ``eval()``
        first for deterministic dropout / BatchNorm)."""
        return self.forward(frames).softmax(dim=-1)

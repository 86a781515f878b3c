"""EAPC stage 1 as its authors' code builds it (paper 001; ``net.variant: authors``).

Our paper-text reading is :class:`lightning_modules.networks.eapc.EAPC`. The authors' development
repository (``../shared/reference/README.md``, "eapc-authors/"; read, not copied) differs in:

* **Audio LSTM over the window's frames**: the 28 x 12 MFCC matrix of each video frame is
  flattened to 336 values, and a 3-layer LSTM runs across the T video frames (ours: across the 28
  MFCC rows of each frame, eq. 2).
* **"Audio i-1" by concatenation**: the landmark LSTM's input at frame i is [a_{i-1}, a_i] of the
  audio LSTM's outputs (a_{-1} = a_0), not eq. 4's residual sum.
* **Emotion**: a 64-d embedding of the 25 LLFs per frame (FC 512 + BatchNorm + LeakyReLU, FC 512,
  3-layer LSTM of 256, FCs 128, 128, 64 with BatchNorm + LeakyReLU), trained with the rest (the
  authors pre-train it on MEAD M003 + M030 with emotion CE + 0.1 x level CE first: here
  ``optim.emotion_pretrain_steps``; its heads give ``emotion_logits`` and ``level_logits``).
* **Global attention, unscaled, concatenated**: the landmark LSTM's outputs h (T, 512) go through
  a linear layer to (T, 576); energies ``[a_i, e_i] . k_j`` over every j of the window, softmax, the
  context ``sum_j w_ij k_j`` concatenated to a_i.
* **A linear head** (three FC layers 1088 -> 512 -> 256 -> 136 without activations) predicting
  **absolute** coordinates, with no reference-landmark input, and raw (unstandardised) inputs.

Sizes are parameters (:class:`EAPCAuthorsConfig`); the ``eapc_authors`` preset states theirs
(widths 512, 16.5 M parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict
from lightning_modules.networks.eapc import EAPCOutput
from lightning_modules.networks.rnn import LSTM


@dataclass
class EAPCAuthorsConfig:
    """Sizes of :class:`EAPCAuthors` (their code's values as defaults).

    Attributes:
        mfcc_window, n_mfcc: MFCC rows and coefficients per video frame (28 x 12, flattened).
        n_llf: low-level features per frame (25). n_emotions, n_levels: emotion-head classes (8, 3).
        audio_hidden, audio_layers: audio LSTM (512, 3); lm_hidden, lm_layers: landmark LSTM (512, 3).
        emotion_dim: emotion embedding width (64); emotion_hidden, emotion_lstm, emotion_layers: its FC
            width and LSTM width and depth (512, 256, 3).
        fc_dims: the linear head's hidden widths (512, 256). n_landmarks: 68.
        crop_size: side of the box the landmarks are in (256: their face box), for the paper loss's unit.
    """

    mfcc_window: int = 28
    n_mfcc: int = 12
    n_llf: int = 25
    n_emotions: int = 8
    n_levels: int = 3
    audio_hidden: int = 512
    audio_layers: int = 3
    lm_hidden: int = 512
    lm_layers: int = 3
    emotion_dim: int = 64
    emotion_hidden: int = 512
    emotion_lstm: int = 256
    emotion_layers: int = 3
    fc_dims: tuple[int, ...] = (512, 256)
    n_landmarks: int = 68
    crop_size: int = 256

    def __post_init__(self) -> None:
        self.fc_dims = tuple(int(d) for d in self.fc_dims)
        sizes = ("mfcc_window", "n_mfcc", "n_llf", "n_emotions", "n_levels", "audio_hidden", "audio_layers", "lm_hidden",
                 "lm_layers", "emotion_dim", "emotion_hidden", "emotion_lstm", "emotion_layers", "n_landmarks", "crop_size")
        for name in sizes:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"eapc.net.{name} must be >= 1, got {getattr(self, name)}")
        if not self.fc_dims or min(self.fc_dims) < 1:
            raise ValueError(f"eapc.net.fc_dims must be a non-empty list of positive widths, got {self.fc_dims}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "EAPCAuthorsConfig":
        return config_from_dict(cls, d or {}, "eapc.net")


def _fc_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.LeakyReLU(0.2)]


class EmotionEmbedding(nn.Module):
    """LLFs (B, T, n_llf) raw -> (embedding (B, T, emotion_dim), emotion logits (B, T, n_emotions),
    level logits (B, T, n_levels)); BatchNorm over the B x T frames."""

    def __init__(self, cfg: EAPCAuthorsConfig):
        super().__init__()
        h, d = cfg.emotion_hidden, cfg.emotion_dim
        self.frame = nn.Sequential(*_fc_bn(cfg.n_llf, h), nn.Linear(h, h))
        self.lstm = LSTM(h, cfg.emotion_lstm, cfg.emotion_layers, batch_first=True)
        self.embed = nn.Sequential(*_fc_bn(cfg.emotion_lstm, 128), *_fc_bn(128, 128), *_fc_bn(128, d))
        self.emotion_head = nn.Sequential(*_fc_bn(d, d), nn.Linear(d, cfg.n_emotions))
        self.level_head = nn.Sequential(*_fc_bn(d, d), nn.Linear(d, cfg.n_levels))

    def forward(self, llf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = llf.shape
        h, _ = self.lstm(self.frame(llf.reshape(b * t, -1)).reshape(b, t, -1))
        e = self.embed(h.reshape(b * t, -1))  # (B T, d)
        return e.reshape(b, t, -1), self.emotion_head(e).reshape(b, t, -1), self.level_head(e).reshape(b, t, -1)


class EAPCAuthors(nn.Module):
    """``forward(mfcc (B, T, 28, 12), llf (B, T, 25), ref_lmk=None) -> EAPCOutput(lmk (B, T, 68, 2)
    absolute, in the pixels of the landmarks it was trained on, emotion_logits (B, T, n_emotions))``
    (module docstring). ``ref_lmk`` and ``emotion_probs`` are accepted and unused (no reference
    input, no emotion control: the emotion comes from the audio's LLFs)."""

    def __init__(self, cfg: EAPCAuthorsConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or EAPCAuthorsConfig()
        self.audio_lstm = LSTM(cfg.mfcc_window * cfg.n_mfcc, cfg.audio_hidden, cfg.audio_layers, batch_first=True)
        self.lm_lstm = LSTM(2 * cfg.audio_hidden, cfg.lm_hidden, cfg.lm_layers, batch_first=True)
        self.emotion = EmotionEmbedding(cfg)
        self.keys = nn.Linear(cfg.lm_hidden, cfg.audio_hidden + cfg.emotion_dim)
        widths = (cfg.audio_hidden + cfg.audio_hidden + cfg.emotion_dim, *cfg.fc_dims, cfg.n_landmarks * 2)
        self.head = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])  # no activations (theirs)
        for p in self.parameters():  # their initialisation: Xavier-uniform weights
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def fit_input_stats(self, mfcc: Tensor | None = None, llf: Tensor | None = None) -> None:
        """Raw inputs, as theirs: nothing to fit."""

    def forward(self, mfcc: Tensor, llf: Tensor, ref_lmk: Tensor | None = None,
                emotion_probs: Tensor | None = None) -> EAPCOutput:
        b, t = mfcc.shape[:2]
        audio, _ = self.audio_lstm(mfcc.reshape(b, t, -1))  # (B, T, A)
        previous = torch.cat([audio[:, :1], audio[:, :-1]], dim=1)  # a_{i-1}, a_{-1} = a_0
        h, _ = self.lm_lstm(torch.cat([previous, audio], dim=-1))  # (B, T, H)
        emotion, logits, level_logits = self.emotion(llf)
        keys = self.keys(h)  # (B, T, A + d)
        weights = torch.softmax(torch.cat([audio, emotion], dim=-1) @ keys.transpose(1, 2), dim=-1)  # (B, T, T), unscaled
        lmk = self.head(torch.cat([audio, weights @ keys], dim=-1))  # (B, T, 136)
        return EAPCOutput(lmk=lmk.reshape(b, t, self.cfg.n_landmarks, 2), emotion_logits=logits, level_logits=level_logits)

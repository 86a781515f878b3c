"""Conditional deep VAE generator for emotion-controllable lip-sync (paper file 000, §2), plain ``nn.Module``.

Source: paper 000 ("Emotional-Controllable Talking Face Generation on Real-Time System"), §2 and
Figure 1, with the loss terms of §2.1 eq. 1-6 (numbered as in the paper's text). The paper gives
no layer list; everything below marked "ours" is our reading.

Data flow (one video frame per call, Wav2Lip-style; paper §2)
-------------------------------------------------------------
* Visual input: ``concat(masked target, reference)`` -> 6 channels at ``S x S``, float in [0, 1].
  The masked target is the frame to generate with its lower half (mouth) zeroed, as in Wav2Lip
  (paper ref. [6]); the reference gives identity / appearance (paper: "a fully masked face serves
  as a visual reference" -- we follow Wav2Lip: half-masked target + unmasked reference).
* Audio: a 16-row mel window ``(B, 1, 16, 80)`` (0.2 s at 80 Hz, time x mel bins, values in
  [-4, 4]) centred on the frame -> conv encoder -> ``audio_dim`` feature.
* Emotion: one-hot of ``n_emotions`` (8, ``primitives.vocab.EMOTIONS``) -> MLP with LeakyReLU
  (paper §2: "encoded via a Multi-Layer Perceptron with Leaky ReLU") -> ``emotion_dim`` feature.
* Conditioning: ``cond = Linear(concat(audio, emotion)) -> cond_channels``; it is "upsampled to
  align with the resolution of visual features in both the encoder and decoder" (paper §2) by
  spatial broadcast (``(B, C, 1, 1)`` expanded to ``h x w``, ours) and concatenated to the input of
  every encoder and decoder stage.
* Encoder (U-Net, paper ref. [5]): a full-resolution stem and ``len(widths)`` stride-2 stages
  (default 32, 64, 128, 256: 128 -> 64 -> 32 -> 16 -> 8 px); the bottleneck map is flattened and
  mapped to the latent mean ``mu`` and log-variance ``logvar`` (``latent_dim``), ``z = mu +
  exp(logvar / 2) * eps`` (reparameterisation).
* Decoder: ``Linear(concat(z, cond))`` -> bottleneck map, then ``len(widths)`` upsampling stages
  (nearest x2 + 3x3 convs), each fed the matching encoder skip and the broadcast condition; a
  1x1 conv and a sigmoid give RGB in [0, 1] (``output="absolute"``, the paper's reading) or, by
  default, a residual over the reference in logit space, ``sigmoid(logit(reference) + head)``, with
  the head zero-initialised so an untrained network copies the reference (``output="residual"``,
  ours: the appearance path then starts exact and training spends its steps on the mouth).

Resolution: the paper does not state the generator resolution (its emotion discriminator sees
64x64); ``crop_size`` defaults to 128 (the pipeline's evaluation crop), tests use 64.

Losses (paper §2.1)
-------------------
* eq. 1 reconstruction: :func:`recon_loss` (MSE, mean over pixels; the paper writes a sum).
* eq. 2 KL: :func:`kl_divergence`, closed form of ``KL(N(mu, sigma^2) || N(0, I))``.
* perceptual (Johnson et al., paper ref. [8]) on VGG-19 features (ref. [7]): :class:`VGGPerceptual`.
* eq. 3 emotion cross-entropy and eq. 4-5 lip-sync BCE use the networks in
  ``lightning_modules.networks.emotion`` / ``.syncnet`` (wired in ``lightning_modules.cvae``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from primitives.checksum import checked_sha256, hub_name_prefix
from lightning_modules.networks.config import config_from_dict, config_to_dict

__all__ = [
    "CVAE",
    "CVAEConfig",
    "CVAEOutput",
    "VGG19_FILENAME",
    "VGGPerceptual",
    "kl_divergence",
    "mask_lower_half",
    "recon_loss",
]

MEL_WINDOW = 16
"""Mel rows per generator audio window (0.2 s at 80 Hz, Wav2Lip)."""
N_MELS = 80


@dataclass
class CVAEConfig:
    """Architecture of :class:`CVAE` (``train.methods.cvae.net`` in params.yaml).

    Attributes:
        crop_size: S, side of the square crops (``frames_<S>``); a multiple of ``2 ** len(widths)``.
        widths: output channels of the stride-2 encoder stages (decoder mirrors them).
        stem_channels: channels of the full-resolution stem (the finest skip).
        latent_dim: size of ``mu`` / ``logvar`` / ``z``.
        audio_channels: channels of the audio encoder's conv stages.
        audio_dim: audio feature size.
        emotion_dim: emotion MLP output size (hidden layer has the same size).
        n_emotions: one-hot size (8 = ``primitives.vocab.EMOTIONS``).
        cond_channels: channels of the broadcast audio+emotion condition at every stage.
        groups: GroupNorm groups (batch-size independent, so ``generate`` on one clip behaves as
            in training; ours).
        image_skip: also feed the raw 6-channel input (masked target + reference, [0, 1]) to the
            output head (ours). Every other path is GroupNorm'd, which removes the absolute colour
            of a region; without this path colours must be re-learnt and drift (a colour cast).
        output: ``"residual"`` (ours): ``recon = sigmoid(logit(reference) + head)``, head
            zero-initialised, so training starts from a copy of the reference; ``"absolute"``:
            ``recon = sigmoid(head)`` (paper 000 Figure 1 gives no output detail).
    """

    crop_size: int = 128
    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem_channels: int = 16
    latent_dim: int = 128
    audio_channels: tuple[int, ...] = (32, 64, 128)
    audio_dim: int = 128
    emotion_dim: int = 32
    n_emotions: int = 8
    cond_channels: int = 32
    groups: int = 8
    image_skip: bool = True
    output: str = "residual"

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.audio_channels = tuple(int(c) for c in self.audio_channels)
        if self.output not in ("residual", "absolute"):
            raise ValueError(f"cvae.net.output must be 'residual' or 'absolute', got {self.output!r}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"cvae.net.widths must be a non-empty list of positive ints, got {self.widths}")
        if not self.audio_channels or min(self.audio_channels) < 1:
            raise ValueError("cvae.net.audio_channels must be a non-empty list of positive ints, "
                             f"got {self.audio_channels}")
        step = 2 ** len(self.widths)
        if self.crop_size < step or self.crop_size % step:
            raise ValueError(f"cvae.net.crop_size must be a positive multiple of 2**len(widths) = {step}, "
                             f"got {self.crop_size}")
        for name in ("stem_channels", "latent_dim", "audio_dim", "emotion_dim", "cond_channels", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"cvae.net.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_emotions < 2:
            raise ValueError(f"cvae.net.n_emotions must be >= 2, got {self.n_emotions}")
        for c in (self.stem_channels, *self.widths):
            if c % self._groups_for(c):
                raise ValueError(f"cvae.net: channels {c} not divisible by GroupNorm groups")

    def _groups_for(self, c: int) -> int:
        g = min(self.groups, c)
        while c % g:
            g -= 1
        return g

    @classmethod
    def from_dict(cls, d: dict) -> CVAEConfig:
        """Build from ``train.methods.cvae.net``; see :func:`config_from_dict`."""
        return config_from_dict(cls, d, "cvae.net")

    def to_dict(self) -> dict:
        """Plain dict (lists instead of tuples) for JSON / MLflow."""
        return config_to_dict(self)


class CVAEOutput(NamedTuple):
    recon: Tensor
    """(B, 3, S, S) float32 in [0, 1]."""
    mu: Tensor
    """(B, latent_dim) posterior mean."""
    logvar: Tensor
    """(B, latent_dim) posterior log-variance."""


def mask_lower_half(x: Tensor) -> Tensor:
    """Zero rows ``S/2 .. S`` of ``(B, C, S, S)`` images (Wav2Lip's masked target)."""
    out = x.clone()
    out[..., x.shape[-2] // 2:, :] = 0
    return out


MASKED_TARGETS = ("lower_half", "full")


def mask_target(x: Tensor, mode: str) -> Tensor:
    """The network's masked-target input from ``(B, C, S, S)`` images: ``"lower_half"``
    (:func:`mask_lower_half`, Wav2Lip) or ``"full"`` (all zeros: paper 000 §2's "fully masked
    face", so the frame's own upper face, which shows its emotion, is never an input)."""
    if mode not in MASKED_TARGETS:
        raise ValueError(f"masked target must be one of {MASKED_TARGETS}, got {mode!r}")
    return torch.zeros_like(x) if mode == "full" else mask_lower_half(x)


def _block(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(groups, c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out),
        nn.LeakyReLU(0.2, inplace=True))


def _broadcast(cond: Tensor, like: Tensor) -> Tensor:
    """``(B, C)`` -> ``(B, C, h, w)`` at ``like``'s resolution ("upsampling" the condition)."""
    return cond[:, :, None, None].expand(-1, -1, like.shape[-2], like.shape[-1])


class AudioEncoder(nn.Module):
    """Mel window ``(B, 1, 16, 80)`` in [-4, 4] -> ``(B, audio_dim)``.

    Conv stages (3x3, stride (1, 2) on time x mel then (2, 2)), global average pooling, linear (ours).
    """

    def __init__(self, channels: tuple[int, ...], dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=(1, 2) if i == 0 else 2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c_in, dim)

    def forward(self, mel: Tensor) -> Tensor:
        if mel.ndim != 4 or mel.shape[1:] != (1, MEL_WINDOW, N_MELS):
            raise ValueError(f"mel window must be (B, 1, {MEL_WINDOW}, {N_MELS}), got {tuple(mel.shape)}")
        return F.leaky_relu(self.proj(self.convs(mel / 4.0)), 0.2)


class CVAE(nn.Module):
    """Conditional U-Net VAE (paper 000 §2, Figure 1).

    ``forward(masked, reference, mel_window, emotion, sample=None) -> CVAEOutput(recon, mu, logvar)``:
        masked: ``(B, 3, S, S)`` float in [0, 1], target frame with the lower half zeroed;
        reference: ``(B, 3, S, S)`` float in [0, 1];
        mel_window: ``(B, 1, 16, 80)`` float in [-4, 4];
        emotion: ``(B,)`` int64 in ``[0, n_emotions)``;
        sample: draw ``z`` by reparameterisation (default: ``self.training``), else ``z = mu``.
    :meth:`decode` renders from a given ``z`` (e.g. the prior mean ``z = 0``).
    """

    def __init__(self, cfg: CVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CVAEConfig()
        g, cc = cfg._groups_for, cfg.cond_channels
        self.audio = AudioEncoder(cfg.audio_channels, cfg.audio_dim)
        self.emotion = nn.Sequential(nn.Linear(cfg.n_emotions, cfg.emotion_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(cfg.emotion_dim, cfg.emotion_dim), nn.LeakyReLU(0.2))
        self.cond = nn.Sequential(nn.Linear(cfg.audio_dim + cfg.emotion_dim, cc), nn.LeakyReLU(0.2))
        # encoder
        self.stem = _block(6 + cc, cfg.stem_channels, 1, g(cfg.stem_channels))
        self.down = nn.ModuleList()
        c_in = cfg.stem_channels
        for c in cfg.widths:
            self.down.append(_block(c_in + cc, c, 2, g(c)))
            c_in = c
        self.bottom = cfg.crop_size // 2 ** len(cfg.widths)
        flat = cfg.widths[-1] * self.bottom ** 2
        self.to_latent = nn.Linear(flat, 2 * cfg.latent_dim)
        # decoder
        self.from_latent = nn.Linear(cfg.latent_dim + cc, flat)
        self.up = nn.ModuleList()
        skips = (cfg.stem_channels, *cfg.widths[:-1])  # skip channels at each output resolution
        c_in = cfg.widths[-1]
        for i in reversed(range(len(cfg.widths))):
            c_out = skips[i]
            # input: decoder map (c_in) + encoder skip at the same resolution + condition
            self.up.append(_block(c_in + cfg.widths[i] + cc, c_out, 1, g(c_out)))
            c_in = c_out
        image = 6 if cfg.image_skip else 0
        self.head = nn.Sequential(nn.Conv2d(c_in + cfg.stem_channels + image + cc, c_in, 3, padding=1),
                                  nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c_in, 3, 1))
        if cfg.output == "residual":  # start as a copy of the reference
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def condition(self, mel_window: Tensor, emotion: Tensor) -> Tensor:
        """Audio + emotion condition ``(B, cond_channels)``."""
        onehot = F.one_hot(emotion.long(), self.cfg.n_emotions).float()
        return self.cond(torch.cat([self.audio(mel_window), self.emotion(onehot)], dim=1))

    def encode(self, masked: Tensor, reference: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """-> ``mu, logvar`` (B, latent_dim) and the skips (finest first; the first also holds the raw
        input when ``image_skip``)."""
        s = self.cfg.crop_size
        for name, x in (("masked", masked), ("reference", reference)):
            if x.ndim != 4 or x.shape[1:] != (3, s, s):
                raise ValueError(f"{name} must be (B, 3, {s}, {s}), got {tuple(x.shape)}")
        h = torch.cat([masked, reference], dim=1)
        image = h  # (B, 6, S, S)
        h = self.stem(torch.cat([h, _broadcast(cond, h)], dim=1))
        skips = [torch.cat([h, image], dim=1) if self.cfg.image_skip else h]
        for block in self.down:
            h = block(torch.cat([h, _broadcast(cond, h)], dim=1))
            skips.append(h)
        mu, logvar = self.to_latent(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0), skips

    def decode(self, z: Tensor, cond: Tensor, skips: list[Tensor], reference: Tensor) -> Tensor:
        """Latent + condition + encoder skips (+ the reference ``(B, 3, S, S)`` for ``output="residual"``)
        -> ``(B, 3, S, S)`` in [0, 1]."""
        h = self.from_latent(torch.cat([z, cond], dim=1)).view(z.shape[0], self.cfg.widths[-1], self.bottom,
                                                                self.bottom)
        for i, block in zip(reversed(range(len(self.cfg.widths))), self.up):
            h = block(torch.cat([h, skips[i + 1], _broadcast(cond, h)], dim=1))
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        logits = self.head(torch.cat([h, skips[0], _broadcast(cond, h)], dim=1))
        if self.cfg.output == "residual":
            logits = logits + torch.logit(reference, eps=1e-3)
        return torch.sigmoid(logits)

    def forward(self, masked: Tensor, reference: Tensor, mel_window: Tensor, emotion: Tensor,
                sample: bool | None = None, z: Tensor | None = None) -> CVAEOutput:
        """See the class docstring; ``z`` (B, latent_dim) overrides the posterior (e.g. zeros = prior mean)."""
        cond = self.condition(mel_window, emotion)
        mu, logvar, skips = self.encode(masked, reference, cond)
        if z is None:
            sample = self.training if sample is None else sample
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        return CVAEOutput(self.decode(z, cond, skips, reference), mu, logvar)


def recon_loss(recon: Tensor, target: Tensor) -> Tensor:
    """Paper 000 eq. 1, MSE between generated and ground-truth frames.

    The paper writes a sum over pixels; we take the mean (a constant factor ``3 S^2`` that the
    KL weight compensates for, see ``CVAETrainConfig.alpha``). Returns a float scalar >= 0.
    """
    return F.mse_loss(recon, target)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """Paper 000 eq. 2 with P = N(mu, diag(exp(logvar))) and Q = N(0, I), in closed form:

    ``KL = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))``, summed over latent dims and
    averaged over the batch. Zero iff ``mu = 0`` and ``logvar = 0``. Returns a float scalar >= 0.
    """
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


# --------------------------------------------------------------------------------------------
# VGG-19 perceptual loss (paper 000 §2.1, refs. [7] Simonyan & Zisserman, [8] Johnson et al.)

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
"""torchvision's ImageNet VGG-19 weights (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth);
the 8 hex digits are the start of the file's sha256 (torch.hub convention)."""
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M")
VGG19_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}
"""Indices in torchvision's ``vgg19().features`` of the ReLU outputs used as perceptual features."""


def vgg19_features(upto: int = 36) -> nn.Sequential:
    """torchvision's ``vgg19().features`` layer layout (conv3x3 + ReLU, max-pool 2x2), truncated
    after index ``upto - 1``; parameter names match ``features.<i>.weight/bias`` of the state_dict."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers[:upto])


class VGGPerceptual(nn.Module):
    """Perceptual loss: mean over ``layers`` of the MSE between VGG-19 features of generated and
    ground-truth frames (paper 000 §2.1 "Perceptual Loss", Johnson et al. [8]).

    Weights are torchvision's ImageNet VGG-19 (``vgg19-dcbb9e9d.pth``) loaded from a LOCAL file,
    frozen; images in [0, 1] are normalised with the ImageNet mean / std inside.

    Args:
        weights: path to the torchvision state_dict (only ``features.*`` keys are read).
        sha256: full expected sha256 (default: the prefix in the file name, if any).
        layers: names from :data:`VGG19_LAYERS` (default relu1_2 .. relu4_4).

    Raises:
        FileNotFoundError: ``weights`` does not exist (the message names torchvision's file).
        ValueError: hash mismatch.
        RuntimeError: the state_dict lacks needed ``features.*`` keys / has wrong shapes.
    """

    def __init__(self, weights: str | Path, sha256: str | None = None,
                 layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_4", "relu4_4")):
        super().__init__()
        path = Path(weights)
        checked_sha256(path, sha256 or hub_name_prefix(path),
                       where=f"expected torchvision's {VGG19_FILENAME}, https://download.pytorch.org/models/{VGG19_FILENAME}")
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG-19 layers {unknown}; known: {sorted(VGG19_LAYERS)}")
        self.taps = sorted(VGG19_LAYERS[n] for n in layers)
        self.features = vgg19_features(self.taps[-1] + 1)
        state = torch.load(path, map_location="cpu", weights_only=True)
        needed = set(self.features.state_dict())
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict({k: v for k, v in feats.items() if k in needed}, strict=True)
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptual:
        return super().train(False)  # always frozen

    def _feats(self, x: Tensor) -> list[Tensor]:
        h, out = (x - self.mean) / self.std, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``pred``, ``target``: (B, 3, H, W) in [0, 1] -> float scalar >= 0."""
        with torch.no_grad():
            ft = self._feats(target)
        fp = self._feats(pred)
        return torch.stack([F.mse_loss(a, b) for a, b in zip(fp, ft)]).mean()

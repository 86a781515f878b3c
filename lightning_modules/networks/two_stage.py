"""Networks of the two-stage method (paper file 003): a StarGAN emotion editor and a Wav2Lip lip-sync generator.

Stage 1 (StarGAN, Choi et al. 2018, the report's §3 "emotion generator"): ``EmotionEditor`` and
``EditorDiscriminator``, with the WGAN-GP gradient penalty :func:`gradient_penalty`.

Stage 2 (Wav2Lip, Prajwal et al. 2020, the report's §4): ``LipSyncGenerator`` (face encoder over the
lower-half-masked target and a reference, audio encoder over a 16-row mel window, decoder with
skips, sigmoid output) and ``QualityDiscriminator`` on the lower half.

Sizes are generic in the crop side S (a power of two >= 32, or 3 x one: Wav2Lip's 96 px); the
layer pattern follows the anchors. Plain ``nn.Module``s; images are (B, 3, S, S) float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict


# ------------------------------------------------------------------------------------------ stage 1
@dataclass
class EditorConfig:
    """StarGAN sizes (defaults = StarGAN's: conv_dim 64, 6 residual blocks, D with 6 stride-2 convs).

    Attributes:
        image_size: S, the crop side (a multiple of 4 and of ``2 ** d_repeat``).
        n_emotions: domains (``primitives.vocab.EMOTIONS``: 8).
        g_conv_dim, g_repeat: generator width and residual blocks.
        d_conv_dim, d_repeat: discriminator width and stride-2 convs.
    """

    image_size: int = 128
    n_emotions: int = 8
    g_conv_dim: int = 64
    g_repeat: int = 6
    d_conv_dim: int = 64
    d_repeat: int = 6

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size % (2 ** self.d_repeat):
            raise ValueError(f"two_stage.net.editor.image_size={self.image_size} must be a multiple of 4 and of "
                             f"2 ** d_repeat = {2 ** self.d_repeat}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "EditorConfig":
        return config_from_dict(cls, d, "two_stage.net.editor")


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # track_running_stats=False: statistics of the current image in train AND eval mode (StarGAN
    # never calls eval(); Lightning does, and running stats would change the edits)
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), _instance_norm(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), _instance_norm(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class EmotionEditor(nn.Module):
    """StarGAN generator: ``(image (B, 3, S, S) in [-1, 1], emotion (B,) int64) -> (B, 3, S, S) in [-1, 1]``.

    7x7 conv over the image with the target one-hot tiled as ``n_emotions`` extra channels, two
    stride-2 downsamplings, ``g_repeat`` residual blocks, two transposed-conv upsamplings, 7x7 conv, tanh.
    """

    def __init__(self, cfg: EditorConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.g_conv_dim
        layers: list[nn.Module] = [nn.Conv2d(3 + cfg.n_emotions, c, 7, 1, 3, bias=False), _instance_norm(c),
                                   nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), _instance_norm(2 * c), nn.ReLU(inplace=True)]
            c *= 2
        layers += [_Residual(c) for _ in range(cfg.g_repeat)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), _instance_norm(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.Conv2d(c, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, image: Tensor, emotion: Tensor) -> Tensor:
        onehot = F.one_hot(emotion, self.cfg.n_emotions).to(image.dtype)  # (B, C)
        tiled = onehot[:, :, None, None].expand(-1, -1, *image.shape[-2:])
        return self.main(torch.cat([image, tiled], dim=1))


class EditorDiscriminator(nn.Module):
    """StarGAN discriminator: ``image (B, 3, S, S) -> (patch scores (B, 1, S/2^r, S/2^r), emotion logits (B, C))``.

    ``d_repeat`` 4x4 stride-2 convs with LeakyReLU(0.01) (no normalisation: WGAN-GP), a 3x3 PatchGAN
    real/fake head and a classification head whose kernel covers the whole final map.
    """

    def __init__(self, cfg: EditorConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c = 3, cfg.d_conv_dim
        for _ in range(cfg.d_repeat):
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.01)]
            c_in, c = c, min(2 * c, 2048)
        self.main = nn.Sequential(*layers)
        k = cfg.image_size // 2 ** cfg.d_repeat
        self.src = nn.Conv2d(c_in, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(c_in, cfg.n_emotions, k, bias=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        h = self.main(image)
        return self.src(h), self.cls(h).flatten(1)


def gradient_penalty(discriminator: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): ``mean((||grad_x D(x_hat)||_2 - 1)^2)`` at ``x_hat = a real + (1 - a) fake``.

    Args:
        discriminator: returns the patch scores first (summed over the patch for the gradient).
        real, fake: (B, 3, S, S); alpha: (B, 1, 1, 1) in [0, 1] (default uniform random).

    Returns:
        () float; differentiable w.r.t. the discriminator's parameters (``create_graph=True``).
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = discriminator(x_hat)[0]
    grad = torch.autograd.grad(out.sum(), x_hat, create_graph=True)[0].flatten(1)
    return ((grad.norm(dim=1) - 1) ** 2).mean()


# ------------------------------------------------------------------------------------------ stage 2
@dataclass
class LipSyncConfig:
    """Wav2Lip-style generator sizes.

    Attributes:
        image_size: S, crop side: a power of two >= 32, or three times one (Wav2Lip: 96 = 3 x 32).
        widths: face-encoder channels after the stem and each stage down to 1x1 (:func:`face_stages`:
            stride-2 stages, and for S = 3 x 2^k a last 3x3 valid conv from 3x3 to 1x1 as Wav2Lip's).
        audio_widths: audio-encoder channels; its last is the audio embedding.
        d_widths: quality discriminator channels (stride-2 convs on the lower half).
        architecture: ``"ours"`` (:class:`LipSyncGenerator`, any size above) or ``"wav2lip"``
            (:class:`~lightning_modules.networks.wav2lip.Wav2LipGenerator`, the released layout at
            96 px, so its published weights load: ``optim.lipsync_init``; ``widths`` / ``audio_widths``
            unused).
    """

    image_size: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 512)
    audio_widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    d_widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    architecture: str = "ours"

    def __post_init__(self) -> None:
        if self.architecture not in ("ours", "wav2lip"):
            raise ValueError(f"two_stage.net.lipsync.architecture must be 'ours' or 'wav2lip', got {self.architecture!r}")
        if self.architecture == "wav2lip" and self.image_size != 96:
            raise ValueError(f"two_stage.net.lipsync.architecture 'wav2lip' is Wav2Lip's 96 px generator: "
                             f"set two_stage.net.crop_size to 96, got {self.image_size}")
        self.widths = tuple(int(c) for c in self.widths)
        self.audio_widths = tuple(int(c) for c in self.audio_widths)
        self.d_widths = tuple(int(c) for c in self.d_widths)
        stages = face_stages(self.image_size)
        if self.architecture == "ours" and len(self.widths) != len(stages) + 1:
            raise ValueError(f"two_stage.net.lipsync.widths needs {len(stages) + 1} entries at {self.image_size} px "
                             f"(stem + one per stage down to 1x1), got {len(self.widths)}")

    @property
    def crop_size(self) -> int:
        """The crop side S (what ``evaluate_video`` / ``generate`` read from a method's ``net_cfg``)."""
        return self.image_size

    @classmethod
    def from_dict(cls, d: dict | None) -> "LipSyncConfig":
        return config_from_dict(cls, d, "two_stage.net.lipsync")


def face_stages(image_size: int) -> list[int]:
    """Input side of each face-encoder stage below the stem, e.g. 96 -> [96, 48, 24, 12, 6, 3] (the
    stage at side 3 is a 3x3 valid conv, the others stride-2 convs), 64 -> [64, 32, 16, 8, 4, 2].

    Raises:
        ValueError: ``image_size`` is neither a power of two >= 32 nor three times one >= 48.
    """
    side, sides = int(image_size), []
    while side > 1 and side % 2 == 0:
        sides.append(side)
        side //= 2
    if side == 3:
        sides.append(3)
    elif side != 1:
        sides = []
    if image_size < 32 or not sides:
        raise ValueError(f"two_stage.net.lipsync.image_size must be a power of two >= 32 or three times one "
                         f"(Wav2Lip: 96), got {image_size}")
    return sides


def _conv(c_in: int, c_out: int, stride: int = 1, k: int = 3, padding: int | None = None) -> nn.Sequential:
    padding = k // 2 if padding is None else padding
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class LipSyncGenerator(nn.Module):
    """``(masked target, reference) (B, 3, S, S) each in [0, 1], mel (B, 1, 16, 80) in [-4, 4] -> (B, 3, S, S) in [0, 1]``.

    The masked target is ``networks.cvae.mask_lower_half`` of the target frame; the mel window is
    ``lightning_modules.cvae.frame_mel_windows`` (16 rows around the frame).

    Face encoder: a 7x7 stem over the 6-channel stack then stride-2 3x3 convs down to 1x1 (Wav2Lip's
    pattern; BatchNorm + ReLU); audio encoder: strided convs over the mel window, average-pooled to a
    1x1 embedding; decoder: transposed convs from [audio, face bottleneck], each level concatenated
    with the encoder's map of its size (skips), a 1x1 output conv and a sigmoid.
    """

    def __init__(self, cfg: LipSyncConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        sides = face_stages(cfg.image_size)  # 3x3 -> 1x1: valid conv (stride 1, no padding)
        self.face = nn.ModuleList([_conv(6, w[0], 1, 7)] + [_conv(w[i], w[i + 1], 1, 3, 0) if side == 3 else
                                                            _conv(w[i], w[i + 1], 2) for i, side in enumerate(sides)])
        a = cfg.audio_widths
        audio: list[nn.Module] = [_conv(1, a[0])]
        for i in range(len(a) - 1):
            audio.append(_conv(a[i], a[i + 1], stride=2))
        self.audio = nn.Sequential(*audio, nn.AdaptiveAvgPool2d(1))
        self.up = nn.ModuleList()
        c = a[-1] + w[-1]  # [audio embedding, face bottleneck] at 1x1
        for skip, side in zip(reversed(w[:-1]), reversed(sides)):  # up to each stage's input side
            up = nn.ConvTranspose2d(c, skip, 3, 1, 0) if side == 3 else nn.ConvTranspose2d(c, skip, 4, 2, 1)
            self.up.append(nn.Sequential(up, nn.BatchNorm2d(skip), nn.ReLU(inplace=True)))
            c = 2 * skip
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, masked: Tensor, reference: Tensor, mel: Tensor) -> Tensor:
        h = torch.cat([masked, reference], dim=1)
        skips = []
        for stage in self.face:
            h = stage(h)
            skips.append(h)
        h = torch.cat([self.audio(mel / 4.0), skips.pop()], dim=1)  # (B, a + w, 1, 1)
        for up in self.up:
            h = torch.cat([up(h), skips.pop()], dim=1)
        return torch.sigmoid(self.out(h))


def build_lipsync(cfg: LipSyncConfig) -> nn.Module:
    """The stage-2 generator ``cfg.architecture`` names (both take ``(masked, reference, mel)``)."""
    from lightning_modules.networks.wav2lip import Wav2LipGenerator

    return Wav2LipGenerator() if cfg.architecture == "wav2lip" else LipSyncGenerator(cfg)


def mel_offset(cfg: LipSyncConfig) -> int:
    """Mel rows from a frame to its audio window's start for ``cfg.architecture`` (``frame_mel_windows``)."""
    from lightning_modules.networks.wav2lip import MEL_OFFSET

    return MEL_OFFSET if cfg.architecture == "wav2lip" else -6


class QualityDiscriminator(nn.Module):
    """Wav2Lip's visual quality discriminator on the lower half: ``(B, 3, S, S) in [0, 1] -> (B,) logits``."""

    def __init__(self, cfg: LipSyncConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in cfg.d_widths:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.main = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1))

    def forward(self, image: Tensor) -> Tensor:
        return self.main(image[..., image.shape[-2] // 2:, :]).squeeze(1)


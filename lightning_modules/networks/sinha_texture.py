"""Texture generator G_T of Sinha et al. (paper file 002, §3.2 eq. 5-9, appendix A.1), plain ``nn.Module``s.

Data flow at paper size (S = 256; ``widths`` scale every channel count, sized down for CPU)::

    I_n (B, 3, S, S) --E_T--> 64 @ S, 128 @ S/2, 256 @ S/4 = f_t           (skips for D_T)
    heatmaps H(G'), H(G) (68 Gaussians + 1 background) at S/4 -> f_h = H(G') - H(G)  (69 ch)
    concat(f_h, f_t) (325 ch) --motion encoder--> 512 @ S/4, 1024 @ S/8, 1024 @ S/16
        + f_e broadcast at the bottleneck --decoder--> 1024 @ S/16, 512 @ S/8, 256 @ S/4
        --> optical flow OF (tanh, 2 ch, in [-1, 1] grid units) and occlusion map OM (1 ch)
    D_T(OF (+) OM, f_t) --> 256 @ S/4 (AdaIN from f_t), 128 @ S/2, 64 @ S (skips from E_T), 3 @ S = I_E

Readings (all parameters of :class:`SinhaTextureConfig`):

* occlusion: the paper applies a softmax to the occlusion map, which over one channel is the
  constant 1; ``occlusion="sigmoid"`` (default, FOMM's choice) or ``"softmax2"`` (2-way softmax,
  first channel kept).
* ``warp="features"`` (FOMM's reading, default): E_T's features are warped by OF (bilinear
  ``grid_sample``, identity grid + flow) and multiplied by OM before D_T decodes them; the skips
  are warped by the upsampled flow. ``warp="none"``: eq. 5 literally, D_T decodes ``OF (+) OM``
  with ``f_t`` entering through AdaIN and the skips only.
* the heatmap variance (``heatmap_sigma``, in heatmap pixels; FOMM uses 0.01 in [-1, 1] units,
  about 0.6 px at 64 px) and the landmark frame (``lmk_size``: landmarks in pixels of a
  ``lmk_size`` crop) are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict, config_to_dict


@dataclass
class SinhaTextureConfig:
    """G_T sizes (paper A.1 defaults) and readings (module docstring).

    Attributes:
        crop_size: S, image side in pixels (paper 256); a multiple of 16.
        encoder_widths: E_T channels at S, S/2, S/4 (64, 128, 256).
        motion_widths: motion encoder channels at S/4, S/8, S/16 (512, 1024, 1024).
        emotion_dim: size of f_e (128).
        heatmap_sigma: Gaussian standard deviation in heatmap pixels.
        lmk_size: landmarks are pixels of a ``lmk_size`` crop (the shards' 256).
        occlusion: ``"sigmoid"`` | ``"softmax2"``.
        warp: ``"features"`` (FOMM) | ``"none"`` (eq. 5 literal).
        use_emotion: join f_e at the motion bottleneck (False: Table 4 "w/o emotion feature", f_e = 0).
    """

    crop_size: int = 256
    encoder_widths: tuple[int, int, int] = (64, 128, 256)
    motion_widths: tuple[int, int, int] = (512, 1024, 1024)
    emotion_dim: int = 128
    heatmap_sigma: float = 1.0
    lmk_size: int = 256
    occlusion: str = "sigmoid"
    warp: str = "features"
    use_emotion: bool = True

    def __post_init__(self) -> None:
        self.encoder_widths = tuple(int(c) for c in self.encoder_widths)
        self.motion_widths = tuple(int(c) for c in self.motion_widths)
        if self.crop_size < 16 or self.crop_size % 16:
            raise ValueError(f"sinha.net.texture.crop_size must be a positive multiple of 16, got {self.crop_size}")
        if len(self.encoder_widths) != 3 or len(self.motion_widths) != 3 or min(self.encoder_widths + self.motion_widths) < 1:
            raise ValueError("sinha.net.texture encoder_widths / motion_widths must be 3 positive ints each")
        if self.occlusion not in ("sigmoid", "softmax2"):
            raise ValueError(f"sinha.net.texture.occlusion must be 'sigmoid' or 'softmax2', got {self.occlusion!r}")
        if self.warp not in ("features", "none"):
            raise ValueError(f"sinha.net.texture.warp must be 'features' or 'none', got {self.warp!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "SinhaTextureConfig":
        return config_from_dict(cls, d, "sinha.net.texture")

    def to_dict(self) -> dict:
        return config_to_dict(self)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.InstanceNorm2d(c_out, affine=True),
                         nn.LeakyReLU(0.2, inplace=True))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), _conv(c_in, c_out))


def landmark_heatmaps(lmk: Tensor, size: int, lmk_size: float, sigma: float) -> Tensor:
    """Gaussian heatmaps at landmarks plus an all-zero background channel (FOMM's representation).

    Args:
        lmk: (B, 68, 2) float, pixels of a ``lmk_size`` crop (x, y).
        size: heatmap side in pixels.
        lmk_size: side of the crop the landmarks are in.
        sigma: standard deviation in heatmap pixels (> 0).

    Returns:
        (B, 69, size, size) float in [0, 1]; channel 0 = background (zeros).
    """
    pts = (lmk.float() + 0.5) * (size / lmk_size) - 0.5  # heatmap pixel centres
    grid = torch.arange(size, dtype=torch.float32, device=lmk.device)
    gx = torch.exp(-(grid[None, None, :] - pts[..., 0:1]) ** 2 / (2 * sigma ** 2))  # (B, 68, size)
    gy = torch.exp(-(grid[None, None, :] - pts[..., 1:2]) ** 2 / (2 * sigma ** 2))
    maps = gy[..., :, None] * gx[..., None, :]  # (B, 68, size, size)
    return torch.cat([torch.zeros_like(maps[:, :1]), maps], dim=1)


def heatmap_difference(lmk_generated: Tensor, lmk_source: Tensor, size: int, lmk_size: float, sigma: float) -> Tensor:
    """f_h = H(G') - H(G) (paper 002 §3.2), (B, 69, size, size); exactly zero when G' = G."""
    return landmark_heatmaps(lmk_generated, size, lmk_size, sigma) - landmark_heatmaps(lmk_source, size, lmk_size, sigma)


def warp(features: Tensor, flow: Tensor) -> Tensor:
    """Bilinear backward warp: ``out(p) = features(p + flow(p))``.

    Args:
        features: (B, C, H, W).
        flow: (B, 2, h, w) float, (x, y) offsets in ``grid_sample``'s [-1, 1] units; resized to H x W.

    Returns:
        (B, C, H, W); a zero flow returns ``features`` (up to float rounding).
    """
    b, _, h, w = features.shape
    if flow.shape[-2:] != (h, w):
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=features.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=features.device)
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    grid = identity[None] + flow.permute(0, 2, 3, 1)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)


class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang & Belongie 2017): ``x`` normalised per channel, then
    scaled and shifted by affine maps of the style's channel means and standard deviations."""

    def __init__(self, channels: int, style_channels: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(2 * style_channels, 2 * channels)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        stats = torch.cat([style.mean((2, 3)), style.std((2, 3))], dim=1)  # (B, 2 C_s)
        gamma, beta = self.affine(stats).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma[..., None, None]) + beta[..., None, None]


class TextureGenerator(nn.Module):
    """G_T: ``forward(image, lmk_source, lmk_generated, f_e) -> (I_E, flow, occlusion)``.

    Args (forward):
        image: (B, 3, S, S) float in [0, 1], the neutral identity image I_n.
        lmk_source: (B, 68, 2) landmarks G of I_n, pixels of a ``lmk_size`` crop.
        lmk_generated: (B, 68, 2) landmarks G' to render.
        f_e: (B, emotion_dim) emotion feature (``sinha_graph.EmotionEncoder``).

    Returns:
        I_E (B, 3, S, S) in [0, 1]; OF (B, 2, S/4, S/4) in [-1, 1]; OM (B, 1, S/4, S/4) in [0, 1].

    ``encoder_parameters()`` / ``decoder_parameters()``: E_T and D_T, what one-shot fine-tuning updates.
    """

    def __init__(self, cfg: SinhaTextureConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SinhaTextureConfig()
        e1, e2, e3 = cfg.encoder_widths
        m1, m2, m3 = cfg.motion_widths
        # E_T
        self.enc = nn.ModuleList([_conv(3, e1), _conv(e1, e2, 2), _conv(e2, e3, 2)])
        # motion encoder / decoder -> OF, OM
        self.motion_down = nn.ModuleList([_conv(69 + e3, m1), _conv(m1, m2, 2), _conv(m2, m3, 2)])
        self.motion_up = nn.ModuleList([_conv(m3 + cfg.emotion_dim, m3), _up(m3, m2), _up(m2, e3)])
        self.flow = nn.Conv2d(e3, 2, 3, padding=1)
        self.occlusion = nn.Conv2d(e3, 2 if cfg.occlusion == "softmax2" else 1, 3, padding=1)
        nn.init.zeros_(self.flow.weight)  # start from the identity warp
        nn.init.zeros_(self.flow.bias)
        # D_T
        d_in = e3 + 3 if cfg.warp == "features" else 3
        self.dec_in = _conv(d_in, e3)
        self.adain = AdaIN(e3, e3)
        self.dec = nn.ModuleList([_up(e3 + e3, e2), _up(e2 + e2, e1)])
        self.out = nn.Conv2d(e1 + e1, 3, 3, padding=1)

    def encoder_parameters(self):
        return self.enc.parameters()

    def decoder_parameters(self):
        return [p for m in (self.dec_in, self.adain, self.dec, self.out) for p in m.parameters()]

    def encode(self, image: Tensor) -> list[Tensor]:
        """E_T: (B, 3, S, S) -> features at S, S/2, S/4."""
        s = self.cfg.crop_size
        if image.ndim != 4 or image.shape[1:] != (3, s, s):
            raise ValueError(f"image must be (B, 3, {s}, {s}), got {tuple(image.shape)}")
        feats, h = [], image
        for block in self.enc:
            h = block(h)
            feats.append(h)
        return feats

    def motion(self, f_t: Tensor, f_h: Tensor, f_e: Tensor) -> tuple[Tensor, Tensor]:
        """(f_t, f_h, f_e) -> OF (B, 2, S/4, S/4) in [-1, 1], OM (B, 1, S/4, S/4) in [0, 1]."""
        h = torch.cat([f_h, f_t], dim=1)
        for block in self.motion_down:
            h = block(h)
        h = torch.cat([h, f_e[..., None, None].expand(-1, -1, *h.shape[-2:])], dim=1)
        for block in self.motion_up:
            h = block(h)
        flow = torch.tanh(self.flow(h))
        logits = self.occlusion(h)
        occ = torch.sigmoid(logits) if self.cfg.occlusion == "sigmoid" else logits.softmax(1)[:, :1]
        return flow, occ

    def decode(self, feats: list[Tensor], flow: Tensor, occ: Tensor) -> Tensor:
        """D_T (eq. 5): ``OF (+) OM`` and E_T's features -> I_E (B, 3, S, S) in [0, 1]."""
        f1, f2, f_t = feats
        maps = torch.cat([flow, occ], dim=1)
        if self.cfg.warp == "features":
            f_t = warp(f_t, flow) * occ
            f2 = warp(f2, flow) * F.interpolate(occ, size=f2.shape[-2:], mode="bilinear", align_corners=False)
            f1 = warp(f1, flow) * F.interpolate(occ, size=f1.shape[-2:], mode="bilinear", align_corners=False)
            h = self.dec_in(torch.cat([f_t, maps], dim=1))
        else:
            h = self.dec_in(maps)
        h = self.adain(h, f_t)
        h = self.dec[0](torch.cat([h, f_t], dim=1))
        h = self.dec[1](torch.cat([h, f2], dim=1))
        return torch.sigmoid(self.out(torch.cat([h, f1], dim=1)))

    def forward(self, image: Tensor, lmk_source: Tensor, lmk_generated: Tensor, f_e: Tensor):
        feats = self.encode(image)
        size = self.cfg.crop_size // 4
        f_h = heatmap_difference(lmk_generated, lmk_source, size, self.cfg.lmk_size, self.cfg.heatmap_sigma)
        flow, occ = self.motion(feats[2], f_h, f_e if self.cfg.use_emotion else torch.zeros_like(f_e))
        return self.decode(feats, flow, occ), flow, occ


class FrameDiscriminator(nn.Module):
    """PatchGAN frame discriminator for eq. 8's adversarial loss (LSGAN, as D_L).

    Shapes: (B, 3, S, S) in [0, 1] -> (B, 1, S/8, S/8) realism scores.
    """

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        layers, c_in = [], 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.Conv2d(c_in, 1, 3, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image * 2 - 1)

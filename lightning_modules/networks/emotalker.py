"""EmoTalker's networks (paper 004 §2.1-2.3, built on DiffTalk): the f4 image autoencoder, the
conditional UNet with three cross-attention tokens, the condition encoders, the strength-weighted
cross-attention, LDM's DDIM scheduler and the identity-preserving sampler (eq. 6).

The UNet, the autoencoder and the scheduler are diffusers' (``UNet2DConditionModel``,
``AutoencoderKL``, ``DDIMScheduler``); what is written here is EmoTalker's own.

Readings (ours where the paper and DiffTalk leave it open; parameters where it matters)
--------------------------------------------------------------------------------------
* Condition C (eq. 2) is THREE tokens ``[f_audio, f_landmark, e_emo]``, key/value of every
  cross-attention. DiffTalk concatenates its conditions into ONE token: the softmax over a single
  key is 1 whatever the query, so its cross-attention is a per-sample constant added to every
  position (the attention itself selects nothing). Three tokens let the queries choose.
* Audio: windows of ``audio_window`` (8, DiffTalk) video frames of the speech-content feature
  chosen for ``sinha`` (pocketsphinx phones, 40-d per frame); per-frame MLP, temporal convs, then
  DiffTalk's attention over the window positions (softmax weights from a conv stack) -> one token.
* Landmarks: the REFERENCE frame's upper face (points 17-47: brows, nose, eyes; x, y / crop size)
  through an MLP; the target's would leak its brows and eyes (its emotion) into the condition.
* Emotion: e_emo (384-d, eq. 3, :mod:`lightning_modules.networks.intensity`) through E_E (MLP).
* Strength: prompt-to-prompt style, the emotion token's attention weights are multiplied by a
  per-sample coefficient, then each query's weights renormalised (= adding log(strength) to the
  token's logit). Prompt-to-prompt does not renormalise; without it a strength of 0 would still
  let the emotion token's key change the other tokens' weights through the softmax denominator,
  with it 0 removes the token exactly and 1 is plain attention.
* UNet input (DiffTalk's 9 channels at f4 with 3 latent channels): ``[z_t, z(masked target),
  z(reference)]``; the mask zeroes the crop below ``mask_top`` (0.55 of the height: below the
  nose in the shards' aligned crops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict

UPPER_FACE = slice(17, 48)
"""68-point indices of the brows (17-26), nose (27-35) and eyes (36-47): the landmark condition."""
EMOTION_TOKEN = 2
"""Index of e_emo's token in C = [f_audio, f_landmark, e_emo]."""


@dataclass
class AutoencoderConfig:
    """The frozen image autoencoder at f = 2^(len(block_out_channels) - 1) = 4 (LDM's KL-f4 / VQ-f4 shape).

    Attributes:
        image_size: crop side S (pixels); latents are (latent_channels, S / 4, S / 4).
        block_out_channels: encoder / decoder widths (LDM f4: 128, 256, 512); sized down for CPU.
        latent_channels: 3 (LDM f4).
        layers_per_block, norm_num_groups: diffusers' (groups must divide every width).
        mid_attention: self-attention in the middle block (LDM: yes; off saves CPU time at S / 4).
        kind: ``"kl"`` (diffusers ``AutoencoderKL``: what ``train@autoencoder`` trains, LDM's KL-f4)
            or ``"vq"`` (diffusers ``VQModel``: LDM's VQ-f4, which DiffTalk and hence EmoTalker use;
            loaded pretrained only, ``emotalker.optim.autoencoder_path``). The diffusion runs on
            the VQ encoder's pre-quantisation latents and the decoder quantises (LDM's VQ recipe).
        num_vq_embeddings, vq_embed_dim: the VQ codebook (LDM VQ-f4: 8192 codes of 3 dims).
    """

    image_size: int = 128
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 3
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_attention: bool = True
    kind: str = "kl"
    num_vq_embeddings: int = 8192
    vq_embed_dim: int | None = None

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.kind not in ("kl", "vq"):
            raise ValueError(f"autoencoder kind must be 'kl' or 'vq', got {self.kind!r}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every width {self.block_out_channels}")
        if self.image_size % self.factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the factor {self.factor}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AutoencoderConfig":
        return config_from_dict(cls, d or {}, "autoencoder.net")


def build_autoencoder(cfg: AutoencoderConfig):
    """diffusers ``AutoencoderKL`` (``kind: kl``) or ``VQModel`` (``kind: vq``) of ``cfg``
    (scaling_factor left at 1: the caller measures or states its own)."""
    from diffusers import AutoencoderKL, VQModel

    n = len(cfg.block_out_channels)
    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                  up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
                  layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                  norm_num_groups=cfg.norm_num_groups, sample_size=cfg.image_size, scaling_factor=1.0,
                  mid_block_add_attention=cfg.mid_attention)
    if cfg.kind == "vq":
        return VQModel(**common, num_vq_embeddings=cfg.num_vq_embeddings, vq_embed_dim=cfg.vq_embed_dim)
    return AutoencoderKL(**common)


@dataclass
class DenoiserConfig:
    """The UNet and the condition encoders (module docstring for the readings).

    Attributes:
        crop_size: S, the face crops' side (``frames_<S>``; = the autoencoder's image_size).
        latent_channels: the autoencoder's (3).
        block_out_channels, layers_per_block, norm_num_groups: the UNet's (DiffTalk / LDM:
            model_channels 256 x channel_mult 1, 2, 3, 4 = (256, 512, 768, 1024), num_res_blocks 2,
            32 groups: the ``emotalker`` preset; sized down for CPU in params.yaml).
        attention_head_dim: diffusers' legacy name: the number of attention heads per block, used
            when ``head_channels`` is None.
        head_channels: channels per attention head (LDM's ``num_head_channels``; DiffTalk: 32), so a
            block of width C has C / head_channels heads; None: ``attention_head_dim`` heads.
        cross_attention_dim: D, the width of each condition token.
        speech_dim: speech feature width per frame (phones: 40); audio_window: frames per window (8).
        lmk_size: pixels of the crop the landmarks are given in (256: the shards' ``lmk``).
        emotion_dim: e_emo width (384: MiniLM).
        mask_top: rows >= mask_top * S of the masked target are zeroed (DiffTalk: below the nose).
        masked_input: the UNet's masked-image channels (:func:`masked_input`). ``"none"``
            (default, ours): an all-zero image, in training and at inference, so the denoiser must
            render brows and eyes itself and the emotion condition reaches the whole face.
            ``"target"`` (DiffTalk's reading): the target frame's upper face above ``mask_top`` in
            training but the reference's at inference (there is no target then): the denoiser learns
            to copy the upper face it is given, so from a neutral reference emotion only reaches
            below the mask line.
    """

    crop_size: int = 128
    latent_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    head_channels: int | None = None
    norm_num_groups: int = 16
    cross_attention_dim: int = 64
    speech_dim: int = 40
    audio_window: int = 8
    lmk_size: int = 256
    emotion_dim: int = 384
    mask_top: float = 0.55
    masked_input: str = "none"

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.masked_input not in MASKED_INPUTS:
            raise ValueError(f"masked_input must be one of {MASKED_INPUTS}, got {self.masked_input!r}")
        if not 0 < self.mask_top < 1:
            raise ValueError(f"mask_top must be in (0, 1), got {self.mask_top}")
        if self.audio_window < 2:
            raise ValueError(f"audio_window must be >= 2, got {self.audio_window}")
        if self.head_channels is not None and any(c % self.head_channels for c in self.block_out_channels):
            raise ValueError(f"head_channels {self.head_channels} must divide every block width {self.block_out_channels}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "DenoiserConfig":
        return config_from_dict(cls, d or {}, "emotalker.net")


class StrengthAttnProcessor:
    """diffusers attention processor: plain attention, except that in cross-attention the weights on
    the emotion token (key index :data:`EMOTION_TOKEN`) are multiplied by ``emotion_strength`` (B,)
    >= 0 after the softmax and renormalised (module docstring; paper 004 §2.2 "strength coefficient").
    ``emotion_strength`` arrives through the UNet's ``cross_attention_kwargs`` (None: 1)."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 emotion_strength: Tensor | None = None) -> Tensor:
        residual = hidden_states
        b, n, _ = hidden_states.shape  # the UNet's transformer blocks pass (B, H W, C)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        if encoder_hidden_states is None or emotion_strength is None:  # plain attention, fused kernel
            out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        else:
            probs = attn.get_attention_scores(query, key, None)  # (B heads, N, K), batch-major
            scale = torch.ones(b, probs.shape[-1], dtype=probs.dtype, device=probs.device)
            scale[:, EMOTION_TOKEN] = emotion_strength.to(probs)
            probs = probs * scale.repeat_interleave(attn.heads, dim=0)[:, None, :]
            out = torch.bmm(probs / probs.sum(-1, keepdim=True), value)
        out = attn.batch_to_head_dim(out)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def build_unet(cfg: DenoiserConfig, latent_size: int):
    """diffusers ``UNet2DConditionModel``: 9 input channels ([z_t, z_masked, z_ref]), 3 out (epsilon),
    cross-attention in every block but the first down / last up, :class:`StrengthAttnProcessor` everywhere."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=3 * cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=(cfg.attention_head_dim if cfg.head_channels is None  # (legacy name: heads per block)
                            else tuple(c // cfg.head_channels for c in cfg.block_out_channels)),
        norm_num_groups=cfg.norm_num_groups)
    unet.set_attn_processor(StrengthAttnProcessor())
    return unet


class AudioEncoder(nn.Module):
    """Speech windows (B, W, speech_dim) -> f_audio (B, D): per-frame MLP, two temporal convs, and
    DiffTalk's AudioAttNet-style softmax attention over the W positions."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        d = cfg.cross_attention_dim
        self.frame = nn.Sequential(nn.Linear(cfg.speech_dim, d), nn.LeakyReLU(0.02))
        self.temporal = nn.Sequential(nn.Conv1d(d, d, 3, padding=1), nn.LeakyReLU(0.02),
                                      nn.Conv1d(d, d, 3, padding=1), nn.LeakyReLU(0.02))
        self.attention = nn.Sequential(nn.Conv1d(d, 16, 3, padding=1), nn.LeakyReLU(0.02), nn.Conv1d(16, 1, 3, padding=1))
        self.out = nn.Linear(d, d)

    def forward(self, speech: Tensor) -> Tensor:
        h = self.temporal(self.frame(speech).transpose(1, 2))  # (B, D, W)
        weights = self.attention(h).softmax(dim=-1)  # (B, 1, W)
        return self.out((h * weights).sum(-1))


class ConditionEncoder(nn.Module):
    """E_A, E_L and E_E: the condition C = [f_audio, f_landmark, e_emo] (eq. 2) as (B, 3, D) tokens.

    ``forward(speech (B, W, speech_dim), ref_lmk (B, 68, 2) pixels of a lmk_size crop, e_emo (B, emotion_dim))``.
    """

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        d, n_upper = cfg.cross_attention_dim, UPPER_FACE.stop - UPPER_FACE.start
        self.cfg = cfg
        self.audio = AudioEncoder(cfg)
        self.landmark = nn.Sequential(nn.Linear(2 * n_upper, 128), nn.SiLU(), nn.Linear(128, d))
        self.emotion = nn.Sequential(nn.Linear(cfg.emotion_dim, 128), nn.SiLU(), nn.Linear(128, d))

    def forward(self, speech: Tensor, ref_lmk: Tensor, e_emo: Tensor) -> Tensor:
        upper = (ref_lmk[:, UPPER_FACE].float() / self.cfg.lmk_size).flatten(1)  # (B, 62) in ~[0, 1]
        return torch.stack([self.audio(speech.float()), self.landmark(upper), self.emotion(e_emo.float())], dim=1)


MASKED_INPUTS = ("none", "target")


def masked_input(images: Tensor, cfg: DenoiserConfig) -> Tensor:
    """The image behind the UNet's masked channels (``cfg.masked_input``): (..., 3, S, S) float ->
    same shape, zeros (``"none"``) or :func:`lower_face_mask` of ``images`` (``"target"``; the
    caller passes the target frame in training, the reference at inference)."""
    return torch.zeros_like(images) if cfg.masked_input == "none" else lower_face_mask(images, cfg.mask_top)


def lower_face_mask(images: Tensor, mask_top: float) -> Tensor:
    """(..., 3, S, S) images with rows >= round(mask_top * S) set to 0 (the masked target)."""
    out = images.clone()
    out[..., round(mask_top * images.shape[-2]):, :] = 0
    return out


def speech_windows(speech: Tensor, frames: Tensor, window: int) -> Tensor:
    """(B, T, F) per-frame features, frame indices (B, K) -> (B, K, window, F), the ``window`` frames
    centred on each index (``window // 2`` before), edges padded by repetition."""
    t_len = speech.shape[1]
    offsets = torch.arange(window, device=speech.device) - window // 2
    idx = (frames[..., None] + offsets).clamp(0, t_len - 1)  # (B, K, W)
    rows = torch.arange(len(speech), device=speech.device)[:, None, None]
    return speech[rows, idx]


def ldm_scheduler():
    """DDIM with LDM's schedule: ``scaled_linear`` betas 0.0015 -> 0.0195 over 1000 steps (LDM's
    "linear" is linear in sqrt(beta); diffusers' ``linear`` is not), no clipping, alpha_T of the
    last step kept (``set_alpha_to_one=False``), ``steps_offset=1``."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                         beta_end=0.0195, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@torch.no_grad()
def identity_preserving_ddim(eps_fn, scheduler, source: Tensor, noise: Tensor, steps: int,
                             preserve_ratio: float, preserve_until: float) -> Tensor:
    """Paper 004 eq. 6: DDIM from the noised source latent; while t >= K = ``preserve_until`` x 1000
    the state is ``a * z_t(source) + (1 - a) * z_t`` (a = ``preserve_ratio``; z_t(source) the
    source latent noised to t with the same ``noise``) before each denoising step; plain DDIM after.

    Args:
        eps_fn: (z_t (N, C, h, w), t int) -> predicted noise (N, C, h, w).
        scheduler: a diffusers ``DDIMScheduler`` (:func:`ldm_scheduler`); its timesteps are set here.
        source: (N, C, h, w) the source (reference) latent; noise: same shape, N(0, 1).
        steps: DDIM steps; preserve_ratio a in [0, 1] (0 = plain DDIM); preserve_until K / T in [0, 1].

    Returns:
        (N, C, h, w) the denoised latent.
    """
    if not 0 <= preserve_ratio <= 1 or not 0 <= preserve_until <= 1:
        raise ValueError(f"preserve_ratio and preserve_until must be in [0, 1], got {preserve_ratio}, {preserve_until}")
    scheduler.set_timesteps(steps, device=source.device)
    k = preserve_until * scheduler.config.num_train_timesteps
    z = scheduler.add_noise(source, noise, scheduler.timesteps[:1])
    for t in scheduler.timesteps:
        if preserve_ratio > 0 and t >= k:
            z = preserve_ratio * scheduler.add_noise(source, noise, t[None]) + (1 - preserve_ratio) * z
        z = scheduler.step(eps_fn(z, int(t)), t, z).prev_sample
    return z


def predicted_x0(scheduler, z_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) for per-sample timesteps t (B,)."""
    abar = scheduler.alphas_cumprod.to(z_t.device)[t].view(-1, 1, 1, 1)
    return (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()

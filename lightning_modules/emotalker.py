"""Lightning glue for EmoTalker (paper file 004; networks in ``lightning_modules.networks.emotalker``
and ``...networks.intensity``): latent diffusion conditioned on audio, reference landmarks and an
emotion embedding, trained with eq. 1 + eq. 4 (eq. 5), sampled with identity-preserving DDIM (eq. 6).

Readings (ours where the paper and DiffTalk leave it open; parameters where it matters)
------------------------------------------------------------------------------------------
* Frozen parts inside the checkpoint: the autoencoder (``train@autoencoder``, a KL-f4 trained on the
  training faces, ours; or a pretrained diffusers ``AutoencoderKL`` / ``VQModel`` directory, e.g.
  LDM's VQ-f4 that DiffTalk and the paper use, ``autoencoder_path`` + its ``autoencoder_scaling``)
  and the Emotion Intensity Block's heads (``train_intensity``), so a checkpoint generates alone.
  The loss-side emotion classifier (eq. 4) is NOT stored: it is a loss, never the evaluator.
* Training condition: hard labels (paper §2.3): ``e_emo = e_{emotion} * alpha(intensity)`` with
  alpha = level / 3 (:func:`intensity_strength`; unspecified = 2/3), the prompt dataset's scale.
  At inference a prompt goes through the block instead (``generate(..., prompt=...)``).
* Target / reference: a random frame of the window and a reference at least ``reference_gap`` x T
  frames away (DiffTalk: a reference "far from the target"); its upper-face landmarks condition E_L.
* Eq. 4 at low t only: the classifier sees the autoencoder's decoding of the x0 prediction for
  samples with t < ``emotion_max_t`` (200 of 1000: above that the x0 prediction is a blur no
  expression classifier reads); ``lambda_emo`` 1 (eq. 5 adds the two).
* Sampling (``sampling``, set from ``evaluate.sampling.emotalker``): DDIM ``ddim_steps`` (25),
  eq. 6 with a = ``preserve_ratio`` 0.3 until K = ``preserve_until`` 0.65 T; one noise draw per
  clip shared by its frames (so frames differ only by their conditions: no per-frame flicker);
  the still is every frame's reference and eq. 6's source (and, with ``net.masked_input: target``,
  its masked upper half every frame's masked target).
* One-video fine-tuning (§3.2, unseen identities): :meth:`EmoTalkerModule.fine_tune` with
  :class:`FineTuneConfig` (``evaluate.fine_tune.emotalker``; the protocol's leave-one-out choice of
  the video is ``pipeline.protocol.one_video``).
* Masked input (``net.masked_input``): zeros by default, where DiffTalk gives the target's upper
  face; see :class:`~lightning_modules.networks.emotalker.DenoiserConfig`.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.generation import chw_to_frames, frames_to_chw
from lightning_modules.networks.config import config_to_dict
from lightning_modules.networks.emotalker import (ConditionEncoder, DenoiserConfig, build_unet, identity_preserving_ddim,
                                                  ldm_scheduler, masked_input, predicted_x0, speech_windows)
from lightning_modules.networks.intensity import EmotionIntensityBlock, embed_prompts, load_intensity_block
from primitives.speech_windows import inner_targets


def intensity_strength(intensity: Tensor) -> Tensor:
    """(B,) int64 levels (0 = unspecified, 1-3) -> (B,) float strengths alpha = level / 3 (0 -> 2/3)."""
    level = torch.where(intensity > 0, intensity, torch.full_like(intensity, 2)).clamp(max=3)
    return level.float() / 3.0


@dataclass
class EmoTalkerTrainConfig:
    """``train.methods.emotalker.optim`` (module docstring for the readings).

    Attributes:
        lr: AdamW learning rate of the UNet and condition encoders (> 0).
        lambda_emo, emotion_max_t: eq. 4's weight (>= 0) and the timesteps it applies below.
        reference_gap: reference at least this fraction of the window from the target, in [0, 1).
        autoencoder_ckpt: ``AutoencoderModule`` checkpoint (``train@autoencoder``), or
        autoencoder_path + autoencoder_scaling: a pretrained diffusers ``AutoencoderKL`` or ``VQModel``
            directory (LDM's KL-f4 or VQ-f4 converted to diffusers; DiffTalk, and so the paper, use
            VQ-f4, our trained default is KL-f4) and its latent scaling factor (1 / std; VQ-f4: 1).
        intensity_block: directory of the trained block (``train_intensity``); required: without it the
            emotion condition would be zero. ``"untrained"``: a block of zeros, said explicitly (tests,
            cost counts); a missing directory is a ``FileNotFoundError`` naming the stage.
        emotion_ckpt: the loss-side ``EmotionClassifierModule`` checkpoint (None: no eq. 4, recorded).
        ema_decay: exponential moving average of the weights (LDM / DiffTalk: 0.9999), updated after
            every optimiser step by Lightning's ``WeightAveraging`` callback (``pipeline.train``); the
            checkpoint holds the averaged weights. None: no average (the CPU sample run's 60 steps).
            Gradient clipping is the trainer's ``gradient_clip_val`` (``train.methods.emotalker.trainer``).
    """

    lr: float = 1e-4
    lambda_emo: float = 1.0
    emotion_max_t: int = 200
    reference_gap: float = 0.4
    autoencoder_ckpt: str | None = None
    autoencoder_path: str | None = None
    autoencoder_scaling: float | None = None
    intensity_block: str | None = None
    emotion_ckpt: str | None = None
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        p = "train.methods.emotalker.optim"
        if self.ema_decay is not None and not 0 <= self.ema_decay <= 1:
            raise ValueError(f"{p}.ema_decay must be in [0, 1] or null, got {self.ema_decay}")
        if not self.lr > 0 or self.lambda_emo < 0 or not 0 <= self.reference_gap < 1:
            raise ValueError(f"{p}: lr > 0, lambda_emo >= 0, reference_gap in [0, 1)")
        if (self.autoencoder_ckpt is None) == (self.autoencoder_path is None):
            raise ValueError(f"{p}: give exactly one of autoencoder_ckpt (train@autoencoder) and autoencoder_path")
        if self.autoencoder_path is not None and not self.autoencoder_scaling:
            raise ValueError(f"{p}.autoencoder_scaling: a pretrained autoencoder needs its latent scaling factor")
        if not self.intensity_block:
            raise ValueError(f"{p}.intensity_block is required: the emotion condition comes from the trained Emotion "
                             "Intensity Block (models/intensity_block: `dvc repro train_intensity`); 'untrained' for "
                             "a block of zeros")


@dataclass
class SamplingConfig:
    """``evaluate.sampling.emotalker``: ddim_steps (>= 1), preserve_ratio a and preserve_until K / T
    in [0, 1] (eq. 6), seed of the noise (the same for every clip), chunk (frames of each clip per UNet
    call)."""

    ddim_steps: int = 25
    preserve_ratio: float = 0.3
    preserve_until: float = 0.65
    seed: int = 0
    chunk: int = 128

    def __post_init__(self) -> None:
        if self.ddim_steps < 1 or self.chunk < 1 or not 0 <= self.preserve_ratio <= 1 or not 0 <= self.preserve_until <= 1:
            raise ValueError("evaluate.sampling.emotalker: ddim_steps, chunk >= 1; preserve_ratio, preserve_until in [0, 1]")


@dataclass
class FineTuneConfig:
    """``evaluate.fine_tune.emotalker``: paper 004 §3.2's fine-tuning on one video of an identity
    unseen in training (the CREMA-D row of Table 1). The paper gives no steps, rate or loss; ours:
    eq. 1 (plus eq. 4 when the module holds its loss classifier, which a loaded checkpoint does not)
    on random ``window``-frame cuts of the video, AdamW on the UNet and condition encoders, the
    frozen autoencoder and Intensity Block untouched.

    Attributes:
        steps: optimiser steps (0: no fine-tuning, the default on the sample).
        lr: AdamW learning rate (> 0; below training's, so one video adapts without forgetting).
        batch_size: windows per step (>= 1). window: frames per window (>= 1, at most the video's).
        seed: the windows, timesteps and noise of the fine-tuning (global RNG state untouched).
    """

    steps: int = 0
    lr: float = 1e-5
    batch_size: int = 4
    window: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0 or self.batch_size < 1 or self.window < 1:
            raise ValueError("evaluate.fine_tune.emotalker: steps >= 0, lr > 0, batch_size >= 1, window >= 1")


class EmoTalkerModule(L.LightningModule):
    """Trains the denoiser on windows ``{frames_<S>, lmk, phones, emotion, intensity}``; logs
    ``train/{diffusion,emotion,total}``, ``val/diffusion``. :meth:`generate` is the shared
    ``VideoGenerator`` interface (plus ``intensity``, ``phones``, ``prompt``, ``strength``).

    Args:
        net, optim: ``train.methods.emotalker.{net,optim}``.
        autoencoder_net: set on first build from the autoencoder checkpoint and saved with the
            hyper-parameters, so a saved EmoTalker rebuilds without the autoencoder's file.
    """

    speech_key = "phones"
    batch_clips = True  # generate: a clip's frames do not depend on the other clips of the call
    protocol_extras = ("autoencoder", "prompt_grid", "fine_tune")  # pipeline.protocol.extras.EXTRAS

    def __init__(self, net: dict | None = None, optim: dict | None = None, autoencoder_net: dict | None = None):
        super().__init__()
        from lightning_modules.autoencoder import AutoencoderModule

        self.net_cfg, self.optim_cfg = self._configs(net, optim)
        from_checkpoint = autoencoder_net is not None
        if from_checkpoint:  # load_from_checkpoint: the weights come from the state dict
            self.autoencoder = AutoencoderModule(net=autoencoder_net)
        elif self.optim_cfg.autoencoder_ckpt is not None:
            self.autoencoder = AutoencoderModule.load_from_checkpoint(self._existing(self.optim_cfg.autoencoder_ckpt,
                                                                                     "train@autoencoder-<dataset>"),
                                                                      map_location="cpu")
        else:
            self.autoencoder = self._pretrained_autoencoder()
        self.autoencoder.requires_grad_(False).eval()
        autoencoder_net = config_to_dict(self.autoencoder.net_cfg)
        self.save_hyperparameters({"net": net, "optim": optim, "autoencoder_net": autoencoder_net})
        if self.autoencoder.net_cfg.image_size != self.net_cfg.crop_size:
            raise ValueError(f"autoencoder image_size {self.autoencoder.net_cfg.image_size} != emotalker crop_size "
                             f"{self.net_cfg.crop_size}")
        self.intensity_block = (EmotionIntensityBlock() if from_checkpoint or self.optim_cfg.intensity_block == "untrained"
                                else load_intensity_block(self.optim_cfg.intensity_block))  # checkpoint: its buffers
        self.intensity_block.requires_grad_(False)
        self.frames_key = f"frames_{self.net_cfg.crop_size}"
        self.data_keys = (self.frames_key, "lmk", "phones")
        self.latent_size = self.net_cfg.crop_size // self.autoencoder.net_cfg.factor
        self.unet = build_unet(self.net_cfg, self.latent_size)
        self.conditions = ConditionEncoder(self.net_cfg)
        self.scheduler = ldm_scheduler()
        self.sampling = SamplingConfig()
        self.ema_decay = self.optim_cfg.ema_decay  # read by pipeline.train (WeightAveraging)
        self._emotion: tuple = ()  # (EmotionClassifier,): a frozen loss network, kept out of checkpoints
        self._prompt_encoder: tuple = ()
        if self.optim_cfg.emotion_ckpt is not None and not from_checkpoint and self.optim_cfg.lambda_emo > 0:
            from lightning_modules.emotion_classifier import EmotionClassifierModule

            ckpt = self._existing(self.optim_cfg.emotion_ckpt, "train@emotion_classifier-<dataset>")
            self._emotion = (EmotionClassifierModule.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
                             .requires_grad_(False),)

    @staticmethod
    def _existing(path: str, stage: str) -> str:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist (train it first: `dvc repro {stage}`)")
        return path

    def _pretrained_autoencoder(self):
        """A pretrained diffusers ``AutoencoderKL`` (LDM KL-f4) or ``VQModel`` (LDM VQ-f4, DiffTalk's)
        directory (its ``config.json`` names the class) wrapped as an ``AutoencoderModule`` with
        ``optim.autoencoder_scaling`` as its latent scale (LDM's VQ-f4: 1.0)."""
        import json

        from diffusers import AutoencoderKL, VQModel

        from lightning_modules.autoencoder import AutoencoderModule

        path = self._existing_dir(self.optim_cfg.autoencoder_path)
        kinds = {"AutoencoderKL": ("kl", AutoencoderKL), "VQModel": ("vq", VQModel)}
        class_name = json.loads(Path(path, "config.json").read_text()).get("_class_name")
        if class_name not in kinds:
            raise ValueError(f"train.methods.emotalker.optim.autoencoder_path: {path} holds a {class_name}, not one "
                             f"of {sorted(kinds)}")
        kind, cls = kinds[class_name]
        vae = cls.from_pretrained(path)
        c = vae.config
        net = {"image_size": self.net_cfg.crop_size, "block_out_channels": list(c.block_out_channels),
               "latent_channels": c.latent_channels, "layers_per_block": c.layers_per_block,
               "norm_num_groups": c.norm_num_groups, "mid_attention": c.mid_block_add_attention, "kind": kind}
        if kind == "vq":
            net.update(num_vq_embeddings=c.num_vq_embeddings, vq_embed_dim=c.vq_embed_dim)
        module = AutoencoderModule(net=net)
        module.vae.load_state_dict(vae.state_dict())
        module.scaling_factor.fill_(float(self.optim_cfg.autoencoder_scaling))
        return module

    @staticmethod
    def _existing_dir(path: str) -> str:
        if not Path(path, "config.json").is_file():
            raise FileNotFoundError(f"train.methods.emotalker.optim.autoencoder_path: no diffusers AutoencoderKL / "
                                    f"VQModel directory (config.json + weights) at {path}")
        return path

    @staticmethod
    def _configs(net: dict | None, optim: dict | None) -> tuple[DenoiserConfig, EmoTalkerTrainConfig]:
        return DenoiserConfig.from_dict(net), EmoTalkerTrainConfig(**(optim or {}))

    @staticmethod
    def validate_params(net: dict | None = None, optim: dict | None = None) -> None:
        """Check params without building networks; raises ``ValueError``."""
        EmoTalkerModule._configs(net, optim)

    def train(self, mode: bool = True) -> "EmoTalkerModule":
        super().train(mode)
        self.autoencoder.eval()  # frozen parts stay in eval mode
        self.intensity_block.eval()
        return self

    # ---------------------------------------------------------------- conditions
    def _unet_input(self, z_t: Tensor, z_masked: Tensor, z_ref: Tensor) -> Tensor:
        return torch.cat([z_t, z_masked, z_ref], dim=1)  # (N, 9, h, w)

    def denoise(self, z_t: Tensor, t: Tensor, z_masked: Tensor, z_ref: Tensor, cond: Tensor,
                strength: Tensor | None = None) -> Tensor:
        """Predicted noise (N, 3, h, w) for z_t at timesteps t (N,) or int, condition tokens (N, 3, D)."""
        kwargs = None if strength is None else {"emotion_strength": strength}
        return self.unet(self._unet_input(z_t, z_masked, z_ref), t, encoder_hidden_states=cond,
                         cross_attention_kwargs=kwargs).sample

    def _pick_frames(self, b: int, t_len: int, device) -> tuple[Tensor, Tensor]:
        """Target (B,) and reference (B,) frame indices, |reference - target| >= reference_gap T (or != when T
        is short); the target's speech window lies inside the window (:func:`primitives.speech_windows.inner_targets`)."""
        target = inner_targets(b, t_len, self.net_cfg.audio_window, device)  # no clamped speech window
        gap = max(1, int(self.optim_cfg.reference_gap * t_len))
        distance = (torch.arange(t_len, device=device)[None] - target[:, None]).abs()
        allowed = distance >= gap
        allowed = torch.where(allowed.any(1, keepdim=True), allowed, distance > 0)
        return target, torch.multinomial(allowed.float(), 1)[:, 0]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self._losses(batch)
        # not synced: train/emotion exists only on a rank whose batch drew a t < emotion_max_t
        self.log_dict({f"train/{k}": v for k, v in out.items()}, on_step=False, on_epoch=True,
                      batch_size=len(batch[self.frames_key]))
        return out["total"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._losses(batch)
        self.log("val/diffusion", out["diffusion"], on_epoch=True, sync_dist=True, batch_size=len(batch[self.frames_key]))

    def _losses(self, batch: dict) -> dict[str, Tensor]:
        """Eq. 1 (epsilon MSE) + lambda_emo x eq. 4 on one random (target, reference) pair per window."""
        frames, lmk, phones = batch[self.frames_key], batch["lmk"], batch["phones"]
        b, t_len = frames.shape[:2]
        rows = torch.arange(b, device=frames.device)
        target, ref = self._pick_frames(b, t_len, frames.device)
        image = frames_to_chw(frames[rows, target])  # (B, 3, S, S)
        with torch.no_grad():
            z0 = self.autoencoder.encode(image)
            z_masked = self.autoencoder.encode(masked_input(image, self.net_cfg))
            z_ref = self.autoencoder.encode(frames_to_chw(frames[rows, ref]))
            e_emo = self.intensity_block.label_e_emo(batch["emotion"], intensity_strength(batch["intensity"]))
        cond = self.conditions(speech_windows(phones, target[:, None], self.net_cfg.audio_window)[:, 0], lmk[rows, ref], e_emo)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=frames.device)
        noise = torch.randn_like(z0)
        z_t = self.scheduler.add_noise(z0, noise, t)
        eps = self.denoise(z_t, t, z_masked, z_ref, cond)
        out = {"diffusion": F.mse_loss(eps, noise)}
        low = t < self.optim_cfg.emotion_max_t
        if self._emotion and bool(low.any()):
            decoded = self.autoencoder.decode(predicted_x0(self.scheduler, z_t[low], eps[low], t[low]))  # (n, 3, S, S)
            classifier = self._emotion[0].to(decoded.device)
            out["emotion"] = F.cross_entropy(classifier(decoded.permute(0, 2, 3, 1)[:, None] * 255.0), batch["emotion"][low])
        out["total"] = out["diffusion"] + self.optim_cfg.lambda_emo * out.get("emotion", 0.0)
        return out

    def configure_optimizers(self):
        return torch.optim.AdamW(itertools.chain(self.unet.parameters(), self.conditions.parameters()), self.optim_cfg.lr)

    @staticmethod
    def fine_tune_config(settings: dict | None) -> FineTuneConfig:
        """``evaluate.fine_tune.emotalker`` -> :class:`FineTuneConfig`; raises ``TypeError`` (unknown
        key) / ``ValueError``."""
        return FineTuneConfig(**(settings or {}))

    def fine_tune(self, frames: Tensor, lmk: Tensor, phones: Tensor, emotion: int, intensity: int,
                  cfg: FineTuneConfig) -> list[float]:
        """Paper 004 §3.2: adapt the UNet and condition encoders IN PLACE to one video of an identity
        (see :class:`FineTuneConfig` for the reading); the caller keeps a copy of the weights to
        restore (``pipeline.protocol.one_video``).

        Args:
            frames: (T, S, S, 3) uint8 crops at the module's ``crop_size``.
            lmk: (T, 68, 2) float32 landmarks in pixels of the 256 px crop.
            phones: (T, 40) float32 phone occupancy.
            emotion, intensity: the video's label (id) and level (0 = unspecified).

        Returns:
            The ``total`` loss of each step (``cfg.steps`` floats).
        """
        if cfg.steps == 0:
            return []
        window = min(cfg.window, len(frames))
        dev, was_training = self.device, self.training
        params = [*self.unet.parameters(), *self.conditions.parameters()]
        optimiser = torch.optim.AdamW(params, cfg.lr)
        self.train()
        losses = []
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.enable_grad():
            torch.manual_seed(cfg.seed)
            for _ in range(cfg.steps):
                starts = torch.randint(0, len(frames) - window + 1, (cfg.batch_size,))
                idx = starts[:, None] + torch.arange(window)  # (B, window)
                batch = {self.frames_key: frames[idx].to(dev), "lmk": lmk[idx].float().to(dev),
                         "phones": phones[idx].float().to(dev),
                         "emotion": torch.full((cfg.batch_size,), int(emotion), device=dev),
                         "intensity": torch.full((cfg.batch_size,), int(intensity), device=dev)}
                loss = self._losses(batch)["total"]
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
        self.train(was_training)
        return losses

    # ---------------------------------------------------------------- inference
    def prompt_e_emo(self, prompts: list[str]) -> Tensor:
        """Prompts -> e_emo (N, 384) through the frozen MiniLM and the block (eq. 3)."""
        from lightning_modules.networks.intensity import PromptEncoder

        if not self._prompt_encoder:
            self._prompt_encoder = (PromptEncoder(),)
        clauses, mask = embed_prompts(self._prompt_encoder[0], prompts)
        p, alpha = self.intensity_block(clauses.to(self.device), mask.to(self.device))
        return self.intensity_block.e_emo(p, alpha)

    def configure_sampling(self, params: dict | None) -> None:
        """Replace :attr:`sampling` fields from ``evaluate.sampling.emotalker``; raises ``ValueError``."""
        self.sampling = replace(self.sampling, **(params or {}))

    @torch.no_grad()
    def generate(self, reference: Tensor, mel: Tensor, emotion: Tensor, n_frames: int,
                 ref_lmk: Tensor | None = None, intensity: Tensor | None = None, phones: Tensor | None = None,
                 prompt: str | None = None, strength: float = 1.0) -> Tensor:
        """:meth:`lightning_modules.generation.VideoGenerator.generate` by identity-preserving DDIM,
        the frames of every clip through each denoising step together (``sampling.chunk`` frames of
        each of the B clips per pass), every clip from the same seeded noise (``sampling.seed``).

        Args (beyond the protocol's; ``mel`` is unused: the audio condition is ``phones``):
            ref_lmk: (B, 68, 2) reference landmarks in pixels of the 256 px crop (required).
            intensity: (B,) int64 level (0 = unspecified -> alpha 2/3); ignored with ``prompt``.
            phones: (B, >= n_frames, 40) phone occupancy (required).
            prompt: free-text emotion ("very angry and disgusted") through the Intensity Block,
                replacing ``emotion`` / ``intensity`` for every clip of the batch.
            strength: the cross-attention coefficient on the emotion token (0 removes it).

        Returns:
            (B, n_frames, S, S, 3) uint8.

        Raises:
            ValueError: ``ref_lmk`` or ``phones`` missing.
        """
        if ref_lmk is None or phones is None:
            raise ValueError("emotalker.generate needs ref_lmk and phones")
        dev, s = self.device, self.sampling
        ref = frames_to_chw(reference.to(dev))  # (B, 3, S, S)
        z_ref = self.autoencoder.encode(ref)
        z_masked = self.autoencoder.encode(masked_input(ref, self.net_cfg))
        if prompt is not None:
            e_emo = self.prompt_e_emo([prompt]).expand(len(ref), -1)
        else:
            levels = intensity if intensity is not None else torch.zeros(len(ref), dtype=torch.long)
            e_emo = self.intensity_block.label_e_emo(emotion.to(dev), intensity_strength(levels.to(dev)))
        b = len(ref)
        # every clip starts from the same seeded noise: a clip renders the same alone or beside others
        noise = torch.randn((1, *z_ref.shape[1:]), generator=torch.Generator().manual_seed(s.seed)).to(dev)
        frame_idx = torch.arange(n_frames, device=dev)[None].expand(b, -1)
        speech = speech_windows(phones.to(dev), frame_idx, self.net_cfg.audio_window)  # (B, T, W, 40)
        ref_lmk, frames = ref_lmk.float().to(dev), []
        for t0 in range(0, n_frames, s.chunk):  # all B clips' frames t0..t0+n through each denoising step
            n = min(s.chunk, n_frames - t0)

            def per_frame(x: Tensor) -> Tensor:  # (B, ...) -> (B n, ...), each clip's row repeated n times
                return x[:, None].expand(-1, n, *x.shape[1:]).flatten(0, 1)

            cond = self.conditions(speech[:, t0:t0 + n].flatten(0, 1), per_frame(ref_lmk), per_frame(e_emo))
            zm, zr = per_frame(z_masked), per_frame(z_ref)
            w = torch.full((b * n,), float(strength), device=dev)
            z = identity_preserving_ddim(lambda z_t, t: self.denoise(z_t, t, zm, zr, cond, w), self.scheduler,
                                         zr, noise.expand(b * n, -1, -1, -1), s.ddim_steps, s.preserve_ratio,
                                         s.preserve_until)
            frames.append(chw_to_frames(self.autoencoder.decode(z)).cpu().view(b, n, *ref.shape[2:], 3))
        return torch.cat(frames, dim=1)  # (B, n_frames, S, S, 3)

    def resolved_config(self) -> dict:
        """Network and optimisation config plus what the run derived (MLflow, config.json)."""
        return {"net": config_to_dict(self.net_cfg), "optim": asdict(self.optim_cfg),
                "autoencoder": {"net": config_to_dict(self.autoencoder.net_cfg),
                                "scaling_factor": float(self.autoencoder.scaling_factor)},
                "latent_size": self.latent_size, "sampling": asdict(self.sampling),
                "emotion_loss": f"enabled ({self.optim_cfg.emotion_ckpt})" if self._emotion else "disabled",
                "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
                "data_keys": list(self.data_keys)}

"""Lightning glue for the emotion-controllable conditional VAE generator (paper file 000, §2).

The network and the loss functions live in ``lightning_modules.networks.cvae``. This module cuts
training examples out of DataModule windows, applies the paper's augmentations, combines the
losses of eq. 6 and implements :class:`lightning_modules.generation.VideoGenerator`.

Training example (one per window and step; Wav2Lip-style per-frame generation)
------------------------------------------------------------------------------
From a window ``frames_<S> (B, T, S, S, 3)``, ``mel (B, floor(3.2 T), 80)``:

* target frame ``t`` drawn uniformly per sample (``t .. t+4`` when the lip-sync loss is on:
  all 5 frames are generated and their lower halves go to the SyncNet expert); validation uses
  the window's middle frame(s), deterministically;
* reference: the speaker's closed-mouth neutral frame of the training split
  (``optim.reference="speaker_neutral"``, default, :mod:`primitives.speaker_neutral`: the emotion
  must then come from the label, as at inference from a neutral photo), a random other frame of
  the window (``"random"``, Wav2Lip) or the window's first frame (``"first"``);
* masked target: all zeros (``optim.masked_target: full``, default: the paper's "fully masked
  face") or the target with its lower half zeroed (``lower_half``, Wav2Lip);
* generator mel window for frame ``t``: 16 rows starting at ``int(3.2 t) - 6`` clamped to
  ``[0, M - 16]`` -- frame ``t`` covers rows ``3.2 t .. 3.2 t + 3.2``, so the window is (nearly)
  centred on it (ours; Wav2Lip uses the 16 rows *starting* at the frame);
* augmentations (paper §2: brightness, contrast, gamma, channel shuffle, RGB shift, Gaussian
  noise) via kornia's ``VideoSequential`` with the same parameters for the reference and the
  target(s) of a sample (training only, ``optim.augment``).

Loss (paper eq. 6; our weight names)
------------------------------------
``total = recon + alpha KL + beta perceptual + gamma sync + delta emotion`` where the paper's eq. 6
reads ``L_recon + L_KL + alpha L_sync + beta L_perc + gamma L_emo`` -- i.e. our gamma/beta/delta
are the paper's alpha/beta/gamma, and our ``alpha`` is the KL weight (paper: 1 with a *summed*
eq. 1; with our pixel-mean MSE the equivalent weight is ``1 / (3 S^2)``, the default ``None``).
Terms whose network is not configured are skipped (weight recorded as 0 in ``resolved_config``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.generation import frames_to_chw
from lightning_modules.networks.cvae import (CVAE, MASKED_TARGETS, MEL_WINDOW, CVAEConfig, VGGPerceptual,
                                             kl_divergence, mask_target, recon_loss)
from lightning_modules.networks.syncnet import sync_loss
from primitives.speaker_neutral import replace_by_speaker, speaker_neutral_frames
from primitives.sync_windows import SYNC_FRAMES, face_windows, mel_windows

log = logging.getLogger(__name__)

__all__ = ["CVAEModule", "CVAETrainConfig", "frame_mel_windows", "build_augmentation"]

REFERENCES = ("first", "random", "speaker_neutral")


@dataclass
class CVAETrainConfig:
    """Optimisation and loss parameters (``train.methods.cvae.optim``).

    Attributes:
        lr: Adam learning rate (> 0; not stated in paper 000, 1e-4 is Wav2Lip's).
        weight_decay: Adam weight decay, >= 0.
        alpha: KL weight; ``None`` = ``1 / (3 S^2)`` (paper eq. 6 with eq. 1 summed over pixels).
        beta: perceptual (VGG-19) weight; forced to 0 when ``vgg_weights`` is null or missing.
        gamma: lip-sync weight (paper eq. 6 "alpha"); used only with ``syncnet_ckpt``.
        delta: emotion CE weight (paper eq. 6 "gamma"); used only with ``emotion_ckpt``.
            The paper does not give its weights. Ours are relative to a pixel-mean MSE (eq. 1 as a
            mean), which is ~10x smaller than Wav2Lip's L1, so Wav2Lip's 0.03 becomes 0.003; with
            0.03 / 0.01 the generator paints colour blobs that the two networks respond to
            (``benchmarks/learning_check.py``, measured on the sample: PSNR 17.9 vs 20.1).
        reference: the training reference: ``"speaker_neutral"`` (default, ours: the speaker's most
            closed-mouth neutral frame of the training split, read at fit start; a speaker without
            a neutral clip has its most closed frame of any emotion, and a sample whose speaker is
            not in the table takes ``"random"``'s), ``"random"`` (another frame of the window,
            Wav2Lip) or ``"first"`` (the window's first frame). Paper 000 does not say which frame
            the reference is. A frame of the same emotional clip already shows the target emotion,
            so the label is barely needed: with ``random`` the learning check's emotion rows
            converged (closest pair 0.23-0.40 levels), with ``speaker_neutral`` they stay apart
            (4.61; docs/methods/cvae.md). Validation always uses the first frame.
        masked_target: the masked-target input: ``"full"`` (default, paper 000 §2: "a fully masked
            face") or ``"lower_half"`` (Wav2Lip's target with its lower half zeroed, at inference the
            reference's). ``lower_half`` gives the head pose of the frame being generated, but its
            upper face shows the target emotion in training, so the label is barely needed (and at
            inference the neutral reference's upper face stays).
        generate_latent: latent used by :meth:`CVAEModule.generate`: ``"posterior"`` (posterior
            mean ``mu`` of the masked reference, what the decoder sees in training at ``z ~ q``)
            or ``"prior"`` (``z = 0``, the prior mean).
        augment: apply the paper's augmentations in training (needs kornia).
        aug_p: probability of each augmentation.
        syncnet_ckpt: checkpoint of ``SyncNetModule`` (frozen expert); null = no sync loss.
        emotion_ckpt: checkpoint of ``EmotionClassifierModule`` (the emotion discriminator);
            null = no emotion loss.
        emotion_finetune: fine-tune the discriminator with the generator (paper §2.1: CE on real
            frames for the discriminator, CE of its predictions on generated frames for the
            generator, computed with detached discriminator weights).
        aux_start_step: optimisation step from which the lip-sync and emotion losses are on (>= 0;
            before it: reconstruction, KL and perceptual only). Not in paper 000; Wav2Lip (its
            ref. [6]) likewise trains with ``syncnet_wt = 0`` until the reconstruction has
            converged, then switches the sync loss on. Measured here (``benchmarks/learning_check.py``):
            with both losses on from step 0 the reconstruction MSE after 960 steps is 2x higher and
            each step costs 3x more.
        vgg_weights: local path of torchvision's ``vgg19-dcbb9e9d.pth``; null = no perceptual loss.
        vgg_sha256: full sha256 of ``vgg_weights`` (default: the file name's hash prefix).
        generate_chunk: frames per forward pass in :meth:`CVAEModule.generate`.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    alpha: float | None = None
    beta: float = 0.01
    gamma: float = 0.003
    delta: float = 0.001
    reference: str = "speaker_neutral"
    masked_target: str = "full"
    generate_latent: str = "posterior"
    augment: bool = True
    aug_p: float = 0.5
    syncnet_ckpt: str | None = None
    emotion_ckpt: str | None = None
    emotion_finetune: bool = False
    aux_start_step: int = 0
    vgg_weights: str | None = None
    vgg_sha256: str | None = None
    generate_chunk: int = 64

    def __post_init__(self) -> None:
        p = "train.methods.cvae.optim"
        if not self.lr > 0:
            raise ValueError(f"{p}.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "alpha", "beta", "gamma", "delta"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{p}.{name} must be >= 0, got {v}")
        if self.reference not in REFERENCES:
            raise ValueError(f"{p}.reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.masked_target not in MASKED_TARGETS:
            raise ValueError(f"{p}.masked_target must be one of {MASKED_TARGETS}, got {self.masked_target!r}")
        if self.generate_latent not in ("posterior", "prior"):
            raise ValueError(f"{p}.generate_latent must be 'posterior' or 'prior', got {self.generate_latent!r}")
        if not 0 <= self.aug_p <= 1:
            raise ValueError(f"{p}.aug_p must be in [0, 1], got {self.aug_p}")
        if self.aux_start_step < 0:
            raise ValueError(f"{p}.aux_start_step must be >= 0, got {self.aux_start_step}")
        if self.generate_chunk < 1:
            raise ValueError(f"{p}.generate_chunk must be >= 1, got {self.generate_chunk}")


def frame_mel_windows(mel: Tensor, frames: Tensor, offset: int = -6) -> Tensor:
    """Generator audio windows: 16 mel rows starting at ``int(3.2 t) + offset`` clamped to ``[0, M - 16]``.

    Args:
        mel: ``(B, M, 80)`` float, row 0 = video frame 0, ``M >= 16``.
        frames: ``(B, K)`` int64 video frame indices.
        offset: mel rows from the frame to the window's start: -6 centres the 16 rows on the frame
            (ours); 0 starts at the frame (Wav2Lip's released generator, ``networks.wav2lip.MEL_OFFSET``).

    Returns:
        ``(B, K, 1, 16, 80)`` float32 (time x mel bins).
    """
    b, m, _ = mel.shape
    if m < MEL_WINDOW:
        raise ValueError(f"need at least {MEL_WINDOW} mel rows, got {m}")
    start = ((16 * frames) // 5 + offset).clamp(0, m - MEL_WINDOW)  # (B, K)
    idx = start[..., None] + torch.arange(MEL_WINDOW, device=mel.device)  # (B, K, 16)
    win = mel[torch.arange(b, device=mel.device)[:, None, None], idx]  # (B, K, 16, 80)
    return win.unsqueeze(2).float()


def build_augmentation(p: float = 0.5) -> nn.Module:
    """kornia ``VideoSequential`` over ``(B, N, 3, S, S)`` in [0, 1], same parameters for all N frames of
    a sample (reference and targets stay consistent): brightness/contrast (ColorJiggle), gamma,
    channel shuffle, RGB shift, Gaussian noise (paper 000 §2). Ranges are ours (not in the paper)."""
    import kornia.augmentation as K

    return K.VideoSequential(
        K.ColorJiggle(brightness=0.2, contrast=0.2, p=p),
        K.RandomGamma(gamma=(0.8, 1.25), p=p),
        K.RandomChannelShuffle(p=p / 5),
        K.RandomRGBShift(r_shift_limit=0.05, g_shift_limit=0.05, b_shift_limit=0.05, p=p),
        K.RandomGaussianNoise(mean=0.0, std=0.02, p=p),
        data_format="BTCHW", same_on_frame=True)


class CVAEModule(L.LightningModule):
    """Trains :class:`CVAE` (paper 000) on windows ``{frames_<S>, mel, emotion}`` and renders videos
    through :meth:`generate` (the ``VideoGenerator`` interface).

    ``data_keys = ("lmk", f"frames_{net.crop_size}", "mel")`` (instance attribute). Logs
    ``train/{recon,kl,perceptual,sync,emotion,total}`` and ``val/{recon,kl,loss}``.

    Frozen auxiliary networks (SyncNet expert, VGG-19, a frozen emotion discriminator) are kept
    out of the module tree, hence out of checkpoints; a fine-tuned discriminator is a submodule.
    Reloading a checkpoint re-reads the configured ``*_ckpt`` paths (missing -> FileNotFoundError).
    """

    ddp_find_unused_parameters = True  # the fine-tuned emotion discriminator gets no gradient before aux_start_step

    @staticmethod
    def validate_params(net: dict | None = None, optim: dict | None = None) -> None:
        """Check the params without building the module or loading any weights.

        Raises:
            ValueError: a bad ``net`` / ``optim`` value.
            FileNotFoundError: a configured ``*_ckpt`` is missing; the message names the key and
                the DVC stage that writes it (``models/<name>/<dataset>/last.ckpt`` ->
                ``train@<name>-<dataset>``).
        """
        CVAEConfig.from_dict(dict(net or {}))
        cfg = CVAETrainConfig(**(optim or {}))
        for key in ("syncnet_ckpt", "emotion_ckpt"):
            path = getattr(cfg, key)
            if path is not None and not Path(path).is_file():
                parts = Path(path).parts
                stage = (f"`dvc repro train@{parts[-3]}-{parts[-2]}`" if len(parts) >= 3 and parts[-1] == "last.ckpt"
                         else "the stage that writes it")
                raise FileNotFoundError(f"train.methods.cvae.optim.{key}: checkpoint {path} does not exist "
                                        f"(train it first: {stage})")

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net_cfg = CVAEConfig.from_dict(dict(net or {}))
        self.optim_cfg = CVAETrainConfig(**(optim or {}))
        self.net = CVAE(self.net_cfg)
        s = self.net_cfg.crop_size
        self.frames_key = f"frames_{s}"
        self.data_keys = ("lmk", self.frames_key, "mel")  # arrays the DataModule loads
        cfg = self.optim_cfg
        self.alpha = cfg.alpha if cfg.alpha is not None else 1.0 / (3 * s * s)
        self.loss_status: dict[str, str] = {}
        self._aux: dict[str, nn.Module | None] = {"vgg": None, "sync": None, "emotion": None}
        self.emotion_disc: nn.Module | None = None  # registered only when fine-tuned
        # speaker -> (its neutral frame (S, S, 3) uint8,) with reference = speaker_neutral: training data,
        # read at fit start, never saved in a checkpoint
        self.neutral_frames: dict[str, tuple[Tensor]] = {}
        # kept out of the module tree: kornia's generator buffers would otherwise enter checkpoints
        self._augment: dict[str, nn.Module | None] = {"net": build_augmentation(cfg.aug_p) if cfg.augment else None,
                                                       "device": None}
        # perceptual loss (VGG-19)
        self.beta = cfg.beta
        if cfg.vgg_weights is None:
            self.beta, self.loss_status["perceptual_loss"] = 0.0, "disabled (vgg_weights: null)"
        else:
            try:
                self._aux["vgg"] = VGGPerceptual(cfg.vgg_weights, cfg.vgg_sha256)
                self.loss_status["perceptual_loss"] = f"enabled ({cfg.vgg_weights})"
            except FileNotFoundError as err:
                log.warning("perceptual loss disabled (beta = 0): %s", err)
                self.beta, self.loss_status["perceptual_loss"] = 0.0, "disabled (weights missing)"
        # lip-sync expert
        self.gamma = cfg.gamma
        if cfg.syncnet_ckpt is None:
            self.gamma, self.loss_status["sync_loss"] = 0.0, "disabled (syncnet_ckpt: null)"
        else:
            from lightning_modules.syncnet import SyncNetModule

            self.set_sync_expert(SyncNetModule.load_from_checkpoint(cfg.syncnet_ckpt, map_location="cpu").net)
            self.loss_status["sync_loss"] = f"enabled ({cfg.syncnet_ckpt})"
        # emotion discriminator
        self.delta = cfg.delta
        if cfg.emotion_ckpt is None:
            self.delta, self.loss_status["emotion_loss"] = 0.0, "disabled (emotion_ckpt: null)"
        else:
            from lightning_modules.emotion_classifier import EmotionClassifierModule

            self.set_emotion_discriminator(
                EmotionClassifierModule.load_from_checkpoint(cfg.emotion_ckpt, map_location="cpu").net)
            mode = "fine-tuned" if cfg.emotion_finetune else "frozen"
            self.loss_status["emotion_loss"] = f"enabled, {mode} ({cfg.emotion_ckpt})"

    # ---------------------------------------------------------------- auxiliary networks
    def set_sync_expert(self, net: nn.Module) -> None:
        """Use ``net`` (a :class:`SyncNet` with ``cfg.crop_size == S``) as the frozen lip-sync expert."""
        if getattr(getattr(net, "cfg", None), "crop_size", self.net_cfg.crop_size) != self.net_cfg.crop_size:
            raise ValueError(f"SyncNet crop_size {net.cfg.crop_size} != cvae crop_size {self.net_cfg.crop_size}")
        self._aux["sync"] = net.eval().requires_grad_(False)
        if self.gamma == 0 and self.optim_cfg.gamma > 0:
            self.gamma = self.optim_cfg.gamma
        self.loss_status["sync_loss"] = "enabled"

    def set_emotion_discriminator(self, net: nn.Module) -> None:
        """Use ``net`` (an :class:`EmotionClassifier`) for the emotion loss (fine-tuned if configured)."""
        if self.optim_cfg.emotion_finetune:
            self.emotion_disc = net.train()
            self._aux["emotion"] = None
        else:
            self._aux["emotion"] = net.eval().requires_grad_(False)
        if self.delta == 0 and self.optim_cfg.delta > 0:
            self.delta = self.optim_cfg.delta
        self.loss_status["emotion_loss"] = "enabled"

    def _aux_net(self, name: str) -> nn.Module | None:
        net = self._aux[name]
        if net is not None and next(net.parameters()).device != self.device:
            net.to(self.device)
        return net

    def on_fit_start(self) -> None:
        if self.optim_cfg.reference == "speaker_neutral" and not self.neutral_frames:
            self.fit_speaker_neutrals(self.trainer.datamodule)

    def fit_speaker_neutrals(self, datamodule) -> None:
        """``neutral_frames``: each training speaker's closed-mouth neutral frame
        (:func:`primitives.speaker_neutral.speaker_neutral_frames` over every training clip)."""
        chosen = speaker_neutral_frames(datamodule, self.frames_key)
        self.neutral_frames = {speaker: (torch.from_numpy(frame.image),) for speaker, frame in chosen.items()}

    # ---------------------------------------------------------------- examples and losses
    def _aux_weights(self) -> tuple[float, float]:
        """``(gamma, delta)`` in effect at the current step (0 before ``optim.aux_start_step``)."""
        if self.global_step < self.optim_cfg.aux_start_step:
            return 0.0, 0.0
        return self.gamma, self.delta

    def _pick(self, frames: Tensor, train: bool, k: int) -> tuple[Tensor, Tensor]:
        """Target frame indices ``(B, k)`` (k = 5 with the sync loss, else 1) and reference indices
        ``(B,)``: with ``reference: random`` (and ``speaker_neutral``, for a speaker without a neutral
        frame), any frame outside the k targets (as Wav2Lip draws its
        reference away from the target window: a reference among the targets is the answer to copy);
        a window of exactly k frames has none, and the first frame is used."""
        b, t_len = frames.shape[:2]
        if t_len < k:
            raise ValueError(f"windows of {t_len} frames are shorter than the {k} frames needed")
        dev = frames.device
        if train:
            start = torch.randint(0, t_len - k + 1, (b,), device=dev)
        else:
            start = torch.full((b,), (t_len - k) // 2, device=dev, dtype=torch.long)
        if self.optim_cfg.reference in ("random", "speaker_neutral") and train and t_len > k:
            ref = torch.randint(0, t_len - k, (b,), device=dev)
            ref = ref + k * (ref >= start).long()  # skip the k target frames
        else:
            ref = torch.zeros(b, dtype=torch.long, device=dev)
        return start[:, None] + torch.arange(k, device=dev), ref

    def model_step(self, batch: dict, train: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns generated frames ``(B, K, 3, S, S)`` in [0, 1] and the loss terms (incl. ``total``).

        Raises:
            KeyError: the batch lacks ``frames_<S>`` (crop size not loaded).
        """
        if self.frames_key not in batch:
            raise KeyError(f"batch has no {self.frames_key!r} (has {sorted(batch)}); data_keys / crop size mismatch")
        frames, mel, emotion = batch[self.frames_key], batch["mel"], batch["emotion"]
        b = frames.shape[0]
        gamma, delta = self._aux_weights()
        idx, ref_idx = self._pick(frames, train, SYNC_FRAMES if gamma > 0 else 1)
        k = idx.shape[1]
        rows = torch.arange(b, device=frames.device)
        ref = frames[rows, ref_idx]  # (B, S, S, 3) uint8
        if train and self.optim_cfg.reference == "speaker_neutral":
            (ref,) = replace_by_speaker(batch["speaker"], self.neutral_frames, ref)
        clip = frames_to_chw(torch.cat([ref[:, None], frames[rows[:, None], idx]], dim=1))  # (B,1+K,3,S,S)
        aug = self._augment["net"]
        if train and aug is not None:
            if self._augment["device"] != clip.device:
                aug.to(clip.device)
                self._augment["device"] = clip.device
            with torch.no_grad():
                clip = aug(clip).clamp(0.0, 1.0)
        ref, target = clip[:, 0], clip[:, 1:]
        s = self.net_cfg.crop_size
        flat_t = target.reshape(b * k, 3, s, s)
        mels = frame_mel_windows(mel, idx).reshape(b * k, 1, MEL_WINDOW, -1)
        out = self.net(mask_target(flat_t, self.optim_cfg.masked_target), ref[:, None].expand(-1, k, -1, -1, -1).reshape(b * k, 3, s, s),
                       mels, emotion.repeat_interleave(k), sample=train)
        losses = {"recon": recon_loss(out.recon, flat_t), "kl": kl_divergence(out.mu, out.logvar)}
        total = losses["recon"] + self.alpha * losses["kl"]
        gen = out.recon.view(b, k, 3, s, s)
        if self.beta > 0:
            losses["perceptual"] = self._aux_net("vgg")(out.recon, flat_t)
            total = total + self.beta * losses["perceptual"]
        if gamma > 0:
            expert = self._aux_net("sync")
            v, a = expert(face_windows(gen.permute(0, 1, 3, 4, 2), 0), mel_windows(mel, idx[:, 0]))
            losses["sync"] = sync_loss(v, a, torch.ones(b, device=v.device), expert.cfg.prob_mode)
            total = total + gamma * losses["sync"]
        if delta > 0:
            gen_255 = gen.permute(0, 1, 3, 4, 2) * 255.0  # (B, K, S, S, 3) as EmotionClassifier expects
            if self.emotion_disc is not None:  # fine-tuned: CE on real frames trains the discriminator
                losses["emotion_disc"] = F.cross_entropy(self.emotion_disc(target.permute(0, 1, 3, 4, 2) * 255.0),
                                                         emotion)
                # generator's CE through a detached copy of the discriminator: no gradient reaches its
                # weights, and its BatchNorm running statistics (cloned buffers, discarded) are
                # updated by real frames only, never by generated ones
                params = {n: p.detach() for n, p in self.emotion_disc.named_parameters()}
                params.update({n: b.clone() for n, b in self.emotion_disc.named_buffers()})
                logits = torch.func.functional_call(self.emotion_disc, params, (gen_255,))
                total = total + losses["emotion_disc"]
            else:
                logits = self._aux_net("emotion")(gen_255)
            losses["emotion"] = F.cross_entropy(logits, emotion)
            total = total + delta * losses["emotion"]
        losses["total"] = total
        return gen, losses

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        _, losses = self.model_step(batch, train=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=len(batch["key"]))
        return losses["total"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, losses = self.model_step(batch, train=False)
        bs = len(batch["key"])
        self.log("val/loss", losses["total"], on_epoch=True, sync_dist=True, batch_size=bs)
        self.log_dict({"val/recon": losses["recon"], "val/kl": losses["kl"]}, on_epoch=True, sync_dist=True,
                      batch_size=bs)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, losses = self.model_step(batch, train=False)
        self.log("test/loss", losses["total"], on_epoch=True, sync_dist=True, batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def generate(self, reference: Tensor, mel: Tensor, emotion: Tensor, n_frames: int,
                 ref_lmk: Tensor | None = None) -> Tensor:
        """:meth:`lightning_modules.generation.VideoGenerator.generate` (``ref_lmk`` unused).

        Every frame ``t`` is decoded from the reference (as reference and, lower half masked, as the
        masked target -- Wav2Lip's inference), the mel window of frame ``t`` (see
        :func:`frame_mel_windows`) and the emotion; the latent is the posterior mean ``mu``
        (``optim.generate_latent="posterior"``) or the prior mean ``z = 0`` (``"prior"``).

        Args:
            reference: (B, S, S, 3) uint8 with S = ``net.crop_size``; mel: (B, M, 80), M >= 16;
            emotion: (B,) int64; n_frames: >= 1.

        Returns:
            (B, n_frames, S, S, 3) uint8.
        """
        s = self.net_cfg.crop_size
        if reference.ndim != 4 or reference.shape[1:] != (s, s, 3):
            raise ValueError(f"reference must be (B, {s}, {s}, 3), got {tuple(reference.shape)}")
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        was_training = self.net.training
        self.net.eval()
        dev = next(self.net.parameters()).device
        b = reference.shape[0]
        ref = frames_to_chw(reference.to(dev))
        masked = mask_target(ref, self.optim_cfg.masked_target)
        mel, emotion = mel.to(dev).float(), emotion.to(dev).long()
        out = []
        chunk = self.optim_cfg.generate_chunk
        for t0 in range(0, n_frames, chunk):
            k = min(chunk, n_frames - t0)
            idx = torch.arange(t0, t0 + k, device=dev).expand(b, k)
            mels = frame_mel_windows(mel, idx).reshape(b * k, 1, MEL_WINDOW, -1)
            rep = ref[:, None].expand(-1, k, -1, -1, -1).reshape(b * k, 3, s, s)
            rep_m = masked[:, None].expand(-1, k, -1, -1, -1).reshape(b * k, 3, s, s)
            z = None
            if self.optim_cfg.generate_latent == "prior":
                z = torch.zeros(b * k, self.net_cfg.latent_dim, device=dev)
            recon = self.net(rep_m, rep, mels, emotion.repeat_interleave(k), sample=False, z=z).recon
            out.append(recon.view(b, k, 3, s, s))
        self.net.train(was_training)
        video = torch.cat(out, dim=1).permute(0, 1, 3, 4, 2)
        return (video * 255.0).round().clamp(0, 255).to(torch.uint8).contiguous()  # (B, n, S, S, 3)

    def resolved_config(self) -> dict:
        """Network / optimisation config with the weights actually used and the state of each loss."""
        return {"net": self.net_cfg.to_dict(), "optim": asdict(self.optim_cfg), "data_keys": list(self.data_keys),
                "weights": {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "delta": self.delta},
                **self.loss_status}

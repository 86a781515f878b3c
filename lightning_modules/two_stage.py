"""Lightning glue for the two-stage method (paper file 003): StarGAN emotion editing of the still face,
then Wav2Lip-style lip-sync of the edited face (networks in ``lightning_modules.networks.two_stage``).

One module trains both stages on the same window batches, with manual optimisation (four Adam
optimisers): stage 1 on one random frame per window with the clip's emotion label, stage 2 on 5
consecutive frames per window.

Readings (ours where the report and anchors leave it open; parameters where it matters)
------------------------------------------------------------------------------------------
* Stage 1 is StarGAN's solver: WGAN-GP critic (``lambda_gp`` 10) with an emotion classification
  head (``lambda_cls`` 1), generator updated every ``n_critic`` = 5 critic steps with adversarial +
  classification + cycle L1 (``lambda_rec`` 10); Adam 1e-4, betas (0.5, 0.999); target labels are
  the batch's own labels shuffled (StarGAN's ``label_org[randperm]``).
* Stage 2 is Wav2Lip's hq trainer: ``(1 - s - d) L1 + s sync + d GAN`` with d = ``disc_wt`` 0.07
  always and s = ``sync_wt`` 0.03 only after the expert's sync loss on the validation batches fell
  below ``sync_threshold`` 0.75 (Wav2Lip's switch; sticky, kept in the checkpoint). The expert is
  the loss-side ``syncnet`` checkpoint, never the evaluator.
* Wav2Lip's reference: 5 frames starting at another random place in the same window (never the
  target frame itself, else the model learns to copy the reference's lips). At inference from a still photo
  there is no other time: the (emotion-edited) still is the reference of every frame and its
  upper half the masked target's, so the mouth comes from the audio alone.
* The emotion-preserving variant (the report's predecessor: an emotion-classifier loss on the
  generated frames) is ``emotion_wt`` > 0 with ``emotion_ckpt``: the loss-side emotion classifier
  (``train@emotion_classifier``, never the EmoAcc evaluator) scores stage 2's 5 generated frames as
  one window, cross-entropy against the clip's emotion, weight ramped linearly from ``emotion_wt``
  (0.1) to ``emotion_wt_final`` (0.2) over ``emotion_ramp_steps`` optimiser steps (our reading of
  "0.1 -> 0.2"); the L1 weight becomes ``1 - s - d - e``. Off (0) by default, as the report's own pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.cvae import frame_mel_windows
from lightning_modules.generation import chw_to_frames, frames_to_chw
from lightning_modules.networks.cvae import mask_lower_half
from lightning_modules.networks.syncnet import sync_loss
from lightning_modules.networks.two_stage import (EditorConfig, EditorDiscriminator, EmotionEditor, LipSyncConfig,
                                                   QualityDiscriminator, build_lipsync, gradient_penalty, mel_offset)
from primitives.sync_windows import SYNC_FRAMES, face_windows, mel_windows
from primitives.vocab import EMOTIONS

RENDER_CHUNK = 32
"""Frames per stage-2 call at inference (:meth:`TwoStageModule._render`)."""


@dataclass
class TwoStageTrainConfig:
    """``train.methods.two_stage.optim`` (module docstring for the readings).

    Attributes:
        lr_editor, betas: stage 1 Adam (StarGAN: 1e-4, (0.5, 0.999)); lr_lipsync: stage 2 Adam (Wav2Lip: 1e-4).
        n_critic, lambda_gp, lambda_cls, lambda_rec: StarGAN's (5, 10, 1, 10).
        sync_wt, disc_wt, sync_threshold: Wav2Lip's (0.03, 0.07, 0.75).
        syncnet_ckpt: the loss-side SyncNet checkpoint (null: no sync loss, recorded).
        emotion_wt, emotion_wt_final, emotion_ramp_steps: the emotion-preserving variant's weight e,
            linear from ``emotion_wt`` at step 0 to ``emotion_wt_final`` (None: constant) at
            ``emotion_ramp_steps``; 0 = off. ``sync_wt + disc_wt + max(e) < 1``.
        emotion_ckpt: the loss-side ``EmotionClassifierModule`` checkpoint (required when e > 0).
        lipsync_init, lipsync_init_sha256: stage 2 starts from Wav2Lip's released generator
            (``wav2lip.pth`` / ``wav2lip_gan.pth``; needs ``net.lipsync.architecture: wav2lip``) and
            fine-tunes it; None (default): from scratch. The report used the released weights.
    """

    lr_editor: float = 1e-4
    lr_lipsync: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 5
    lambda_gp: float = 10.0
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    sync_wt: float = 0.03
    disc_wt: float = 0.07
    sync_threshold: float = 0.75
    syncnet_ckpt: str | None = None
    emotion_wt: float = 0.0
    emotion_wt_final: float | None = None
    emotion_ramp_steps: int = 2000
    emotion_ckpt: str | None = None
    lipsync_init: str | None = None
    lipsync_init_sha256: str | None = None

    def __post_init__(self) -> None:
        p = "train.methods.two_stage.optim"
        self.betas = tuple(float(b) for b in self.betas)
        if min(self.lr_editor, self.lr_lipsync) <= 0 or self.n_critic < 1:
            raise ValueError(f"{p}: learning rates must be > 0 and n_critic >= 1")
        if not 0 <= self.sync_wt + self.disc_wt < 1 or min(self.sync_wt, self.disc_wt) < 0:
            raise ValueError(f"{p}: sync_wt and disc_wt must be >= 0 with sync_wt + disc_wt < 1")
        if self.emotion_ramp_steps < 1:
            raise ValueError(f"{p}.emotion_ramp_steps must be >= 1")
        if min(self.emotion_wt, self.emotion_weight(10**12)) < 0 or self.sync_wt + self.disc_wt + self.emotion_max >= 1:
            raise ValueError(f"{p}: emotion weights must be >= 0 with sync_wt + disc_wt + emotion weight < 1")
        if self.emotion_max > 0 and self.emotion_ckpt is None:
            raise ValueError(f"{p}: emotion_wt > 0 needs emotion_ckpt (the loss-side emotion classifier)")
        for key, stage in (("syncnet_ckpt", "syncnet"), ("emotion_ckpt", "emotion_classifier")):
            path = getattr(self, key) if key == "syncnet_ckpt" or self.emotion_max > 0 else None
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{p}.{key}: checkpoint {path} does not exist "
                                        f"(train it first: `dvc repro train@{stage}-<dataset>`)")

    @property
    def emotion_max(self) -> float:
        """The largest emotion-preserving weight of the schedule (0: the variant is off)."""
        return max(self.emotion_wt, self.emotion_weight(10**12))

    def emotion_weight(self, step: int) -> float:
        """The emotion-preserving weight e at optimiser step ``step`` (linear ramp, then constant)."""
        final = self.emotion_wt if self.emotion_wt_final is None else self.emotion_wt_final
        return self.emotion_wt + (final - self.emotion_wt) * min(step / self.emotion_ramp_steps, 1.0)


def to_tanh(frames: Tensor) -> Tensor:
    """(..., S, S, 3) uint8 -> (..., 3, S, S) float in [-1, 1] (StarGAN's range)."""
    return frames_to_chw(frames) * 2.0 - 1.0


class TwoStageModule(L.LightningModule):
    """Trains the emotion editor (stage 1) and the lip-sync generator (stage 2) on windows
    ``{frames_<S>, mel, emotion}``; :meth:`generate` is the shared ``VideoGenerator`` interface.

    Logs ``train/{d_real,d_fake,d_cls,gp,g_adv,g_cls,g_rec}`` (stage 1), ``train/{l1,sync,gan_g,gan_d}``
    (stage 2), ``train/{emotion_ce,emotion_wt}`` (emotion-preserving variant), ``train/sync_on`` and
    ``val/{l1,sync,edit_acc,edit_acc_<emotion>}`` (``edit_acc``: the critic's own classification of
    the edits as their target emotion, overall and per target, the signal of "identical outputs
    across emotions"; ``val/sync`` stuck near ln 2 = 0.69 is the anchor's "sync loss stuck" signal).
    """

    automatic_optimization = False
    protocol_extras = ("dubbing", "edits")  # the report's dubbing protocol, stage 1's edits (pipeline.protocol.extras)
    ddp_find_unused_parameters = True  # each manual backward (discriminator, generator) reaches only its own networks

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.optim_cfg, self.editor_cfg, self.lipsync_cfg = self._configs(net, optim)
        self.net_cfg = self.lipsync_cfg  # evaluate_video / generate read crop_size from net_cfg
        self.frames_key = f"frames_{self.net_cfg.crop_size}"
        self.data_keys = (self.frames_key, "mel", "lmk")
        self.editor, self.critic = EmotionEditor(self.editor_cfg), EditorDiscriminator(self.editor_cfg)
        self.lipsync, self.quality = build_lipsync(self.lipsync_cfg), QualityDiscriminator(self.lipsync_cfg)

        self.sync_on = False
        self._edit_counts = torch.zeros(2, self.editor_cfg.n_emotions)  # validation edit hits, targets per emotion
        # the emotions the training data holds (CREMA-D: 6 of the 8): validation edits target only these
        self.register_buffer("seen_emotions", torch.zeros(self.editor_cfg.n_emotions, dtype=torch.bool))
        self._targets_seen: torch.Tensor | None = None  # seen_emotions of every rank, per validation epoch
        self._expert: tuple = ()  # (SyncNet,): a tuple keeps the frozen loss network out of checkpoints
        if self.optim_cfg.syncnet_ckpt is not None:
            from lightning_modules.syncnet import SyncNetModule

            self.set_sync_expert(SyncNetModule.load_from_checkpoint(self.optim_cfg.syncnet_ckpt, map_location="cpu").net)
        self._emotion: tuple = ()  # (EmotionClassifier,), frozen, out of checkpoints like the expert
        if self.optim_cfg.emotion_ckpt is not None and self.optim_cfg.emotion_max > 0:
            from lightning_modules.emotion_classifier import EmotionClassifierModule

            self.set_emotion_classifier(
                EmotionClassifierModule.load_from_checkpoint(self.optim_cfg.emotion_ckpt, map_location="cpu").net)

    def setup(self, stage: str) -> None:
        """Fit: stage 2 from ``optim.lipsync_init`` (Wav2Lip's released generator). Lightning restores
        a resumed run's checkpoint after this hook, and ``load_from_checkpoint`` never calls it, so
        the file is read only when training starts."""
        if stage == "fit" and self.optim_cfg.lipsync_init is not None:
            from lightning_modules.networks.wav2lip import load_wav2lip_state

            self.lipsync.load_state_dict(load_wav2lip_state(self.optim_cfg.lipsync_init, self.optim_cfg.lipsync_init_sha256,
                                                            where="train.methods.two_stage.optim.lipsync_init"))

    @staticmethod
    def _configs(net: dict | None, optim: dict | None) -> tuple[TwoStageTrainConfig, EditorConfig, LipSyncConfig]:
        """The config dataclasses from ``train.methods.two_stage.{net,optim}`` (both stages at
        ``net.crop_size``); ``ValueError`` on a bad value or an unknown ``net`` key."""
        net = dict(net or {})
        unknown = sorted(set(net) - {"crop_size", "editor", "lipsync"})
        if unknown:
            raise ValueError(f"two_stage.net.{unknown[0]}: unknown key (known: crop_size, editor, lipsync)")
        s = int(net.get("crop_size", 64))
        configs = (TwoStageTrainConfig(**(optim or {})), EditorConfig.from_dict({"image_size": s, **net.get("editor", {})}),
                   LipSyncConfig.from_dict({"image_size": s, **net.get("lipsync", {})}))
        if configs[0].lipsync_init is not None and configs[2].architecture != "wav2lip":
            raise ValueError("train.methods.two_stage.optim.lipsync_init is a Wav2Lip generator: set "
                             "two_stage.net.lipsync.architecture to wav2lip (and net.crop_size to 96)")
        return configs

    @staticmethod
    def validate_params(net: dict | None = None, optim: dict | None = None) -> None:
        """Check params without building networks; raises ``ValueError`` / ``FileNotFoundError``."""
        TwoStageModule._configs(net, optim)

    def set_sync_expert(self, net: torch.nn.Module) -> None:
        """Use ``net`` (a SyncNet at this crop size) as stage 2's frozen lip-sync expert."""
        if net.cfg.crop_size != self.net_cfg.crop_size:
            raise ValueError(f"SyncNet crop_size {net.cfg.crop_size} != two_stage crop_size {self.net_cfg.crop_size}")
        self._expert = (net.eval().requires_grad_(False),)

    def set_emotion_classifier(self, net: torch.nn.Module) -> None:
        """Use ``net`` (an ``EmotionClassifier``) as the emotion-preserving variant's frozen loss network."""
        self._emotion = (net.eval().requires_grad_(False),)

    def emotion_term(self, generated: Tensor, label: Tensor) -> Tensor:
        """CE of the loss-side emotion classifier on generated frames (B, K, 3, S, S) in [0, 1] as one
        K-frame window each, against ``label`` (B,) -> () float."""
        classifier = self._emotion[0].to(generated.device)
        return F.cross_entropy(classifier(generated.permute(0, 1, 3, 4, 2) * 255.0), label)

    def configure_optimizers(self):
        c = self.optim_cfg
        return [torch.optim.Adam(self.editor.parameters(), c.lr_editor, betas=c.betas),
                torch.optim.Adam(self.critic.parameters(), c.lr_editor, betas=c.betas),
                torch.optim.Adam(self.lipsync.parameters(), c.lr_lipsync, betas=(0.5, 0.999)),
                torch.optim.Adam(self.quality.parameters(), c.lr_lipsync, betas=(0.5, 0.999))]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sync_on"] = self.sync_on

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.sync_on = bool(checkpoint.get("sync_on", False))

    # ---------------------------------------------------------------- stage 1 (StarGAN)
    def critic_losses(self, x: Tensor, label: Tensor, target: Tensor) -> dict[str, Tensor]:
        """StarGAN's critic step: WGAN terms, gradient penalty, emotion CE on real faces (``d_total``).

        Args:
            x: (B, 3, S, S) real faces in [-1, 1]; label: (B,) their emotions; target: (B,) edit targets.
        """
        c = self.optim_cfg
        src, cls = self.critic(x)
        with torch.no_grad():
            fake = self.editor(x, target)
        out = {"d_real": -src.mean(), "d_cls": F.cross_entropy(cls, label),
               "d_fake": self.critic(fake)[0].mean(), "gp": gradient_penalty(self.critic, x, fake)}
        out["d_total"] = out["d_real"] + out["d_fake"] + c.lambda_cls * out["d_cls"] + c.lambda_gp * out["gp"]
        return out

    def generator_losses(self, x: Tensor, label: Tensor, target: Tensor) -> dict[str, Tensor]:
        """StarGAN's generator step: adversarial, target-emotion CE and cycle L1 back to ``label`` (``g_total``)."""
        c = self.optim_cfg
        fake = self.editor(x, target)
        src, cls = self.critic(fake)
        out = {"g_adv": -src.mean(), "g_cls": F.cross_entropy(cls, target),
               "g_rec": (x - self.editor(fake, label)).abs().mean()}
        out["g_total"] = out["g_adv"] + c.lambda_cls * out["g_cls"] + c.lambda_rec * out["g_rec"]
        return out

    # ---------------------------------------------------------------- stage 2 (Wav2Lip)
    def quality_d_loss(self, real: Tensor, gen: Tensor) -> Tensor:
        """Wav2Lip's visual-quality discriminator step: BCE, real frames -> 1, generated -> 0
        (detached). real, gen: (B, K, 3, S, S) in [0, 1]."""
        real_logits, gen_logits = self.quality(real.flatten(0, 1)), self.quality(gen.detach().flatten(0, 1))
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(gen_logits, torch.zeros_like(gen_logits)))

    def quality_g_loss(self, gen: Tensor) -> Tensor:
        """The generator's visual-quality term: BCE of the discriminator on generated frames against
        "real" (1). gen: (B, K, 3, S, S) in [0, 1]."""
        logits = self.quality(gen.flatten(0, 1))
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def lipsync_frames(self, frames: Tensor, mel: Tensor, targets: Tensor, references: Tensor) -> Tensor:
        """Stage 2 on K frames per sample.

        Args:
            frames: (B, T, S, S, 3) uint8 windows; mel: (B, M, 80); targets, references: (B, K) frame indices.

        Returns:
            (B, K, 3, S, S) generated frames in [0, 1].
        """
        b, k = targets.shape
        rows = torch.arange(b, device=frames.device)[:, None]
        target = frames_to_chw(frames[rows, targets]).flatten(0, 1)  # (B K, 3, S, S)
        reference = frames_to_chw(frames[rows, references]).flatten(0, 1)
        mels = frame_mel_windows(mel, targets, mel_offset(self.lipsync_cfg)).flatten(0, 1)  # (B K, 1, 16, 80)
        return self.lipsync(mask_lower_half(target), reference, mels).view(b, k, *target.shape[1:])

    def sync_term(self, generated: Tensor, mel: Tensor, start: Tensor) -> Tensor | None:
        """The expert's sync loss (eq. 5 with y = 1) of 5 generated frames (B, 5, 3, S, S) at ``start`` (B,)."""
        if not self._expert:
            return None
        expert = self._expert[0].to(generated.device)
        v, a = expert(face_windows(generated.permute(0, 1, 3, 4, 2), 0), mel_windows(mel, start))
        return sync_loss(v, a, torch.ones(len(v), device=v.device), expert.cfg.prob_mode)

    def _windows(self, batch: dict, train: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Target window start (B,), target indices (B, 5) and reference indices (B, 5): the
        reference window starts elsewhere (Wav2Lip's "wrong window"), so no frame is its own reference."""
        frames = batch[self.frames_key]
        b, t_len = frames.shape[:2]
        if t_len < SYNC_FRAMES + 1:
            raise ValueError(f"two_stage needs windows of >= {SYNC_FRAMES + 1} frames, got {t_len}")
        dev = frames.device
        span = torch.arange(SYNC_FRAMES, device=dev)
        if train:
            start = torch.randint(0, t_len - SYNC_FRAMES + 1, (b,), device=dev)
            ref = torch.randint(0, t_len - SYNC_FRAMES, (b,), device=dev)
            ref = ref + (ref >= start).long()  # any window start but the target's
        else:
            start = torch.full((b,), t_len - SYNC_FRAMES, device=dev)
            ref = torch.zeros(b, dtype=torch.long, device=dev)
        return start, start[:, None] + span, ref[:, None] + span

    def training_step(self, batch: dict, batch_idx: int) -> None:
        c = self.optim_cfg
        opt_g1, opt_d1, opt_g2, opt_d2 = self.optimizers()
        frames, mel, label = batch[self.frames_key], batch["mel"].float(), batch["emotion"]
        b, t_len = frames.shape[:2]
        self.seen_emotions[label] = True
        # stage 1: one random frame per window; targets = the batch's labels shuffled (StarGAN)
        pick = torch.randint(0, t_len, (b,), device=frames.device)
        x = to_tanh(frames[torch.arange(b, device=frames.device), pick])
        target = label[torch.randperm(b, device=label.device)]
        s1 = self.critic_losses(x, label, target)
        opt_d1.zero_grad()
        self.manual_backward(s1["d_total"])
        opt_d1.step()
        if (batch_idx + 1) % c.n_critic == 0:  # StarGAN: the generator every n_critic critic steps
            s1.update(self.generator_losses(x, label, target))
            opt_g1.zero_grad()
            self.manual_backward(s1["g_total"])
            opt_g1.step()
        # stage 2: 5 target frames, 5 reference frames from elsewhere in the window
        start, targets, refs = self._windows(batch, train=True)
        gen = self.lipsync_frames(frames, mel, targets, refs)  # (B, 5, 3, S, S)
        real = frames_to_chw(frames[torch.arange(b, device=frames.device)[:, None], targets])
        d_loss = self.quality_d_loss(real, gen)
        opt_d2.zero_grad()
        self.manual_backward(d_loss)
        opt_d2.step()
        l1 = (gen - real).abs().mean()
        gan = self.quality_g_loss(gen)
        sync = self.sync_term(gen, mel, start)
        s = c.sync_wt if (self.sync_on and sync is not None) else 0.0
        e = c.emotion_weight(self.global_step) if self._emotion else 0.0
        emotion = self.emotion_term(gen, label) if e else None
        loss = (1 - s - c.disc_wt - e) * l1 + c.disc_wt * gan + (s * sync if s else 0.0) + (e * emotion if e else 0.0)
        opt_g2.zero_grad()
        self.manual_backward(loss)
        opt_g2.step()
        logs = {f"train/{k}": v for k, v in s1.items()}
        logs.update({"train/l1": l1, "train/gan_g": gan, "train/gan_d": d_loss, "train/sync_on": float(self.sync_on)})
        if sync is not None:
            logs["train/sync"] = sync
        if emotion is not None:
            logs.update({"train/emotion_ce": emotion, "train/emotion_wt": e})
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, batch_size=b)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        frames, mel, label = batch[self.frames_key], batch["mel"].float(), batch["emotion"]
        b = len(frames)
        start, targets, refs = self._windows(batch, train=False)
        gen = self.lipsync_frames(frames, mel, targets, refs)
        real = frames_to_chw(frames[torch.arange(b, device=frames.device)[:, None], targets])
        logs = {"val/l1": (gen - real).abs().mean()}
        sync = self.sync_term(gen, mel, start)
        if sync is not None:
            logs["val/sync"] = sync
        self.log_dict(logs, on_epoch=True, sync_dist=True, batch_size=b)
        target = self.edit_targets(label)
        if target is None:  # fewer than two emotions seen in training: no edit to score
            return
        x = to_tanh(frames[:, 0])
        hit = (self.critic(self.editor(x, target))[1].argmax(1) == target).float()
        # edit accuracy per target emotion from counts, summed over ranks at epoch end (every rank logs
        # the same keys: a per-rank mean of the emotions one rank happened to see would pair values by order)
        counts = torch.zeros(2, self.editor_cfg.n_emotions, device=hit.device)
        counts[0].index_add_(0, target, hit)
        counts[1].index_add_(0, target, torch.ones_like(hit))
        self._edit_counts += counts

    def edit_targets(self, label: torch.Tensor) -> torch.Tensor | None:
        """Validation edit target per clip: the next emotion after its own, cyclically, among the
        emotions of the training data (``seen_emotions``, merged over ranks at epoch start); (B,)
        int64, or None when fewer than two were seen. (The old ``(label + 1) % 8`` targeted contempt
        and surprised on CREMA-D, which has neither.)"""
        seen = self._targets_seen if self._targets_seen is not None else self.seen_emotions
        ids = torch.nonzero(seen).flatten().to(label.device)
        if len(ids) < 2:
            return None
        return ids[torch.searchsorted(ids, label, right=True) % len(ids)]

    def on_validation_epoch_start(self) -> None:
        self._edit_counts = torch.zeros(2, self.editor_cfg.n_emotions, device=self.device)
        seen = self.all_gather(self.seen_emotions)  # (world, n) under DDP, (n,) alone
        self._targets_seen = seen.reshape(-1, self.editor_cfg.n_emotions).any(dim=0)

    def on_validation_epoch_end(self) -> None:
        hits, totals = self.trainer.strategy.reduce(self._edit_counts, reduce_op="sum")  # (n_emotions,) each
        if totals.sum() > 0:
            self.log("val/edit_acc", hits.sum() / totals.sum())
            for emotion_id in torch.nonzero(totals).flatten().tolist():
                self.log(f"val/edit_acc_{EMOTIONS[emotion_id]}", hits[emotion_id] / totals[emotion_id])
        sync = self.trainer.callback_metrics.get("val/sync")
        if sync is not None and float(sync) < self.optim_cfg.sync_threshold and not self.sync_on:
            self.sync_on = True  # Wav2Lip: the sync loss joins once the expert finds the lips in sync enough

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def edit(self, reference: Tensor, emotion: Tensor) -> Tensor:
        """Stage 1: (B, S, S, 3) uint8 faces -> (B, S, S, 3) uint8 edited to ``emotion`` (B,)."""
        x = to_tanh(reference.to(self.device))
        return chw_to_frames((self.editor(x, emotion.to(self.device)) + 1.0) / 2.0)

    def _render(self, video: Tensor, mel: Tensor) -> Tensor:
        """Stage 2 on every frame of ``video`` (B, T, S, S, 3) uint8, each frame its own masked target
        and reference, in chunks of ``RENDER_CHUNK`` frames -> (B, T, S, S, 3) uint8 on the CPU."""
        idx = torch.arange(video.shape[1], device=self.device)[None].expand(len(video), -1)
        mel = mel.float().to(self.device)
        out = [self.lipsync_frames(video, mel, idx[:, t0:t0 + RENDER_CHUNK], idx[:, t0:t0 + RENDER_CHUNK])
               for t0 in range(0, video.shape[1], RENDER_CHUNK)]
        return chw_to_frames(torch.cat(out, dim=1)).cpu()

    @torch.no_grad()
    def generate(self, reference: Tensor, mel: Tensor, emotion: Tensor, n_frames: int,
                 ref_lmk: Tensor | None = None) -> Tensor:
        """:meth:`lightning_modules.generation.VideoGenerator.generate`: stage 1 edits the reference to
        ``emotion``, stage 2 lip-syncs the edited still to ``mel`` (module docstring: the still is
        every frame's reference and masked target). ``ref_lmk`` is unused.

        Returns:
            (B, n_frames, S, S, 3) uint8.
        """
        return self.lipsync_still(self.edit(reference, emotion), mel, n_frames)

    @torch.no_grad()
    def lipsync_still(self, still: Tensor, mel: Tensor, n_frames: int) -> Tensor:
        """Stage 2 alone on a still (B, S, S, 3) uint8: every frame's reference and masked target,
        the mouth from ``mel`` (B, M, 80) -> (B, n_frames, S, S, 3) uint8 (Wav2Lip on a photo)."""
        return self._render(still[:, None].expand(-1, n_frames, -1, -1, -1), mel)

    @torch.no_grad()
    def dub(self, frames: Tensor, mel: Tensor) -> Tensor:
        """Stage 2 alone on a real video (paper 003's "evaluation with ground truth video", Wav2Lip's
        inference): each frame re-rendered from its own upper half, the real frame as reference;
        the output keeps the real upper half (rows < S/2) and takes the generated lower half.

        Args:
            frames: (T, S, S, 3) uint8; mel: (M, 80) of the same clip.

        Returns:
            (T, S, S, 3) uint8.
        """
        dubbed = self._render(frames[None].to(self.device), mel[None])[0]
        half = frames.shape[1] // 2
        dubbed[:, :half] = frames[:, :half]
        return dubbed

    def resolved_config(self) -> dict:
        """Network and optimisation config plus what the run derived (MLflow, config.json)."""
        return {"net": {"crop_size": self.net_cfg.crop_size, "editor": asdict(self.editor_cfg),
                        "lipsync": asdict(self.lipsync_cfg)},
                "optim": asdict(self.optim_cfg), "sync_on": self.sync_on,
                "sync_loss": f"enabled ({self.optim_cfg.syncnet_ckpt})" if self._expert else "disabled (syncnet_ckpt: null)",
                "emotion_loss": f"enabled ({self.optim_cfg.emotion_ckpt})" if self._emotion else "disabled (emotion_wt: 0)",
                "data_keys": list(self.data_keys)}

"""Lightning glue for EmoTalker's image autoencoder (paper 004 §2.1: "frozen and well-trained",
LDM f4). No pretrained LDM autoencoder can be had offline, so ``train@autoencoder-<dataset>``
trains a diffusers ``AutoencoderKL`` (f = 4, 3 latent channels) on the training split's face
crops; ``emotalker`` then loads it frozen.

Loss (ours; LDM adds LPIPS and a patch GAN): L1 + ``kl_weight`` (LDM: 1e-6) x KL of the posterior.
``sample_posterior`` (LDM: true) decodes a posterior sample; off (default here) decodes its mean: at
initialisation the posterior's std is ~1, as large as the latents, and the few hundred CPU steps
of the sample run end before the KL term has shrunk it (`dvc repro train@autoencoder-crema_d`, 160
steps: validation PSNR 16.8 dB decoding samples, 17.3 dB decoding the mean).
Logged: ``train/{l1,kl,total}``, ``val/{l1,psnr}`` (PSNR in dB on [0, 1], torchmetrics). At the
end of fit the latent scaling factor is measured as 1 / std of the posterior means over
``scale_batches`` training batches (NOT Stable Diffusion's 0.18215, which belongs to its own
autoencoder) and stored in the checkpoint and ``resolved_config()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio

from lightning_modules.generation import frames_to_chw
from lightning_modules.networks.config import config_to_dict
from lightning_modules.networks.emotalker import AutoencoderConfig, build_autoencoder


@dataclass
class AutoencoderTrainConfig:
    """``train.methods.autoencoder.optim``: lr (Adam, > 0), kl_weight (>= 0), sample_posterior (module
    docstring), frames_per_window (random frames taken from each window, >= 1), scale_batches
    (batches for the scaling factor, >= 1)."""

    lr: float = 1e-3
    kl_weight: float = 1e-6
    sample_posterior: bool = False
    frames_per_window: int = 4
    scale_batches: int = 8

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.kl_weight < 0 or self.frames_per_window < 1 or self.scale_batches < 1:
            raise ValueError("train.methods.autoencoder.optim: lr > 0, kl_weight >= 0, frames_per_window >= 1, "
                             "scale_batches >= 1")


class AutoencoderModule(L.LightningModule):
    """Trains :func:`build_autoencoder` on face crops ``frames_<S>`` (B, T, S, S, 3) uint8.

    ``encode(images)``: (N, 3, S, S) in [0, 1] -> scaled latents (N, 3, S / 4, S / 4) (posterior
    mean x scaling factor); ``decode(latents)`` the inverse -> (N, 3, S, S) in [0, 1] (clamped).
    """

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net_cfg, self.optim_cfg = self._configs(net, optim)
        self.frames_key = f"frames_{self.net_cfg.image_size}"
        self.data_keys = ("lmk", self.frames_key)
        self.vae = build_autoencoder(self.net_cfg)
        self.register_buffer("scaling_factor", torch.tensor(1.0))
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)

    @staticmethod
    def _configs(net: dict | None, optim: dict | None) -> tuple[AutoencoderConfig, AutoencoderTrainConfig]:
        return AutoencoderConfig.from_dict(net), AutoencoderTrainConfig(**(optim or {}))

    @staticmethod
    def validate_params(net: dict | None = None, optim: dict | None = None) -> None:
        """Check params without building the network; raises ``ValueError`` (also for ``kind: vq``,
        which is loaded pretrained, never trained here)."""
        net_cfg, _ = AutoencoderModule._configs(net, optim)
        if net_cfg.kind != "kl":
            raise ValueError("train.methods.autoencoder.net.kind: train@autoencoder trains a KL autoencoder (kind: kl); "
                             "a pretrained VQ-f4 goes to train.methods.emotalker.optim.autoencoder_path")

    def on_fit_start(self) -> None:
        self.validate_params(config_to_dict(self.net_cfg))

    def _frames(self, batch: dict) -> Tensor:
        """``frames_per_window`` random frames of every window -> (N, 3, S, S) in [0, 1]."""
        frames = batch[self.frames_key]
        b, t = frames.shape[:2]
        pick = torch.randint(0, t, (b, min(self.optim_cfg.frames_per_window, t)), device=frames.device)
        return frames_to_chw(frames[torch.arange(b, device=frames.device)[:, None], pick]).flatten(0, 1)

    def encode(self, images: Tensor) -> Tensor:
        encoded = self.vae.encode(images * 2 - 1)
        latents = encoded.latents if self.net_cfg.kind == "vq" else encoded.latent_dist.mean  # VQ: before quantisation
        return latents * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return ((self.vae.decode(latents / self.scaling_factor).sample + 1) / 2).clamp(0, 1)  # VQ: quantised here

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = self._frames(batch)
        posterior = self.vae.encode(x * 2 - 1).latent_dist
        z = posterior.sample() if self.optim_cfg.sample_posterior else posterior.mean
        rec = (self.vae.decode(z).sample + 1) / 2
        l1, kl = (rec - x).abs().mean(), posterior.kl().mean()
        loss = l1 + self.optim_cfg.kl_weight * kl
        self.log_dict({"train/l1": l1, "train/kl": kl, "train/total": loss}, on_step=False, on_epoch=True,
                      batch_size=len(x))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = self._frames(batch)
        rec = ((self.vae.decode(self.vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
        self.val_psnr(rec, x)
        self.log_dict({"val/l1": (rec - x).abs().mean(), "val/psnr": self.val_psnr}, on_epoch=True, batch_size=len(x))

    @torch.no_grad()
    def measure_scaling_factor(self, batches) -> float:
        """1 / std of the posterior means over ``batches`` (an iterable of training batches)."""
        means = [self.vae.encode(self._frames({k: v.to(self.device) if torch.is_tensor(v) else v
                                                for k, v in batch.items()}) * 2 - 1).latent_dist.mean
                 for batch in batches]
        return float(1.0 / torch.cat(means).std())

    def on_train_end(self) -> None:
        import itertools

        loader = self.trainer.datamodule.train_dataloader()
        factor = self.measure_scaling_factor(itertools.islice(loader, self.optim_cfg.scale_batches))
        factor = self.trainer.strategy.reduce(torch.tensor(factor, device=self.device), reduce_op="mean")  # one value on every rank
        self.scaling_factor.fill_(float(factor))
        if self.logger:
            self.logger.log_metrics({"scaling_factor": float(factor)}, step=self.global_step)
        # last.ckpt was written before on_train_end: write it again with the factor (every rank calls it; rank 0 writes)
        self.trainer.save_checkpoint(str(Path(self.trainer.checkpoint_callback.dirpath) / "last.ckpt"))

    def configure_optimizers(self):
        return torch.optim.Adam(self.vae.parameters(), self.optim_cfg.lr)

    def resolved_config(self) -> dict:
        return {"net": config_to_dict(self.net_cfg), "optim": asdict(self.optim_cfg), "factor": self.net_cfg.factor,
                "scaling_factor": float(self.scaling_factor), "data_keys": list(self.data_keys)}

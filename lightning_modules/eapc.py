"""Lightning glue for EAPC stage 1 (audio -> landmarks), paper file 001.

The architecture lives in ``lightning_modules.networks.eapc`` (plain ``nn.Module``); this module
only wires it to the data, the losses (eq. 11-13) and the landmark metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch

from eval_metrics.landmarks import LandmarkMetrics
from lightning_modules.networks.eapc import EAPC, EAPCConfig
from lightning_modules.networks.eapc_authors import EAPCAuthors, EAPCAuthorsConfig
from lightning_modules.networks.losses import eapc_loss


@dataclass
class EAPCTrainConfig:
    """Optimisation and loss parameters (``train.methods.eapc`` in params.yaml).

    Attributes:
        lr: Adam learning rate (paper: 1e-4), > 0.
        weight_decay: Adam weight decay, >= 0.
        w_mse, w_lmd: weights of eq. 11 and eq. 12 (paper: 1, 1).
        w_emotion: weight of our emotion cross-entropy on the LLFs encoder (0 = the paper's eq. 13).
        lmd_mode: reading of eq. 12, ``"pairwise"`` or ``"point"`` (see ``eapc_loss``).
        loss: ``"paper"`` (eq. 11-13, :func:`eapc_loss`) or ``"authors"`` (their code: 0.1 x the
            element-wise MSE + the point-wise landmark distance, both in landmark pixels).
        lmk_key, mfcc_key, llf_key: the shard arrays trained on: ``lmk`` / ``mfcc`` / ``llf`` (ours), or
            the authors' ``lmk_dlib68`` (``preprocess.eapc_authors``: dlib 68 in a per-frame 256 px face
            box), ``mfcc_authors`` (each frame's own 40 ms) and ``llf_authors`` (their LLFs).
        emotion_pretrain_steps: the first k optimisation steps train the emotion branch alone on the
            training windows with emotion CE + 0.1 x intensity-level CE per frame, then the landmark
            loss takes over and the branch is fine-tuned with the rest (the authors pre-train their
            emotion embedding so, as a separate run on MEAD M003 + M030, 500 epochs; our reading: a
            phase of the same run on its own training data). Needs ``net.variant: authors``; 0 = off.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    w_mse: float = 1.0
    w_lmd: float = 1.0
    w_emotion: float = 0.1
    lmd_mode: str = "pairwise"
    loss: str = "paper"
    lmk_key: str = "lmk"
    mfcc_key: str = "mfcc"
    llf_key: str = "llf"
    emotion_pretrain_steps: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"train.methods.eapc.optim.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "w_mse", "w_lmd", "w_emotion"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.methods.eapc.optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.lmd_mode not in ("pairwise", "point"):
            raise ValueError(f"train.methods.eapc.optim.lmd_mode must be 'pairwise' or 'point', got {self.lmd_mode!r}")
        if self.loss not in ("paper", "authors"):
            raise ValueError(f"train.methods.eapc.optim.loss must be 'paper' or 'authors', got {self.loss!r}")
        keys = {"lmk_key": ("lmk", "lmk_dlib68"), "mfcc_key": ("mfcc", "mfcc_authors"), "llf_key": ("llf", "llf_authors")}
        for name, allowed in keys.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.methods.eapc.optim.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not (isinstance(self.emotion_pretrain_steps, int) and self.emotion_pretrain_steps >= 0):
            raise ValueError(f"train.methods.eapc.optim.emotion_pretrain_steps must be an integer >= 0, "
                             f"got {self.emotion_pretrain_steps!r}")


class EAPCModule(L.LightningModule):
    """Trains :class:`EAPC` on windows ``{mfcc (B,T,28,12), llf (B,T,25), lmk (B,T,68,2),
    ref_lmk (B,68,2), emotion (B,)}``; logs losses and M-LD, M-LVD, F-LD, F-LVD (crop pixels).

    ``net.variant``: ``paper`` (our reading of the paper's text, :class:`EAPC`) or ``authors`` (the
    authors' code, :class:`~lightning_modules.networks.eapc_authors.EAPCAuthors`, with the other
    ``net`` keys its config's); the ``eapc_authors`` preset selects it with their data and loss.
    """

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        net = dict(net or {})
        self.variant = net.pop("variant", "paper")
        if self.variant not in ("paper", "authors"):
            raise ValueError(f"train.methods.eapc.net.variant must be 'paper' or 'authors', got {self.variant!r}")
        self.net_cfg = (EAPCConfig if self.variant == "paper" else EAPCAuthorsConfig).from_dict(net)
        self.optim_cfg = EAPCTrainConfig(**(optim or {}))
        if self.optim_cfg.emotion_pretrain_steps and self.variant != "authors":
            raise ValueError("train.methods.eapc.optim.emotion_pretrain_steps needs net.variant: authors "
                             "(the paper variant's LLFs encoder has no intensity head)")
        self.net = EAPC(self.net_cfg) if self.variant == "paper" else EAPCAuthors(self.net_cfg)
        self.lmk_key, self.mfcc_key = self.optim_cfg.lmk_key, self.optim_cfg.mfcc_key
        self.llf_key = self.optim_cfg.llf_key
        self.data_keys = tuple(dict.fromkeys(("lmk", self.lmk_key, self.mfcc_key, "llf", self.llf_key)))  # lmk: ref_lmk
        """Arrays the DataModule must load for this method."""
        self.val_metrics = LandmarkMetrics(prefix="val/")
        self.test_metrics = LandmarkMetrics(prefix="test/")

    def fit_input_stats(self, mfcc, llf) -> None:
        """Standardise inputs with training-set statistics (stored as buffers in the checkpoint)."""
        self.net.fit_input_stats(mfcc=torch.as_tensor(mfcc), llf=torch.as_tensor(llf))

    def forward(self, batch: dict) -> torch.Tensor:
        """Predicted landmarks (B, T, 68, 2) in the pixels of ``optim.lmk_key`` (ours: crop pixels)."""
        return self.net(batch[self.mfcc_key], batch[self.llf_key], batch["ref_lmk"]).lmk

    def target(self, batch: dict) -> torch.Tensor:
        """The landmarks trained on and scored against, (B, T, 68, 2)."""
        return batch[self.lmk_key]

    def model_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.net(batch[self.mfcc_key], batch[self.llf_key], batch["ref_lmk"])
        cfg, target = self.optim_cfg, self.target(batch)
        if self.training and self.global_step < cfg.emotion_pretrain_steps:
            losses = emotion_pretrain_loss(out.emotion_logits, out.level_logits, batch["emotion"], batch["intensity"])
        elif cfg.loss == "authors":
            losses = authors_loss(out.lmk, target)
        else:
            losses = eapc_loss(out.lmk, target, out.emotion_logits, batch["emotion"], w_mse=cfg.w_mse,
                               w_lmd=cfg.w_lmd, w_emotion=cfg.w_emotion, lmd_mode=cfg.lmd_mode,
                               unit=self.net_cfg.crop_size)
        return out.lmk, losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, losses = self.model_step(batch)
        bs = len(batch["key"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=bs)
        return losses["total"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred, losses = self.model_step(batch)
        self.log("val/loss", losses["total"], on_epoch=True, sync_dist=True, batch_size=len(batch["key"]))
        self.val_metrics.update(pred, self.target(batch))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        pred, _ = self.model_step(batch)
        self.test_metrics.update(pred, self.target(batch))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)

    def resolved_config(self) -> dict:
        """The full network and optimisation config (for MLflow and ``models/<method>/config.json``)."""
        return {"net": {"variant": self.variant, **asdict(self.net_cfg)}, "optim": asdict(self.optim_cfg)}


def authors_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The EAPC authors' training loss: ``0.1 x mean((pred - target)^2) + mean_points ||pred - target||``
    (their ``calculate_LMD`` with norm 1: mean over points, frames, batch), (B, T, 68, 2) landmark
    pixels -> dict ``mse``, ``lmd``, ``total`` float scalars >= 0."""
    mse = torch.nn.functional.mse_loss(pred, target)
    lmd = (pred - target).norm(dim=-1).mean()
    return {"mse": mse, "lmd": lmd, "total": 0.1 * mse + lmd}


def emotion_pretrain_loss(emotion_logits: torch.Tensor, level_logits: torch.Tensor, emotion: torch.Tensor,
                          intensity: torch.Tensor) -> dict[str, torch.Tensor]:
    """The EAPC authors' emotion-embedding pre-training loss: ``CE(emotion) + 0.1 x CE(level)`` per
    frame, the clip's labels on every frame.

    Args:
        emotion_logits: (B, T, n_emotions) float. level_logits: (B, T, n_levels) float.
        emotion: (B,) int64 emotion ids. intensity: (B,) int64 in 0..3 (0 = unspecified, 1-3 = low,
            medium, high as MEAD's levels 1-3): level class ``intensity - 1``; 0 is left out of the level term.

    Returns:
        dict ``emotion_ce``, ``level_ce``, ``total`` float scalars >= 0.
    """
    b, t, n_emotions = emotion_logits.shape
    ce = torch.nn.functional.cross_entropy
    emotion_ce = ce(emotion_logits.reshape(b * t, n_emotions), emotion.repeat_interleave(t))
    levels = (intensity - 1).repeat_interleave(t)  # -1 = unspecified: ignored
    known = levels >= 0
    level_ce = (ce(level_logits.reshape(b * t, -1)[known], levels[known]) if known.any()
                else level_logits.sum() * 0)
    return {"emotion_ce": emotion_ce, "level_ce": level_ce, "total": emotion_ce + 0.1 * level_ce}

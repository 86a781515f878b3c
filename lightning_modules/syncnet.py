"""Lightning glue for the expert lip-sync discriminator (paper 000 eq. 4-5; Wav2Lip's expert).

The network lives in :mod:`lightning_modules.networks.syncnet`. The expert is trained here on real
clips; it is then (a) frozen as the lip-sync loss of generators (eq. 5) and (b) the evaluator of
LSE-D / LSE-C (:class:`eval_metrics.sync.SyncEvaluator`, labelled "own expert SyncNet trained on
<dataset>").

Pairs (per batch of windows ``frames_<S> (B, T, S, S, 3)``, ``mel (B, floor(3.2 T), 80)``)
--------------------------------------------------------------------------------------------
From every window ``K = pairs_per_window`` random 5-frame starts are drawn (evenly spaced starts in
validation/test, so those are deterministic). All ``B K`` face windows are paired with all
``B K`` mel windows:

* label 1: the same clip and the same absolute frame (the matching mel window);
* label 0: the same clip with starts >= ``min_negative_shift`` (default 5) frames apart, or
  a different clip (clips are identified by the DataModule key ``<clip>@<window start>``, so two
  windows of one clip in a batch are never mistaken for different clips);
* ignored: the same clip with starts 1 .. ``min_negative_shift - 1`` frames apart (the 0.2 s
  windows overlap, neither label is right).

The loss is BCE on the sync probability (eq. 4-5) with positives and negatives weighted equally
(half of the weight on each class), as Wav2Lip's 50/50 sampling does. ``val/acc`` is the balanced
accuracy (mean of the per-class recalls, threshold 0.5) over the same pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.networks.syncnet import SyncNet, SyncNetConfig, sync_probability
from primitives.sync_windows import SYNC_FRAMES, face_windows, mel_windows


@dataclass
class SyncNetTrainConfig:
    """Optimisation and pair sampling (``train.methods.syncnet.optim`` in params.yaml).

    Attributes:
        lr: Adam learning rate (Wav2Lip's expert: 1e-4), > 0.
        weight_decay: Adam weight decay, >= 0.
        pairs_per_window: K, 5-frame starts drawn per window, >= 1.
        min_negative_shift: smallest |shift| in frames of a same-clip negative (>= 5: no overlap
            of the 0.2 s windows); closer same-clip pairs are ignored.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    pairs_per_window: int = 4
    min_negative_shift: int = 5

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"train.methods.syncnet.optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"train.methods.syncnet.optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.pairs_per_window < 1:
            raise ValueError(f"train.methods.syncnet.optim.pairs_per_window must be >= 1, got {self.pairs_per_window}")
        if self.min_negative_shift < 1:
            raise ValueError(f"train.methods.syncnet.optim.min_negative_shift must be >= 1, "
                             f"got {self.min_negative_shift}")


def _clip_ids_and_offsets(keys: list[str] | None, batch: int) -> tuple[list[str], Tensor]:
    """Clip id and window start frame from DataModule keys ``<clip>@<start>``; without keys every
    window is its own clip starting at 0."""
    if keys is None:
        return [str(i) for i in range(batch)], torch.zeros(batch, dtype=torch.long)
    ids, offs = [], []
    for k in keys:
        clip, sep, start = str(k).rpartition("@")
        if sep and start.isdigit():
            ids.append(clip)
            offs.append(int(start))
        else:
            ids.append(str(k))
            offs.append(0)
    return ids, torch.tensor(offs, dtype=torch.long)


class SyncNetModule(L.LightningModule):
    """Trains :class:`SyncNet` on windows ``{frames_<S> (B,T,S,S,3) uint8, mel (B,floor(3.2T),80),
    key}`` with BCE on the sync probability; logs ``train/loss``, ``val/loss``, ``val/acc``
    (balanced accuracy), and the mean probability of positive and negative pairs.

    Args:
        net: :class:`SyncNetConfig` fields (``crop_size`` must match the DataModule's ``frames_<S>``).
        optim: :class:`SyncNetTrainConfig` fields.
    """

    data_keys: tuple[str, ...] = ("lmk", "frames_128", "mel")
    """Arrays the DataModule must load. The train stage reads this CLASS attribute, so the default
    crop size 128 is what it loads: ``net.crop_size`` in params must be 128 for the pipeline (the
    instance attribute is set from ``net.crop_size``; for other sizes build the DataModule with
    ``instance.data_keys``)."""

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net_cfg = SyncNetConfig.from_dict(net or {})
        self.optim_cfg = SyncNetTrainConfig(**(optim or {}))
        self.frames_key = f"frames_{self.net_cfg.crop_size}"
        self.data_keys = ("lmk", self.frames_key, "mel")
        self.net = SyncNet(self.net_cfg)
        self.val_acc = MulticlassAccuracy(num_classes=2, average="macro")
        self.test_acc = MulticlassAccuracy(num_classes=2, average="macro")

    def forward(self, faces: Tensor, mels: Tensor) -> Tensor:
        """Sync probability ``(B,)`` in [0, 1] of face windows ``(B, 15, S/2, S)`` and mel windows
        ``(B, 1, 80, 16)``."""
        v, s = self.net(faces, mels)
        return self.net.probability(v, s)

    def _starts(self, batch_size: int, t: int, train: bool) -> Tensor:
        k, last = self.optim_cfg.pairs_per_window, t - SYNC_FRAMES
        if last < 0:
            raise ValueError(f"windows of {t} frames are shorter than the {SYNC_FRAMES}-frame sync window")
        if train:
            return torch.randint(0, last + 1, (batch_size, k), device=self.device)
        starts = torch.linspace(0, last, k, device=self.device).round().long()
        return starts.expand(batch_size, k)

    def pairs(self, batch: dict, train: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Embedding pairs of one batch.

        Returns:
            ``prob (BK, BK)`` sync probabilities of face window i with mel window j,
            ``labels (BK, BK)`` float {0, 1}, ``weight (BK, BK)`` float (0 for ignored pairs; the
            positives and the negatives each sum to 0.5).
        """
        frames, mel = batch[self.frames_key], batch["mel"]
        b, t = frames.shape[:2]
        starts = self._starts(b, t, train)  # (B, K)
        k = starts.shape[1]
        rows = torch.arange(b, device=self.device).repeat_interleave(k)
        flat = starts.reshape(-1)
        faces = face_windows(frames[rows], flat)
        mels = mel_windows(mel[rows], flat)
        v, s = self.net(faces, mels)
        prob = sync_probability(v[:, None], s[None], self.net_cfg.prob_mode)  # (BK, BK)

        ids, offs = _clip_ids_and_offsets(batch.get("key"), b)
        uniq = {c: i for i, c in enumerate(dict.fromkeys(ids))}
        clip = torch.tensor([uniq[c] for c in ids], device=self.device)[rows]
        absolute = offs.to(self.device)[rows] + flat
        same = clip[:, None] == clip[None]
        shift = (absolute[:, None] - absolute[None]).abs()
        pos = same & (shift == 0)
        neg = ~same | (shift >= self.optim_cfg.min_negative_shift)
        labels = pos.float()
        weight = pos.float() * (0.5 / pos.sum().clamp_min(1)) + neg.float() * (0.5 / neg.sum().clamp_min(1))
        return prob, labels, weight

    def model_step(self, batch: dict, train: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Balanced BCE (eq. 5 with 0/1 labels). Returns ``(loss, prob, labels, weight)``."""
        prob, labels, weight = self.pairs(batch, train)
        p = prob.clamp(1e-7, 1 - 1e-7)
        bce = torch.nn.functional.binary_cross_entropy(p, labels, reduction="none")
        loss = (bce * weight).sum() / weight.sum().clamp_min(1e-12)
        return loss, prob, labels, weight

    def _log_pair_stats(self, stage: str, loss: Tensor, prob: Tensor, labels: Tensor, weight: Tensor,
                        bs: int) -> None:
        pos, neg = (labels > 0) & (weight > 0), (labels == 0) & (weight > 0)
        self.log_dict({f"{stage}/loss": loss, f"{stage}/p_pos": prob[pos].mean(), f"{stage}/p_neg": prob[neg].mean()},
                      on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, prob, labels, weight = self.model_step(batch, train=True)
        self._log_pair_stats("train", loss, prob.detach(), labels, weight, len(batch["key"]))
        return loss

    def _eval_step(self, batch: dict, stage: str, acc: MulticlassAccuracy) -> None:
        loss, prob, labels, weight = self.model_step(batch, train=False)
        self._log_pair_stats(stage, loss, prob, labels, weight, len(batch["key"]))
        keep = weight > 0
        acc.update((prob[keep] > 0.5).long(), labels[keep].long())
        self.log(f"{stage}/acc", acc, on_epoch=True, batch_size=len(batch["key"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)

    def resolved_config(self) -> dict:
        """The full network and optimisation config (for MLflow and ``models/<method>/config.json``)."""
        return {"net": self.net_cfg.to_dict(), "optim": asdict(self.optim_cfg), "data_keys": list(self.data_keys)}

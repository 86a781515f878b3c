"""Lightning glue for the video emotion classifier (paper 000 §2.1 emotion discriminator; also our
own EmoAcc evaluator, see ``eval_metrics.emotion``).

The network lives in ``lightning_modules.networks.emotion`` (plain ``nn.Module``). Training is
plain cross-entropy (paper 000 eq. 3) on windows ``{frames_<S> (B, T, S, S, 3) uint8,
emotion (B,) int64}``; logs ``train/total``, ``val/loss`` and multiclass accuracy per split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.networks.emotion import EmotionClassifier, EmotionClassifierConfig
from primitives.checksum import checked_sha256, file_sha256


@dataclass
class EmotionTrainConfig:
    """Optimisation parameters (``train.methods.emotion_classifier.optim``).

    Attributes:
        lr: Adam learning rate, > 0 (paper 000 does not state it; 2e-4 is ours).
        weight_decay: Adam weight decay, >= 0.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        frames_key: batch key of the frames (``frames_<S>``); S must be one of
            ``preprocess.crop_sizes`` in params.yaml and in the class's ``data_keys``. Frames are
            resized to ``net.image_size`` (64) inside the network anyway.
    """

    lr: float = 2e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    frames_key: str = "frames_128"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"train.methods.emotion_classifier.optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.frames_key.startswith("frames_"):
            raise ValueError(f"frames_key must look like 'frames_<S>', got {self.frames_key!r}")


class EmotionClassifierModule(L.LightningModule):
    """Trains :class:`EmotionClassifier` with cross-entropy; logs top-1 accuracy (micro, fraction
    in [0, 1]) as ``{train,val,test}/acc``.

    ``data_keys``: ``("lmk", optim.frames_key)`` -- ``lmk`` because the DataModule cuts windows
    from it; the crop size must be one of ``preprocess.crop_sizes`` (params.yaml: [256, 128]).
    """

    def __init__(self, net: dict | None = None, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net_cfg = EmotionClassifierConfig.from_dict(dict(net or {}))
        self.optim_cfg = EmotionTrainConfig(**(optim or {}))
        self.net = EmotionClassifier(self.net_cfg)
        self.data_keys = ("lmk", self.optim_cfg.frames_key)  # arrays the DataModule loads
        n = self.net_cfg.n_emotions
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=n, average="micro")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, S, S, 3) uint8 -> logits (B, n_emotions)."""
        return self.net(frames)

    def model_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (B, n_emotions), cross-entropy loss scalar).

        Raises:
            KeyError: the batch lacks ``optim.frames_key`` (crop size not loaded).
        """
        key = self.optim_cfg.frames_key
        if key not in batch:
            raise KeyError(f"batch has no {key!r} (has {sorted(batch)}); data_keys / preprocess.crop_sizes mismatch")
        logits = self.net(batch[key])
        loss = F.cross_entropy(logits, batch["emotion"], label_smoothing=self.optim_cfg.label_smoothing)
        return logits, loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, loss = self.model_step(batch)
        bs = len(batch["emotion"])
        self.train_acc(logits, batch["emotion"])
        self.log("train/total", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, loss = self.model_step(batch)
        bs = len(batch["emotion"])
        self.val_acc(logits, batch["emotion"])
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=bs)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits, loss = self.model_step(batch)
        bs = len(batch["emotion"])
        self.test_acc(logits, batch["emotion"])
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("test/acc", self.test_acc, on_epoch=True, batch_size=bs)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)

    def resolved_config(self) -> dict:
        """The full network and optimisation config (for MLflow and ``models/<method>/config.json``)."""
        net = asdict(self.net_cfg)
        net["widths"] = list(net["widths"])
        return {"net": net, "optim": asdict(self.optim_cfg), "data_keys": list(self.data_keys)}


def checkpoint_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (for naming the evaluator).

    Raises:
        FileNotFoundError: missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train it: dvc repro, method emotion_classifier)")
    return file_sha256(path)


def load_emotion_classifier(checkpoint: str | Path, trained_on: str = "crema_d train split",
                            device: torch.device | str = "cpu") -> tuple[Callable[[Tensor], Tensor], str]:
    """Load an ``EmotionClassifierModule`` Lightning checkpoint for evaluation, its network on
    ``device`` (the returned callable takes windows on any device).

    Returns:
        (``predict_proba`` of the network in eval mode, evaluator string
        ``"own EmotionClassifier trained on <trained_on> (checkpoint sha256 <hex>)"``).

    Raises:
        FileNotFoundError: missing checkpoint.
    """
    digest = checkpoint_sha256(checkpoint)
    name = f"own EmotionClassifier trained on {trained_on} (checkpoint sha256 {digest})"
    return _checkpoint_classifier(checkpoint, device), name


def _checkpoint_classifier(checkpoint: str | Path, device: torch.device | str) -> Callable[[Tensor], Tensor]:
    """``predict_proba`` of the network in an ``EmotionClassifierModule`` checkpoint (eval mode, on
    ``device``; inputs are moved there)."""
    net = EmotionClassifierModule.load_from_checkpoint(str(checkpoint), map_location=device).net.eval()

    def predict_proba(windows: Tensor) -> Tensor:
        return net.predict_proba(windows.to(device))

    return predict_proba


def load_external_emotion_classifier(path: str | Path, sha256: str | None = None,
                                     device: torch.device | str = "cpu") -> tuple[Callable[[Tensor], Tensor], str]:
    """Load an emotion classifier given by the user instead of the one trained by ``dvc repro``.

    Two formats, told apart by the suffix:

    * ``.ckpt``: an ``EmotionClassifierModule`` Lightning checkpoint trained elsewhere (e.g. on
      MEAD for a cross-dataset EmoAcc);
    * anything else: a TorchScript module (``torch.jit.save``) mapping windows ``(W, T, S, S, 3)``
      uint8 RGB aligned crops to ``(W, 8)`` float logits over ``primitives.vocab.EMOTIONS`` (neutral,
      angry, contempt, disgusted, fear, happy, sad, surprised); a softmax is applied here.

    Args:
        path: local file (nothing is downloaded).
        sha256: expected hex digest; checked when given.

    Returns:
        (callable windows -> ``(W, 8)`` probabilities, evaluator string
        ``"external emotion classifier <file name> (sha256 <hex>)"``).

    Raises:
        FileNotFoundError: missing file (the message names the params key).
        ValueError: checksum mismatch, or the file is neither a checkpoint nor TorchScript.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"external emotion classifier not found at {path}: set evaluate.emotion_weights "
                                "to an EmotionClassifierModule .ckpt or a TorchScript file, or null to use the "
                                "classifier trained by `dvc repro`")
    digest = checked_sha256(path, sha256)
    name = f"external emotion classifier {path.name} (sha256 {digest})"
    if path.suffix == ".ckpt":
        return _checkpoint_classifier(path, device), name
    try:
        scripted = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        raise ValueError(f"{path} is neither a Lightning .ckpt nor a TorchScript file: {err}") from err

    def predict_proba(windows: Tensor) -> Tensor:
        with torch.no_grad():
            return scripted(windows.to(device)).float().softmax(dim=-1)

    return predict_proba, name

"""Emotion accuracy (EmoAcc) of generated clips, judged by an emotion classifier.

The papers report emotion accuracy in **percent** of clips whose predicted emotion matches the
intended (target) emotion; :class:`EmotionAccuracy` returns percent in [0, 100] likewise.

Protocol (our choice, stated with every number):

* a clip (N frames of aligned face crops) is cut into consecutive non-overlapping windows of
  ``window`` frames (the tail shorter than a window is dropped, as in evaluation windows of
  ``datamodules.talking_face``; a clip shorter than one window is classified as one window);
* the classifier gives class probabilities per window;
* the clip's prediction is, with ``aggregate="mean_prob"`` (default), the argmax of the windows'
  **mean probability**; with ``aggregate="vote"``, the **majority vote** of the windows' argmax
  (ties broken by the mean probability);
* EmoAcc = 100 * (clips predicted right) / (clips). Each clip counts once whatever its length.

The state is two integer sums (``correct``, ``total``, ``dist_reduce_fx="sum"``), so results do
not depend on how clips are split into batches or DDP ranks. Every ``update`` must receive
*whole* clips (windows of one clip are never split across calls).

The classifier is named in :attr:`EmotionAccuracy.evaluator`, e.g. ``"own EmotionClassifier
trained on crema_d train split (checkpoint sha256 ...)"`` (see :func:`load_emotion_classifier`);
an external classifier replaces it through :func:`load_external_emotion_classifier` (params
``evaluate.emotion_weights``). The FER2013 classifier of ``../shared/WEIGHTS.md`` is a window
classifier for the same metric (:class:`eval_metrics.emotion_fer.FerEmotionClassifier`, reported
beside it as ``emo_acc_fer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from eval_metrics.weights import checked_sha256, file_sha256

__all__ = ["EmotionAccuracy", "aggregate_windows", "checkpoint_sha256", "load_emotion_classifier",
           "load_external_emotion_classifier", "split_windows"]


def split_windows(clip: Tensor, window: int) -> Tensor:
    """Clip (N, ...) -> windows (W, window, ...), consecutive and non-overlapping; the tail is
    dropped; a clip with 0 < N < window gives one window of N frames.

    Raises:
        ValueError: empty clip or window < 1.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = clip.shape[0]
    if n == 0:
        raise ValueError("empty clip")
    if n < window:
        return clip[None]
    w = n // window
    return clip[: w * window].reshape(w, window, *clip.shape[1:])


def aggregate_windows(window_probs: Tensor, aggregate: str = "mean_prob") -> Tensor:
    """One clip's window probabilities (W, C) -> predicted class id (0-d int64 tensor).

    ``"mean_prob"``: argmax of the mean probability; ``"vote"``: most frequent window argmax, ties
    broken by the mean probability.

    Raises:
        ValueError: unknown ``aggregate``.
    """
    mean = window_probs.double().mean(dim=0)
    if aggregate == "mean_prob":
        return mean.argmax()
    if aggregate == "vote":
        votes = torch.bincount(window_probs.argmax(dim=1), minlength=window_probs.shape[1]).double()
        return (votes + mean / 2).argmax()  # mean/2 < 1: only breaks ties
    raise ValueError(f"aggregate must be 'mean_prob' or 'vote', got {aggregate!r}")


class EmotionAccuracy(Metric):
    """EmoAcc in percent [0, 100] over clips (see the module docstring for the protocol).

    Args:
        classifier: callable windows (W, T, S, S, 3) uint8 RGB -> (W, C) class probabilities (e.g.
            ``EmotionClassifier.predict_proba`` of a model in ``eval()`` mode), or logits with
            ``outputs="logits"``. ``None`` allows only :meth:`update_probs`.
        evaluator: human-readable name of the classifier (which model, trained on what, checkpoint
            hash), reported next to the number.
        window: frames per window (should match the classifier's training window, e.g. 25).
        aggregate: ``"mean_prob"`` (default) or ``"vote"``.
        outputs: ``"proba"`` or ``"logits"`` (softmax applied).
        max_windows: windows per classifier call (memory bound).

    ``compute()``: float64 scalar in [0, 100]; NaN before any update.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, classifier: Callable[[Tensor], Tensor] | None = None, evaluator: str = "unnamed classifier",
                 window: int = 25, aggregate: str = "mean_prob", outputs: str = "proba", max_windows: int = 64,
                 **kwargs):
        super().__init__(**kwargs)
        if aggregate not in ("mean_prob", "vote"):
            raise ValueError(f"aggregate must be 'mean_prob' or 'vote', got {aggregate!r}")
        if outputs not in ("proba", "logits"):
            raise ValueError(f"outputs must be 'proba' or 'logits', got {outputs!r}")
        if window < 1 or max_windows < 1:
            raise ValueError("window and max_windows must be >= 1")
        self.classifier = classifier
        self.evaluator = evaluator
        self.window, self.aggregate, self.outputs, self.max_windows = window, aggregate, outputs, max_windows
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _probs(self, windows: Tensor) -> Tensor:
        chunks = []
        with torch.no_grad():
            for i in range(0, len(windows), self.max_windows):
                out = torch.as_tensor(self.classifier(windows[i: i + self.max_windows])).float()
                chunks.append(out.softmax(dim=-1) if self.outputs == "logits" else out)
        return torch.cat(chunks)

    def update_probs(self, window_probs: Sequence[Tensor] | Tensor, target: Tensor) -> None:
        """Accumulate from precomputed window probabilities: one (W_i, C) tensor per clip (or a
        (B, W, C) tensor) and target (B,) int64 class ids."""
        target = torch.as_tensor(target).reshape(-1)
        if len(window_probs) != len(target):
            raise ValueError(f"{len(window_probs)} clips but {len(target)} targets")
        preds = torch.stack([aggregate_windows(torch.as_tensor(p), self.aggregate) for p in window_probs])
        self._computed = None  # also reached outside the wrapped ``update``: drop the cached result
        self._update_count += 1
        self.correct += (preds.cpu() == target.cpu()).sum().to(self.correct.device)
        self.total += len(target)

    def update(self, clips: Sequence[Tensor] | Tensor, target: Tensor) -> None:
        """Classify whole clips and accumulate.

        Args:
            clips: (B, N, S, S, 3) uint8 RGB, or a list of B tensors (N_i, S, S, 3) (variable length).
            target: (B,) int64 intended emotion ids (``pipeline.vocab.EMOTIONS``).

        Raises:
            RuntimeError: built without a classifier.
            ValueError: clip / target count mismatch or empty clip.
        """
        if self.classifier is None:
            raise RuntimeError("EmotionAccuracy was built without a classifier; use update_probs")
        windows = [split_windows(torch.as_tensor(c), self.window) for c in clips]
        counts = [len(w) for w in windows]
        if len({w.shape[1] for w in windows}) == 1:
            probs = self._probs(torch.cat(windows)).split(counts)
        else:  # clips shorter than a window: different T, classify per clip
            probs = [self._probs(w) for w in windows]
        self.update_probs(probs, target)

    def compute(self) -> Tensor:
        """EmoAcc in percent (float64 scalar, [0, 100]); NaN when no clip was seen."""
        if self.total == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return 100.0 * self.correct.double() / self.total.double()


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
                            map_location: str = "cpu") -> tuple[Callable[[Tensor], Tensor], str]:
    """Load an ``EmotionClassifierModule`` Lightning checkpoint for evaluation.

    Returns:
        (``predict_proba`` of the network in eval mode, evaluator string
        ``"own EmotionClassifier trained on <trained_on> (checkpoint sha256 <hex>)"``).

    Raises:
        FileNotFoundError: missing checkpoint.
    """
    digest = checkpoint_sha256(checkpoint)
    name = f"own EmotionClassifier trained on {trained_on} (checkpoint sha256 {digest})"
    return _checkpoint_classifier(checkpoint, map_location), name


def _checkpoint_classifier(checkpoint: str | Path, map_location: str) -> Callable[[Tensor], Tensor]:
    """``predict_proba`` of the network in an ``EmotionClassifierModule`` checkpoint (eval mode)."""
    from lightning_modules.emotion_classifier import EmotionClassifierModule

    module = EmotionClassifierModule.load_from_checkpoint(str(checkpoint), map_location=map_location)
    return module.net.eval().predict_proba


def load_external_emotion_classifier(path: str | Path, sha256: str | None = None,
                                     map_location: str = "cpu") -> tuple[Callable[[Tensor], Tensor], str]:
    """Load an emotion classifier given by the user instead of the one trained by ``dvc repro``.

    Two formats, told apart by the suffix:

    * ``.ckpt``: an ``EmotionClassifierModule`` Lightning checkpoint trained elsewhere (e.g. on
      MEAD for a cross-dataset EmoAcc);
    * anything else: a TorchScript module (``torch.jit.save``) mapping windows ``(W, T, S, S, 3)``
      uint8 RGB aligned crops to ``(W, 8)`` float logits over ``pipeline.vocab.EMOTIONS`` (neutral,
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
        return _checkpoint_classifier(path, map_location), name
    try:
        scripted = torch.jit.load(str(path), map_location=map_location).eval()
    except RuntimeError as err:
        raise ValueError(f"{path} is neither a Lightning .ckpt nor a TorchScript file: {err}") from err

    def predict_proba(windows: Tensor) -> Tensor:
        with torch.no_grad():
            return scripted(windows).float().softmax(dim=-1)

    return predict_proba, name

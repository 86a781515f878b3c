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
trained on crema_d train split (checkpoint sha256 ...)"`` (see
:func:`lightning_modules.emotion_classifier.load_emotion_classifier`); an external classifier replaces it
through :func:`lightning_modules.emotion_classifier.load_external_emotion_classifier` (params
``evaluate.emotion_weights``). The FER2013 classifier of ``../shared/WEIGHTS.md`` is a window
classifier for the same metric (:class:`eval_metrics.emotion_fer.FerEmotionClassifier`, reported
beside it as ``emo_acc_fer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["EmotionAccuracy", "aggregate_windows", "split_windows"]


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
        (B, W, C) tensor) and target (B,) int64 class ids (same as ``update(target=...,
        window_probs=...)``)."""
        self.update(target=target, window_probs=window_probs)

    def update(self, clips: Sequence[Tensor] | Tensor | None = None, target: Tensor | None = None,
               window_probs: Sequence[Tensor] | Tensor | None = None) -> None:
        """Classify whole clips (or take their window probabilities) and accumulate.

        Args:
            clips: (B, N, S, S, 3) uint8 RGB, or a list of B tensors (N_i, S, S, 3) (variable length).
            target: (B,) int64 intended emotion ids (``primitives.vocab.EMOTIONS``).
            window_probs: instead of ``clips``: one (W_i, C) probability tensor per clip.

        Raises:
            RuntimeError: clips given to a metric built without a classifier.
            ValueError: neither or both of clips / window_probs, clip / target count mismatch or
                empty clip.
        """
        if (clips is None) == (window_probs is None) or target is None:
            raise ValueError("EmotionAccuracy.update needs target and exactly one of clips / window_probs")
        target = torch.as_tensor(target).reshape(-1)
        n = len(clips) if window_probs is None else len(window_probs)
        if n != len(target):
            raise ValueError(f"{n} clips but {len(target)} targets")
        preds = self.predict(clips) if window_probs is None else self._aggregate(window_probs)
        self.correct += (preds == target.cpu()).sum().to(self.correct.device)
        self.total += len(target)

    def predict(self, clips: Sequence[Tensor] | Tensor) -> Tensor:
        """The classifier's emotion of each whole clip (same windows and aggregation as ``update``):
        clips as in :meth:`update` -> (B,) int64 class ids on the CPU (no state change).

        Raises:
            RuntimeError: built without a classifier. ValueError: an empty clip.
        """
        if self.classifier is None:
            raise RuntimeError("EmotionAccuracy was built without a classifier; use update_probs")
        windows = [split_windows(torch.as_tensor(c), self.window) for c in clips]
        counts = [len(w) for w in windows]
        if len({w.shape[1] for w in windows}) == 1:
            window_probs = self._probs(torch.cat(windows)).split(counts)
        else:  # clips shorter than a window: different T, classify per clip
            window_probs = [self._probs(w) for w in windows]
        return self._aggregate(window_probs)

    def _aggregate(self, window_probs: Sequence[Tensor] | Tensor) -> Tensor:
        return torch.stack([aggregate_windows(torch.as_tensor(p), self.aggregate) for p in window_probs]).cpu()

    def compute(self) -> Tensor:
        """EmoAcc in percent (float64 scalar, [0, 100]); NaN when no clip was seen."""
        if self.total == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return 100.0 * self.correct.double() / self.total.double()

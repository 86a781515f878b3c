"""The emotion-control protocol: does a method render the emotion it is asked for?

Rendering every test clip from its own first frame cannot tell control from copying: that frame
already shows the target emotion, so repeating it scores EmoAcc 100. Here every chosen test clip is
rendered from its speaker's NEUTRAL reference (:func:`pipeline.protocol.clips.neutral_references`,
papers 002 / 004's I_n) with its own audio, once per emotion of the dataset (and per intensity
level of ``levels`` for methods that take one), and the evaluator's emotion classifier judges each
rendering against the emotion it was asked for (paper 000 averages EmoAcc over six generated
emotions per input the same way).

Keys (percent, [0, 100]): ``emo_acc_all`` over every rendering (a method that ignores the emotion
scores exactly 100 / number of emotions: one constant prediction per clip hits one target),
``emo_acc_all_<emotion>`` per target, and ``emo_acc``: the papers' single-label number, the
renderings of each clip's own emotion from the neutral reference. The confusion matrix (targets x
predictions) is drawn by :meth:`EmotionControl.save_confusion`; the first clip's renderings are
kept (``grid_rows``) for the emotion grid, so the grid costs no rendering of its own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID, EMOTIONS
from pipeline.protocol.grids import row_label

DATASET_EMOTIONS: dict[str, tuple[str, ...]] = {"crema_d": tuple(CREMA_D_EMOTIONS.values()), "mead": EMOTIONS}
"""The emotions each dataset has (other datasets: the shared vocabulary's eight)."""


@dataclass
class EmotionControlSettings:
    """``evaluate.emotion_control``.

    Attributes:
        max_clips: test clips rendered in every emotion (the first ones the clip loop meets among
            those with a neutral reference; per process under torchrun; None: all; 0: off). Cost:
            max_clips x emotions x len(levels) renderings.
        max_frames: frames rendered per rendering (None: the whole clip; >= the classifier's window).
        levels: intensity levels rendered for methods whose ``generate`` takes an ``intensity``.
    """

    max_clips: int | None = 2
    max_frames: int | None = 25
    levels: list[int] = field(default_factory=lambda: [3])

    def __post_init__(self) -> None:
        if self.max_clips is not None and self.max_clips < 0:
            raise ValueError(f"evaluate.emotion_control.max_clips: must be >= 0 or null, got {self.max_clips}")
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f"evaluate.emotion_control.max_frames: must be >= 2 or null, got {self.max_frames}")
        if not self.levels or not all(level in (1, 2, 3) for level in self.levels):
            raise ValueError(f"evaluate.emotion_control.levels: a non-empty list of 1, 2, 3, got {self.levels}")


class EmotionControl:
    """Renders clips in every emotion and scores them with ``classifier`` (an ``EmotionAccuracy``
    whose ``predict`` gives each clip's class).

    Args:
        classifier: the protocol's emotion evaluator (``Evaluators``' EmotionAccuracy).
        dataset: picks the emotions (:data:`DATASET_EMOTIONS`).
        settings: :class:`EmotionControlSettings`.
        references: speaker -> neutral reference (``neutral_references``).
    """

    def __init__(self, classifier, dataset: str, settings: EmotionControlSettings, references: dict[str, dict]):
        self.classifier, self.settings, self.references = classifier, settings, references
        self.names = DATASET_EMOTIONS.get(dataset, EMOTIONS)
        self.targets = [EMOTION_TO_ID[name] for name in self.names]
        self.confusion = np.zeros((len(self.names), len(EMOTIONS)), dtype=np.int64)  # target x prediction
        self.own = np.zeros(2, dtype=np.int64)  # (right, total) on each clip's own emotion
        self.clips, self.no_reference = 0, 0
        self.grid_rows: list[tuple[str, np.ndarray]] = []  # the first clip's (label, (T, S, S, 3) uint8) renderings

    def wants(self, clip: dict) -> bool:
        """Whether ``clip`` is rendered (a speaker without a neutral clip is counted in ``no_reference``)."""
        if str(clip["meta"]["speaker"]) not in self.references:
            self.no_reference += 1
            return False
        return self.settings.max_clips is None or self.clips < self.settings.max_clips

    @torch.no_grad()
    def update(self, generator, clip: dict, frames_key: str, inputs: dict[str, torch.Tensor]) -> None:
        """Render ``clip`` (its audio ``mel`` and ``inputs``, e.g. phones: (1, ...) tensors) from its
        speaker's neutral reference in every emotion (x levels) and score each rendering. A generator
        with ``takes_emotion = False`` renders once per level: that rendering stands for every target."""
        ref = self.references[str(clip["meta"]["speaker"])]
        n = len(clip[frames_key]) if self.settings.max_frames is None else min(len(clip[frames_key]),
                                                                              self.settings.max_frames)
        takes_level = "intensity" in inspect.signature(generator.generate).parameters
        per_call = len(self.targets) if getattr(generator, "batch_clips", False) else 1
        rendered = self.targets if getattr(generator, "takes_emotion", True) else self.targets[:1]
        own = EMOTION_TO_ID.get(clip["meta"]["emotion"])
        for level in self.settings.levels if takes_level else (None,):
            predicted = []
            for i0 in range(0, len(rendered), per_call):
                emotions = torch.tensor(rendered[i0:i0 + per_call])
                b = len(emotions)
                extra = {} if level is None else {"intensity": torch.full((b,), level)}
                video = generator.generate(torch.from_numpy(ref["frame"])[None].expand(b, -1, -1, -1),
                                           torch.from_numpy(clip["mel"])[None].expand(b, -1, -1), emotions, n,
                                           ref_lmk=torch.from_numpy(ref["lmk"])[None].expand(b, -1, -1),
                                           **extra, **{k: v.expand(b, *v.shape[1:]) for k, v in inputs.items()}).cpu()
                predicted += self.classifier.predict(list(video[:, :n])).tolist()
                if self.clips == 0:
                    self.grid_rows += [(row_label(self.names[self.targets.index(t)], level), v.numpy())
                                       for t, v in zip(emotions.tolist(), video[:, :n])]
            predicted *= len(self.targets) // len(rendered)
            for target, pred in zip(self.targets, predicted):
                self.confusion[self.targets.index(target), pred] += 1
                if target == own:
                    self.own += (int(pred == target), 1)
        self.clips += 1

    def counts(self) -> dict[str, int]:
        """Plain counters for summing over ranks (``EvalRanks.sum_counts``)."""
        flat = {f"confusion.{i}.{j}": int(v) for (i, j), v in np.ndenumerate(self.confusion)}
        return {**flat, "own_right": int(self.own[0]), "own_total": int(self.own[1]), "clips": self.clips,
                "no_reference": self.no_reference}

    def load_counts(self, counts: dict[str, int]) -> None:
        """Replace the counters by the ranks' sums (the output of ``counts`` summed)."""
        for (i, j), _ in np.ndenumerate(self.confusion):
            self.confusion[i, j] = counts[f"confusion.{i}.{j}"]
        self.own[:] = (counts["own_right"], counts["own_total"])
        self.clips, self.no_reference = counts["clips"], counts["no_reference"]

    def compute(self) -> dict[str, float]:
        """``emo_acc_all``, ``emo_acc_all_<emotion>``, ``emo_acc`` in percent ({} before any rendering)."""
        total = self.confusion.sum()
        if total == 0:
            return {}
        hits = np.array([self.confusion[i, t] for i, t in enumerate(self.targets)])
        values = {"emo_acc_all": 100.0 * hits.sum() / total}
        for i, name in enumerate(self.names):
            if self.confusion[i].sum():
                values[f"emo_acc_all_{name}"] = 100.0 * hits[i] / self.confusion[i].sum()
        if self.own[1]:
            values["emo_acc"] = 100.0 * self.own[0] / self.own[1]
        return {k: float(v) for k, v in values.items()}

    def describe(self, evaluator: str) -> str:
        """The protocol line for ``provenance.json``."""
        return (f"{self.clips} test clips from their speaker's neutral reference x {len(self.names)} emotions "
                f"({', '.join(self.names)}) x levels {self.settings.levels} (methods with an intensity), "
                f"{self.settings.max_frames or 'all'} frames each, judged by {evaluator}; "
                f"{self.no_reference} clips skipped: their speaker has no neutral test clip")

    def save_confusion(self, path: Path, cell: int = 44) -> Path:
        """The confusion matrix as a PNG: rows = requested emotions, columns = predicted, counts in cells."""
        import cv2

        rows, cols = self.confusion.shape
        left, top = 90, 70
        image = np.full((top + rows * cell, left + cols * cell, 3), 255, dtype=np.uint8)
        peak = max(int(self.confusion.max()), 1)
        for i in range(rows):
            cv2.putText(image, self.names[i], (4, top + i * cell + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
            for j in range(cols):
                value = int(self.confusion[i, j])
                shade = 255 - int(200 * value / peak)
                x, y = left + j * cell, top + i * cell
                cv2.rectangle(image, (x, y), (x + cell - 2, y + cell - 2), (255, shade, shade), -1)
                cv2.putText(image, str(value), (x + 8, y + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                            cv2.LINE_AA)
        for j, name in enumerate(EMOTIONS):
            cv2.putText(image, name[:5], (left + j * cell + 2, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                        cv2.LINE_AA)
        cv2.putText(image, "requested (rows) x predicted (columns)", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.imwrite(str(path), image[..., ::-1])
        return path

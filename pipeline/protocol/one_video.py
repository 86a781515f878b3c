"""Paper 004 §3.2 in the protocol: each test identity's generator fine-tuned on ONE of its videos.

The paper fine-tunes EmoTalker "on only one video for unfamiliar identities" (the CREMA-D row of
Table 1) and says no more. Our reading, leave-one-out so that no clip is rendered by weights that
saw its own frames: a test clip is rendered after fine-tuning on its speaker's first test clip by
id, or, for that first clip, on the speaker's second. A speaker with a single test clip is
rendered without fine-tuning and counted (``skipped``). Each fine-tuning starts from the trained
weights; the fine-tuned weights are kept per video on the CPU (at most two per speaker) and the
trained weights are restored by :meth:`OneVideoFineTuning.restore`.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import torch

from pipeline.protocol.clips import load_clips, split_metas


def split_speakers(shard_dir: Path, split: str = "test") -> dict[str, str]:
    """Clip id -> speaker of every clip in ``<split>-*.tar`` (metadata only)."""
    return {key: str(meta["speaker"]) for key, meta in split_metas(shard_dir, split).items()}


def plan_videos(speakers: dict[str, str]) -> dict[str, str | None]:
    """Clip id -> the clip id whose video fine-tunes the generator for it (None: its speaker has no
    other clip). Leave-one-out: the speaker's first clip by id, for that clip the second."""
    clips = defaultdict(list)
    for key, speaker in speakers.items():
        clips[speaker].append(key)
    plan = {}
    for keys in clips.values():
        keys.sort()
        for key in keys:
            others = [k for k in keys[:2] if k != key]
            plan[key] = others[0] if others else None
    return plan


class OneVideoFineTuning:
    """Switches a generator with ``fine_tune`` (e.g. ``EmoTalkerModule``) to the weights fine-tuned
    for each clip it renders.

    Args:
        generator: an ``nn.Module`` with ``fine_tune(frames, lmk, phones, emotion, intensity, cfg)``
            that changes its weights in place.
        cfg: the method's fine-tuning config (``evaluate.fine_tune.<method>``, e.g. ``FineTuneConfig``).
        plan: :func:`plan_videos` of the split.
        videos: clip id -> clip dict (``frames_key``, ``lmk``, ``phones``, ``meta``) of every video the
            plan names (:func:`load_videos`).
        frames_key: ``frames_<S>`` at the generator's crop.
    """

    def __init__(self, generator: torch.nn.Module, cfg, plan: dict[str, str | None], videos: dict[str, dict],
                 frames_key: str):
        self.generator, self.cfg, self.plan, self.videos, self.frames_key = generator, cfg, plan, videos, frames_key
        self.trained = copy.deepcopy(generator.state_dict())  # on the generator's device, as loaded
        self.tuned: dict[str, dict] = {}  # video id -> fine-tuned state dict (CPU)
        self.current: str | None = None
        self.skipped = 0  # clips rendered with the trained weights: their speaker has one test clip
        self.final_loss: dict[str, float] = {}

    def prepare(self, key: str) -> None:
        """Load the weights for clip ``key`` (fine-tuning on its planned video the first time)."""
        video = self.plan.get(key)
        if video is None:
            self.skipped += 1
            self.restore()
            return
        if video == self.current:
            return
        if video not in self.tuned:
            self.generator.load_state_dict(self.trained)
            clip = self.videos[video]
            losses = self.generator.fine_tune(torch.from_numpy(clip[self.frames_key]), torch.from_numpy(clip["lmk"]),
                                              torch.from_numpy(clip["phones"]), int(clip["meta"]["emotion_id"]),
                                              int(clip["meta"]["intensity"]), self.cfg)
            self.generator.eval()
            self.final_loss[video] = losses[-1]
            self.tuned[video] = {k: v.detach().cpu().clone() for k, v in self.generator.state_dict().items()}
        else:
            self.generator.load_state_dict(self.tuned[video])
        self.current = video

    def restore(self) -> None:
        """Back to the trained weights (the grids and extras after the clip loop use them)."""
        if self.current is not None:
            self.generator.load_state_dict(self.trained)
            self.current = None

    def describe(self) -> str:
        """The protocol line for ``provenance.json``."""
        return (f"paper 004 §3.2: {self.cfg}, on the speaker's first test clip (its second for that clip); "
                f"{len(self.tuned)} videos, {self.skipped} clips without (single-clip speakers)")


def load_videos(shard_dir: Path, keys: set[str], frames_key: str, split: str = "test") -> dict[str, dict]:
    """The clips ``keys`` of ``split`` (``frames_key``, ``lmk``, ``phones``, ``meta``), read in one pass."""
    return load_clips(shard_dir, keys, (frames_key, "lmk", "phones"), split)

"""The ``evaluate`` section of params.yaml: its keys and types, checked before any evaluation work.

Each value is read where it is used (``get(params, "evaluate.<key>", ...)``); this dataclass only
names every key the evaluation stages know, so a typo or a wrong type fails first, naming the key
and the file (``evaluate.crop_sise: unknown key``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.params import ParamsError, get
from primitives.config import typed_config


@dataclass
class EvaluateSettings:
    """Keys of ``evaluate`` (see params.yaml's comments for each)."""

    landmark_methods: list[str] = field(default_factory=list)
    baseline_methods: list[str] = field(default_factory=list)
    video_methods: list[str] = field(default_factory=list)
    crop_size: int = 128
    device: str = "auto"
    clips_per_forward: int = 1
    n_videos: int = 2
    fid_weights: str | None = None
    fid_sha256: str | None = None
    syncnet_v2_weights: str | None = None
    syncnet_v2_sha256: str | None = None
    arcface_weights: str | None = None
    arcface_arch: str = "r50"
    arcface_sha256: str | None = None
    emotion_weights: str | None = None
    emotion_sha256: str | None = None
    fer_weights: str | None = None
    fer_sha256: str | None = None
    sampling: dict = field(default_factory=dict)
    fine_tune: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    emotion_control: dict = field(default_factory=dict)
    prompt_grid: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from eval_metrics.arcface import ARCHS

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"evaluate.device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.arcface_arch not in ARCHS:
            raise ValueError(f"evaluate.arcface_arch: must be one of {', '.join(ARCHS)}, got {self.arcface_arch!r}")
        for key, least in (("crop_size", 16), ("clips_per_forward", 1), ("n_videos", 0)):
            if getattr(self, key) < least:
                raise ValueError(f"evaluate.{key}: must be >= {least}, got {getattr(self, key)}")


def check_evaluate_section(params: dict) -> None:
    """Raises: ParamsError: ``evaluate`` is not a mapping, has an unknown key, a wrong type or a value
    out of range (named)."""
    try:
        typed_config(EvaluateSettings, get(params, "evaluate", dict, default={}), "evaluate")
    except ValueError as err:
        raise ParamsError(str(err)) from None

"""benchmarks/learning_check.py's texture-network check: it renders from the source the network is
trained from (sinha: the speaker's neutral frame, paper 002 §3.2) and sets the bar at copying it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import learning_check  # noqa: E402  (benchmarks/ is not a package)
from lightning_modules.sinha import NEUTRAL_FACE, SinhaModule  # noqa: E402

S = 64
NET = {"landmark": {"audio_hidden": 16, "dim": 16},
       "texture": {"crop_size": S, "encoder_widths": [8, 16, 16], "motion_widths": [16, 32, 32], "emotion_dim": 16,
                   "lmk_size": S}}


def _clip(key: str, speaker: str, emotion: str, level: int, openings: list[float]) -> dict:
    """Frames of one grey ``level`` with frame t's value ``level + t``; landmarks of a neutral face whose
    inner lower lip (points 65-67, 1-based) is lowered by ``openings[t]`` pixels."""
    face = torch.tensor(json.loads(NEUTRAL_FACE.read_text())["points"], dtype=torch.float32)
    face = (face - face.mean(0)) * 20 + S / 2
    lmk = face.repeat(len(openings), 1, 1)
    lmk[:, 64:67, 1] += torch.tensor(openings)[:, None]
    frames = np.stack([np.full((S, S, 3), level + t, np.uint8) for t in range(len(openings))])
    return {"key": key, "meta": {"speaker": speaker, "emotion": emotion, "emotion_id": 1, "lmk_crop_size": S},
            "frames_64": frames, "lmk": lmk.numpy()}


class _CopySource:
    """A texture network that returns its source image for every frame."""

    def render(self, reference, ref_lmk, lmk, emotion=None):
        return reference[:, None].expand(-1, lmk.shape[1], -1, -1, -1)


def test_sinha_renders_from_its_speakers_neutral_frame_against_copying_it():
    angry = _clip("A_ang", "A", "angry", 10, [4.0, 3.0, 2.0])
    neutral = _clip("A_neu", "A", "neutral", 200, [3.0, 1.0, 0.0, 2.0])  # frame 2: lips closed
    other = _clip("B_sad", "B", "sad", 50, [1.0, 0.5, 2.0])  # B has no neutral clip: its most closed frame
    clips = [angry, neutral, other]
    model = SinhaModule(net=NET, optim={"texture_source": "speaker_neutral"})
    sources = learning_check.training_sources(model, clips, "frames_64")
    assert [int(image[0, 0, 0]) for image, _, _ in sources] == [202, 202, 51]
    assert torch.equal(sources[0][1], torch.from_numpy(neutral["lmk"][2]))
    assert [own for _, _, own in sources] == [None, 2, 1]  # the source's index where it is a frame of the clip

    scores = learning_check.reconstruction_psnr(_CopySource(), [angry, neutral], "frames_64", sources[:2])
    # the angry clip's frames 0-2 (levels 10-12) and the neutral clip's but its source frame (200, 201, 203)
    expected = np.mean([20 * np.log10(255 / abs(202 - v)) for v in (10, 11, 12, 200, 201, 203)])
    assert abs(scores["copy_source"] - expected) < 1e-3 and abs(scores["render"] - expected) < 1e-3, scores
    frame0 = learning_check.reconstruction_psnr(_CopySource(), [angry], "frames_64")
    assert abs(frame0["copy_source"] - np.mean([20 * np.log10(255 / v) for v in (1, 2)])) < 1e-3


def test_other_training_sources_are_frame_0():
    model = SinhaModule(net=NET, optim={"texture_source": "clip_frame"})
    assert learning_check.training_sources(model, [_clip("A_ang", "A", "angry", 10, [1.0, 2.0])], "frames_64") is None


class _CopyReference:
    def generate(self, reference, mel, emotion, n_frames, ref_lmk=None):
        return reference[:, None].expand(-1, n_frames, -1, -1, -1)


def test_cvae_trained_from_speaker_neutral_references_is_scored_from_them():
    """cvae with optim.reference: speaker_neutral: the learning check scores from the speaker's neutral
    frame (its training reference), leaving out that frame where it belongs to the clip scored."""
    from lightning_modules.cvae import CVAEModule

    angry = _clip("A_ang", "A", "angry", 10, [4.0, 3.0])
    neutral = _clip("A_neu", "A", "neutral", 200, [3.0, 0.0, 2.0])  # frame 1: lips closed
    for clip in (angry, neutral):
        clip["mel"] = np.zeros((3 * 4, 80), np.float32)
    net = {"crop_size": S, "widths": (16, 32, 64), "stem_channels": 8, "latent_dim": 8, "audio_channels": (8, 16),
           "audio_dim": 8, "emotion_dim": 8, "cond_channels": 8}
    random = CVAEModule(net=net, optim={"reference": "random"})
    assert learning_check.training_sources(random, [angry, neutral], "frames_64") is None
    sources = learning_check.training_sources(CVAEModule(net=net, optim={"reference": "speaker_neutral"}),
                                              [angry, neutral], "frames_64")
    assert [int(image[0, 0, 0]) for image, _, _ in sources] == [201, 201] and [own for *_, own in sources] == [None, 1]

    class _Sync:  # LSE needs the evaluator network; this check is about PSNR
        def update(self, metrics, generated, mel):
            pass

    scored = learning_check.score(_CopyReference(), [angry, neutral], "frames_64", _Sync(), sources)
    expected = np.mean([20 * np.log10(255 / abs(201 - v)) for v in (10, 11, 200, 202)])
    assert abs(scored["psnr"] - expected) < 1e-3, scored

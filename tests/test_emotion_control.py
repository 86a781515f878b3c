"""The emotion-control protocol (pipeline/protocol/emotion_control.py), the neutral reference and the
clip filters (pipeline/protocol/settings.py), and the real_video row, on the six original CREMA-D
clips of actor 1001 (one per emotion, neutral included) and MEAD's M030 (no neutral clip).

A TorchScript classifier reads the emotion from the frames' mean value (value 20 k -> class k), so
a generator that paints the requested emotion's value renders every emotion perfectly, and one that
repeats its reference makes one constant prediction per clip: exactly one of the six targets."""

from __future__ import annotations

import json

import cv2
import pytest
import torch
from torch import nn

from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID


class _PixelCode(nn.Module):
    """windows (W, T, S, S, 3) uint8 -> logits of class round(mean / 20), clamped to 0..7."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        k = (windows.float().mean(dim=(1, 2, 3, 4)) / 20.0).round().clamp(0, 7).long()
        return nn.functional.one_hot(k, 8).float() * 10.0


class _Oracle:
    """Renders the requested emotion perfectly for _PixelCode (frames of value 20 x emotion)."""

    batch_clips = True

    def __init__(self):
        self.calls: list[list[bytes]] = []  # the references of each call

    def generate(self, reference, mel, emotion, n_frames, ref_lmk=None):
        self.calls.append([r.numpy().tobytes() for r in reference])
        value = (20 * emotion).to(torch.uint8)[:, None, None, None, None]
        return value.expand(-1, n_frames, *reference.shape[1:]).clone()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("classifier") / "pixel_code.pt"
    torch.jit.save(torch.jit.script(_PixelCode()), str(path))
    return str(path)


def _evaluate(work, method, generator, params, monkeypatch):
    import pipeline.evaluate_video as ev

    monkeypatch.chdir(work)
    monkeypatch.setattr(ev, "load_generator", lambda m, d: generator)
    out = work / "eval" / method / "crema_d"
    result = ev.evaluate_video(method, "crema_d", params, out)
    return result, json.loads((out / "provenance.json").read_text())


def _params(work, classifier, **evaluate):
    protocol = {"max_frames": 30, **evaluate.pop("protocol", {})}  # each clip's first 30 frames
    return {"evaluate": {"crop_size": 64, "n_videos": 0, "emotion_weights": classifier,
                         "fid_weights": "weights/missing_inception.pt", "protocol": protocol, **evaluate},
            "mlflow": {"tracking_uri": f"sqlite:///{work / 'control.db'}", "experiment": "control"}}


def test_copying_scores_chance_and_rendering_the_target_scores_100(labelled_shards, classifier, monkeypatch):
    from lightning_modules.generation import CopyReference

    work = labelled_shards
    params = _params(work, classifier, emotion_control={"max_clips": None, "max_frames": 30},
                     protocol={"emotions": ["happy", "neutral", "sad"]})  # 3 of actor 1001, MEAD's sad
    oracle = _Oracle()
    result, provenance = _evaluate(work, "oracle", oracle, params, monkeypatch)
    m = result["metrics"]
    assert m["emo_acc_all"] == 100.0 and m["emo_acc"] == 100.0
    assert all(m[f"emo_acc_all_{name}"] == 100.0 for name in CREMA_D_EMOTIONS.values())
    assert "emo_acc_all_contempt" not in m  # CREMA-D's six emotions only
    # every rendering came from actor 1001's neutral clip's first frame, never the clip's own
    neutral = provenance["protocol"]["reference"]
    assert neutral == "first frame of each test clip"
    assert "3 test clips" in provenance["protocol"]["emotion_control"]
    assert "1 clips skipped" in provenance["protocol"]["emotion_control"]  # M030 has no neutral test clip
    control_calls = [refs for refs in oracle.calls if len(refs) == 6]  # the six emotions in one call per clip
    assert len(oracle.calls) == 4 + 3 and len(control_calls) == 3
    assert len({ref for refs in control_calls for ref in refs}) == 1  # all from the one neutral frame
    confusion = cv2.imread(str(work / "eval/oracle/crema_d/emotion_confusion.png"))
    assert confusion is not None and confusion.shape[0] > 6 * 40

    result, _ = _evaluate(work, "copy_reference", CopyReference(), params, monkeypatch)
    m = result["metrics"]
    assert m["emo_acc_all"] == pytest.approx(100 / 6)  # one constant prediction per clip hits one of six targets
    rows = [m[f"emo_acc_all_{name}"] for name in CREMA_D_EMOTIONS.values()]
    assert sorted(rows) == [0.0] * 5 + [100.0]  # the neutral frame is always read as the same emotion
    assert m["emo_acc"] in (0.0, pytest.approx(100 / 3))  # right on the clip whose own emotion is that constant


def test_the_emotion_grid_is_drawn_from_the_first_clips_control_renderings(tmp_path):
    """The grid costs no rendering: its rows are the first clip's six renderings (frames 0, 4, ...)."""
    import numpy as np

    from eval_metrics.emotion import EmotionAccuracy
    from pipeline.protocol.emotion_control import EmotionControl, EmotionControlSettings
    from pipeline.protocol.grids import draw_emotion_grid

    references = {"1001": {"frame": np.zeros((64, 64, 3), np.uint8), "lmk": np.zeros((68, 2), np.float32)}}
    control = EmotionControl(EmotionAccuracy(_PixelCode(), "pixel code"), "crema_d",
                             EmotionControlSettings(max_clips=None, max_frames=25), references)
    clip = {"meta": {"speaker": "1001", "emotion": "sad"}, "frames_64": np.zeros((40, 64, 64, 3), np.uint8),
            "mel": np.zeros((128, 80), np.float32)}
    oracle = _Oracle()
    for _ in range(2):
        control.update(oracle, clip, "frames_64", {})
    names = list(CREMA_D_EMOTIONS.values())
    assert [label for label, _ in control.grid_rows] == names  # the first clip only
    assert all(video.shape == (25, 64, 64, 3) for _, video in control.grid_rows)
    grid = cv2.imread(str(draw_emotion_grid(control.grid_rows, tmp_path / "grid.png")))
    assert grid.shape == (6 * 64, 6 * 64, 3)  # frames 0, 4, ..., 20 of 25
    assert [int(grid[r * 64 + 40, 40, 0]) for r in range(6)] == [20 * EMOTION_TO_ID[name] for name in names]


class _IgnoresEmotion(_Oracle):
    """Always renders frames the classifier reads as ``sad``, whatever emotion it is asked for."""

    takes_emotion = False

    def generate(self, reference, mel, emotion, n_frames, ref_lmk=None):
        return super().generate(reference, mel, torch.full_like(emotion, EMOTION_TO_ID["sad"]), n_frames, ref_lmk)


def test_a_generator_that_ignores_the_emotion_renders_each_clip_once():
    """``takes_emotion = False``: one rendering per clip stands for all six targets (same scores)."""
    import numpy as np

    from eval_metrics.emotion import EmotionAccuracy
    from pipeline.protocol.emotion_control import EmotionControl, EmotionControlSettings

    references = {"1001": {"frame": np.zeros((64, 64, 3), np.uint8), "lmk": np.zeros((68, 2), np.float32)}}
    control = EmotionControl(EmotionAccuracy(_PixelCode(), "pixel code"), "crema_d",
                             EmotionControlSettings(max_clips=None, max_frames=25), references)
    generator = _IgnoresEmotion()
    for emotion in ("sad", "happy"):
        clip = {"meta": {"speaker": "1001", "emotion": emotion}, "frames_64": np.zeros((40, 64, 64, 3), np.uint8),
                "mel": np.zeros((128, 80), np.float32)}
        control.update(generator, clip, "frames_64", {})
    assert [len(refs) for refs in generator.calls] == [1, 1]
    m = control.compute()
    assert m["emo_acc_all"] == pytest.approx(100 / 6) and m["emo_acc"] == 50.0  # right on the sad clip only
    assert m["emo_acc_all_sad"] == 100.0 and m["emo_acc_all_happy"] == 0.0
    assert control.confusion.sum() == 2 * 6


def test_neutral_reference_and_filters_choose_the_clips_and_their_reference(labelled_shards, classifier, monkeypatch):
    from scripted_generator import ScriptedGenerator

    import pipeline.evaluate_video as ev
    from pipeline.protocol.clips import split_clips

    work = labelled_shards
    clips = list(split_clips(work / "shards" / "crema_d", "frames_64"))
    neutral_key = next(c["key"] for c in clips if c["meta"]["emotion"] == "neutral")
    generator = ScriptedGenerator(clips, "frames_64")
    params = _params(work, classifier, emotion_control={"max_clips": 0},
                     protocol={"reference": "neutral", "emotions": ["happy", "sad"]})
    result, provenance = _evaluate(work, "scripted", generator, params, monkeypatch)
    # happy and sad of actor 1001 from its neutral clip's first frame; MEAD's sad M030 has no neutral clip
    assert result["n_clips"] == 2 and [call["key"] for call in generator.calls] == [neutral_key] * 2
    assert sorted(call["emotion"] for call in generator.calls) == [EMOTION_TO_ID["happy"], EMOTION_TO_ID["sad"]]
    assert result["skipped_clips"]["filtered_out"] == 4 and result["skipped_clips"]["no_neutral_reference"] == 1
    assert "emo_acc_neutral" in result["metrics"] and "emo_acc" not in result["metrics"]
    assert provenance["protocol"]["clips"] == "test clips with emotion in ['happy', 'sad'], their first 30 frames"
    with pytest.raises(ev.ParamsError, match="evaluate.protocol.reference"):
        ev.protocol_settings({"evaluate": {"protocol": {"reference": "last_frame"}}})


def test_real_video_row_scores_the_real_clips(labelled_shards, classifier, monkeypatch):
    """real_video: the real frames as the rendering: landmark distances to themselves are 0 and
    EmoAcc is the classifier's accuracy on real clips (here: the pixel-code classifier's)."""
    import pipeline.evaluate_video as ev

    work = labelled_shards
    monkeypatch.chdir(work)
    params = _params(work, classifier, protocol={"emotions": ["happy", "neutral"]})
    result = ev.evaluate_video("real_video", "crema_d", params, work / "eval" / "real_video" / "crema_d")
    m = result["metrics"]
    assert result["n_clips"] == 2 and m["mse"] == 0.0 and m["ssim"] == pytest.approx(1.0)
    assert m["redetected_mouth_ld"] == 0.0 and m["redetected_face_lvd"] == 0.0
    assert "emo_acc" in m and "emo_acc_all" not in m  # no emotion control for real video
    assert "psnr" not in m and result["missing"]["psnr"].startswith("infinite")

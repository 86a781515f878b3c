"""EAPC stage 2 (few-shot vid2vid, paper 001 §3.5): edge maps, warping, hyper-SPADE, training phases, generate."""

import json
import math

import lightning as L
import pytest
import torch

from lightning_modules.networks.vid2vid import (MultiScaleDiscriminator, Vid2VidConfig, Vid2VidGenerator, edge_map,
                                                feature_matching_loss, hinge_d_loss, hinge_g_loss, warp)

S = 32
TINY = {"crop_size": S, "lmk_size": S, "widths": [8, 16, 16], "label_channels": 8, "flow_widths": [8, 8]}


def _face(chin_y: float = 60.0) -> torch.Tensor:
    """68 points: a V-shaped jaw from (10, 40) through the chin (34, chin_y) to (58, 40); every
    other point on the jaw's left end (so only the jaw and its upper-face curve draw)."""
    lmk = torch.full((68, 2), 0.0)
    lmk[:] = torch.tensor([10.0, 40.0])
    xs = torch.linspace(10, 58, 17)
    lmk[:17, 0] = xs
    lmk[:17, 1] = 40 + (chin_y - 40) * (1 - (xs - 34).abs() / 24)
    return lmk


def test_edge_map_draws_known_landmarks():
    flat = _face(chin_y=40.0)  # a straight jaw on row 40, cols 10 .. 58
    edges = edge_map(flat, 64, 64, upper_face=False, antialias=False)
    assert edges.shape == (1, 64, 64) and edges.dtype == torch.float32
    lit = edges[0].nonzero().tolist()
    assert lit == [[40, x] for x in range(10, 59)]
    # in 256 px crop pixels drawn at 64 px: the same line at a quarter of the coordinates
    quarter = edge_map(flat * 4, 64, 256, upper_face=False, antialias=False)
    assert torch.equal(quarter, edges)
    # the upper-face curve mirrors the jaw above the line through its ends, 2/3 as high
    v = edge_map(_face(chin_y=61.0), 64, 64, upper_face=True, antialias=False)[0]
    assert v[61, 34] == 1 and v[40 - 14, 34] == 1  # chin 21 px below, the curve 14 px above
    assert v[:26, :].sum() == 0
    assert edge_map(torch.full((2, 3, 68, 2), float("nan")), 16, 16).abs().sum() == 0  # no face: nothing drawn
    soft = edge_map(_face(), 64, 64)
    assert 0 < soft.max() <= 1 and soft.shape == (1, 64, 64)


def test_zero_flow_returns_the_reference_and_a_one_pixel_flow_shifts_it():
    image = torch.rand(2, 3, 8, 10)
    assert torch.allclose(warp(image, torch.zeros(2, 2, 8, 10)), image, atol=1e-6)
    one_px = torch.zeros(2, 2, 4, 5)
    one_px[:, 0] = 2 / 10  # x offset of one pixel in grid_sample units; resized to 8 x 10 first
    shifted = warp(image, one_px)
    assert torch.allclose(shifted[..., :-1], image[..., 1:], atol=1e-5)  # out(x) = image(x + 1)
    assert torch.allclose(shifted[..., -1], image[..., -1], atol=1e-5)   # border padding


def _inputs(b=2, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(b, 1, S, S, generator=g) > 0.9).float()
    refs = torch.rand(b, k, 3, S, S, generator=g)
    ref_labels = (torch.rand(b, k, 1, S, S, generator=g) > 0.9).float()
    return label, refs, ref_labels


def test_hyper_spade_weights_follow_the_reference():
    torch.manual_seed(0)
    gen = Vid2VidGenerator(Vid2VidConfig(**TINY)).eval()
    label, refs, ref_labels = _inputs()
    spade = gen.ups[0].spade
    feats, _ = gen.encode_references(refs, ref_labels)
    w_a, b_a = spade.weights(feats[-2][:, 0].mean((2, 3)))
    other, _ = gen.encode_references(refs.flip(-1), ref_labels)
    w_b, _ = spade.weights(other[-2][:, 0].mean((2, 3)))
    assert w_a.shape == (2, 2 * spade.channels, spade.label_channels) and b_a.shape == (2, 2 * spade.channels)
    assert not torch.allclose(w_a, w_b)  # other reference, other modulation weights
    w_a2, _ = spade.weights(gen.encode_references(refs, ref_labels)[0][-2][:, 0].mean((2, 3)))
    assert torch.equal(w_a, w_a2)
    out = gen(label, refs, ref_labels)
    assert out["image"].shape == (2, 3, S, S) and 0 <= out["image"].min() and out["image"].max() <= 1
    assert torch.allclose(out["mask"].sum(1), torch.ones(2, S, S))
    assert not torch.allclose(gen(label, refs.flip(-1), ref_labels)["raw"], out["raw"])  # same label, new look
    with pytest.raises(ValueError, match="label"):
        gen(label[:, :, :16], refs, ref_labels)


def test_attention_over_identical_references_equals_one_reference():
    torch.manual_seed(0)
    gen = Vid2VidGenerator(Vid2VidConfig(**TINY)).eval()
    label, refs, ref_labels = _inputs(k=1)
    one = gen(label, refs, ref_labels)
    two = gen(label, refs.expand(-1, 2, -1, -1, -1), ref_labels.expand(-1, 2, -1, -1, -1))
    assert torch.allclose(two["attention"], torch.full_like(two["attention"], 0.5))
    assert torch.allclose(two["image"], one["image"], atol=1e-6)
    _, refs2, labels2 = _inputs(k=2, seed=1)
    att = gen(label, refs2, labels2)["attention"]
    assert torch.allclose(att.sum(1), torch.ones_like(att[:, 0])) and not torch.allclose(att, torch.full_like(att, 0.5))


def test_previous_frame_flow_and_losses():
    torch.manual_seed(0)
    gen = Vid2VidGenerator(Vid2VidConfig(**TINY))
    label, refs, ref_labels = _inputs()
    first = gen(label, refs, ref_labels)
    second = gen(label, refs, ref_labels, prev=first["image"].detach(), prev_label=label)
    assert second["mask"].shape == (2, 3, S, S) and second["warped_prev"].shape == (2, 3, S, S)
    with pytest.raises(ValueError, match="temporal"):
        Vid2VidGenerator(Vid2VidConfig(**TINY, temporal=False))(label, refs, ref_labels, prev=first["image"], prev_label=label)
    disc = MultiScaleDiscriminator((8, 16), n_scales=2)
    real, fake = disc(label, refs[:, 0]), disc(label, first["image"])
    assert len(real) == 2 and real[1][-1].shape[-1] == real[0][-1].shape[-1] // 2
    assert [f[-1].shape for f in fake] == [r[-1].shape for r in real]  # generated frames: the same scales
    # hinge: D outputs of exactly +1 on real and -1 on fake cost nothing
    ones = [[torch.ones(1, 1, 2, 2)]]
    assert float(hinge_d_loss(ones, [[-torch.ones(1, 1, 2, 2)]])) == 0.0
    assert float(hinge_g_loss([[torch.full((1, 1, 2, 2), 3.0)]])) == -3.0
    assert float(feature_matching_loss(real, real).detach()) == 0.0


def test_one_batch_overfit():
    """The generator alone reproduces one target from one reference: L1 + warp, 150 Adam steps
    (measured: 0.099 -> 0.011 mean |error|)."""
    torch.manual_seed(0)
    gen = Vid2VidGenerator(Vid2VidConfig(**TINY, temporal=False))
    label, _, ref_labels = _inputs(b=1)
    smooth = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    refs = torch.nn.functional.interpolate(smooth, size=S, mode="bilinear", align_corners=False)[:, None]
    target = torch.roll(refs[:, 0], shifts=2, dims=-1) * 0.8 + 0.1  # moved 2 px, another exposure
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = gen(label, refs, ref_labels)
        loss = (out["image"] - target).abs().mean() + (out["warped_ref"] - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float((out["image"] - target).abs().mean().detach()))
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_config_errors_name_the_parameter():
    from lightning_modules.eapc_vid2vid import Vid2VidTrainConfig

    with pytest.raises(ValueError, match="crop_size"):
        Vid2VidConfig(crop_size=100)
    with pytest.raises(ValueError, match="widths"):
        Vid2VidConfig(crop_size=32, widths=(8, 8, 8, 8))
    with pytest.raises(ValueError, match=r"eapc_vid2vid\.net\.\w+: unknown key"):
        Vid2VidConfig.from_dict({"width": [8]})
    with pytest.raises(ValueError, match="retarget"):
        Vid2VidTrainConfig(retarget="procrustes")
    with pytest.raises(ValueError, match="lambda_fm"):
        Vid2VidTrainConfig(lambda_fm=-1)


def test_retarget_moves_the_stable_points_onto_the_reference():
    from lightning_modules.eapc_vid2vid import STABLE_POINTS, retarget

    torch.manual_seed(0)
    ref = torch.rand(1, 68, 2) * 100
    motion = torch.zeros(1, 5, 68, 2)
    motion[:, :, 48:68, 1] = torch.linspace(0, 4, 5)[None, :, None]  # only the mouth moves
    pred = (ref[:, None] + motion) * 1.2 + torch.tensor([7.0, -3.0])  # stage 1 off by a scale and a shift
    out = retarget(pred, ref)
    idx = list(STABLE_POINTS)
    assert torch.allclose(out[:, :, idx], ref[:, None, idx].expand(-1, 5, -1, -1), atol=1e-3)
    assert torch.allclose(out - ref[:, None], motion, atol=1e-3)  # the motion survives


# ------------------------------------------------------------------------------------- module
@pytest.fixture(scope="module")
def vid2vid(crema_shards, tmp_path_factory):
    """Stage 1 and stage 2 fitted for 3 epochs: single, temporal (2 frames), finetune."""
    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules.eapc import EAPCModule
    from lightning_modules.eapc_vid2vid import EAPCVid2VidModule

    work = tmp_path_factory.mktemp("vid2vid")
    L.seed_everything(0)
    stage1 = EAPCModule(net={"audio_hidden": 8, "llf_hidden": 8, "lm_hidden": 16, "attention_dim": 8, "crop_size": 64})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=("lmk", "mfcc", "llf", "frames_64"),
                                          window=8, batch_size=2, train_batches=2, seed=0))
    stage1.fit_input_stats(**{k: dm.training_arrays(k) for k in ("mfcc", "llf")})
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=work, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu")
    trainer.fit(stage1, datamodule=dm)
    trainer.save_checkpoint(work / "stage1.ckpt")
    net = {**TINY, "crop_size": 64, "lmk_size": 64}
    model = EAPCVid2VidModule(net=net, optim={"stage1_ckpt": str(work / "stage1.ckpt"), "vgg16_weights": None,
                                              "temporal_start_epoch": 1, "seq_len_max": 2, "finetune_epochs": 1,
                                              "d_widths": [8, 16]})
    logger = L.pytorch.loggers.CSVLogger(work, name="log")
    trainer = L.Trainer(max_epochs=3, logger=logger, default_root_dir=work, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu", log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer, work


def test_fit_runs_every_phase_and_logs_the_failure_signals(vid2vid):
    import csv

    model, _, trainer, work = vid2vid
    assert [model.phase(e) for e in range(3)] == [("single", 1), ("temporal", 2), ("finetune", 2)]
    rows = list(csv.DictReader(open(next(work.glob("log/*/metrics.csv")))))
    keys = {k for r in rows for k, v in r.items() if v}
    for phase in ("single", "temporal", "finetune"):
        assert {f"train_{phase}/{k}" for k in ("gan", "fm", "warp", "flow", "d", "total")} <= keys
    assert {"val/psnr_gt", "val/psnr_stage1", "val/csim_ref", "train/seq_len"} <= keys
    assert math.isfinite(float(trainer.callback_metrics["val/psnr_stage1"]))
    assert all(not p.requires_grad for p in model.stage1.parameters())


def test_generate_from_a_photo_and_reload_without_the_stage1_file(vid2vid):
    from lightning_modules.eapc_vid2vid import EAPCVid2VidModule

    model, dm, trainer, work = vid2vid
    batch = next(iter(dm.test_dataloader()))
    args = (batch["frames_64"][:1, 0], torch.zeros(1, 26, 80), torch.tensor([0]), 6)
    kwargs = {"ref_lmk": batch["lmk"][:1, 0], "mfcc": batch["mfcc"][:1], "llf": batch["llf"][:1]}
    model.eval()
    video = model.generate(*args, **kwargs)
    assert video.shape == (1, 6, 64, 64, 3) and video.dtype == torch.uint8
    trainer.save_checkpoint(work / "vid2vid.ckpt")
    (work / "stage1.ckpt").unlink()  # stage 1 lives inside the stage-2 checkpoint
    again = EAPCVid2VidModule.load_from_checkpoint(work / "vid2vid.ckpt", map_location="cpu").eval()
    assert torch.equal(again.generate(*args, **kwargs), video)
    assert torch.equal(again(batch), model(batch))  # the same stage 1
    assert again.hparams["stage1"] == model.hparams["stage1"] and again.hparams["stage1"]["net"]["crop_size"] == 64
    with pytest.raises(ValueError, match="mfcc and llf"):
        model.generate(*args, ref_lmk=kwargs["ref_lmk"])
    with pytest.raises(FileNotFoundError, match="train@eapc"):
        EAPCVid2VidModule(optim={"stage1_ckpt": str(work / "missing.ckpt")})


def test_video_protocol_scores_stage1_and_redetected_landmarks(vid2vid, crema_shards, monkeypatch, tmp_path,
                                                               tiny_inception):
    from pipeline.evaluate_video import main

    _, _, trainer, _ = vid2vid
    work = tmp_path / "work"
    work.mkdir()
    (work / "shards").symlink_to(crema_shards / "shards")
    monkeypatch.chdir(work)
    trainer.save_checkpoint(work / "models/eapc_vid2vid/crema_d/last.ckpt")
    params = {"evaluate": {"crop_size": 64, "n_videos": 0, "fid_weights": tiny_inception, "fid_sha256": None},
              "train": {"data": {"window": 8, "batch_size": 2}},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "vid2vid"}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    assert main(["--method", "eapc_vid2vid", "--dataset", "crema_d", "--params", str(tmp_path / "params.yaml")]) == 0
    result = json.loads((work / "eval/eapc_vid2vid/crema_d/metrics.json").read_text())
    metrics = set(result["metrics"])
    assert {"psnr", "ssim", "mouth_ld", "face_lvd"} <= metrics  # video + stage 1's own landmarks
    assert {"redetected_mouth_ld", "redetected_mouth_lvd", "redetected_face_ld", "redetected_face_lvd"} <= metrics


def test_stage2_starts_from_a_pretrained_generator_file(tmp_path):
    """optim.init_generator: a run starts from another run's exported generator (checksum checked);
    a file for another net config is refused with the keys that differ."""
    from lightning_modules.eapc_vid2vid import EAPCVid2VidModule
    from primitives.checksum import file_sha256

    optim = {"stage1_ckpt": None, "vgg16_weights": None, "d_widths": [8]}
    torch.manual_seed(0)
    donor = EAPCVid2VidModule(net=TINY, optim=optim)
    path = donor.export_generator(tmp_path / "generator.pt")
    torch.manual_seed(1)
    fresh = EAPCVid2VidModule(net=TINY, optim=optim)
    started = EAPCVid2VidModule(net=TINY, optim={**optim, "init_generator": str(path),
                                                 "init_generator_sha256": file_sha256(path)})
    assert all(torch.equal(v, donor.generator.state_dict()[k]) for k, v in started.generator.state_dict().items())
    assert not all(torch.equal(v, donor.generator.state_dict()[k]) for k, v in fresh.generator.state_dict().items())
    with pytest.raises(ValueError, match="sha256|checksum"):
        EAPCVid2VidModule(net=TINY, optim={**optim, "init_generator": str(path), "init_generator_sha256": "0" * 64})
    with pytest.raises(ValueError, match="does not fit"):
        EAPCVid2VidModule(net={**TINY, "label_channels": 4}, optim={**optim, "init_generator": str(path)})
    with pytest.raises(FileNotFoundError, match="init_generator"):
        EAPCVid2VidModule(net=TINY, optim={**optim, "init_generator": str(tmp_path / "gone.pt")})

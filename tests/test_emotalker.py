"""EmoTalker (paper 004): LDM scheduler, eq. 6 sampler, condition tokens, strength, module fit / generate."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from lightning_modules.networks.emotalker import (EMOTION_TOKEN, ConditionEncoder, DenoiserConfig, build_unet,
                                                  identity_preserving_ddim, ldm_scheduler, lower_face_mask,
                                                  speech_windows)

S = 64
AE_NET = {"image_size": S, "block_out_channels": [8, 16, 16], "norm_num_groups": 8}
NET = {"crop_size": S, "block_out_channels": [16, 32], "norm_num_groups": 8, "cross_attention_dim": 32,
       "attention_head_dim": 8}


def test_scheduler_is_ldm_linear_in_sqrt_beta():
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=np.float64) ** 2  # LDM make_beta_schedule("linear")
    np.testing.assert_allclose(ldm_scheduler().alphas_cumprod.numpy(), np.cumprod(1 - betas), atol=1e-6)
    diffusers_linear = np.cumprod(1 - np.linspace(0.0015, 0.0195, 1000))
    assert np.abs(diffusers_linear - np.cumprod(1 - betas)).max() > 1e-2  # the pitfall the issue names


def _plain_ddim(eps_fn, scheduler, source, noise, steps):
    scheduler.set_timesteps(steps)
    z = scheduler.add_noise(source, noise, scheduler.timesteps[:1])
    for t in scheduler.timesteps:
        z = scheduler.step(eps_fn(z, int(t)), t, z).prev_sample
    return z


def test_eq6_is_plain_ddim_at_a0_and_keeps_the_source_at_a1():
    torch.manual_seed(0)
    source, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    w = torch.randn(3, 3) * 0.3

    def eps_fn(z, t):  # an arbitrary (imperfect) denoiser
        return torch.einsum("oc,nchw->nohw", w, z) * (1 + t / 1000)

    sched = ldm_scheduler()
    plain = _plain_ddim(eps_fn, sched, source, noise, 20)
    assert torch.allclose(identity_preserving_ddim(eps_fn, sched, source, noise, 20, 0.0, 0.65), plain, atol=1e-6)
    blended = identity_preserving_ddim(eps_fn, sched, source, noise, 20, 0.3, 0.65)
    assert (blended - plain).abs().max() > 1e-3
    # a = 1 over every step (K = 0) with the exact noise predictor returns the source, noised only
    # to DDIM's final level alpha_0 (set_alpha_to_one=False)
    out = identity_preserving_ddim(lambda z, t: noise, sched, source, noise, 20, 1.0, 0.0)
    abar = sched.alphas_cumprod[0]
    assert torch.allclose(out, abar.sqrt() * source + (1 - abar).sqrt() * noise, atol=1e-5)
    assert (out - source).abs().mean() < 0.05
    with pytest.raises(ValueError, match="preserve_ratio"):
        identity_preserving_ddim(eps_fn, sched, source, noise, 20, 1.5, 0.65)


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    cfg = DenoiserConfig.from_dict(NET)
    return cfg, build_unet(cfg, S // 4).eval(), ConditionEncoder(cfg).eval()


def _inputs(cfg):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(2, cfg.audio_window, 40, generator=g), torch.rand(2, 68, 2, generator=g) * 256,
            torch.randn(2, 384, generator=g), torch.randn(2, 9, S // 4, S // 4, generator=g))


def test_each_condition_token_changes_the_output(denoiser):
    cfg, unet, conditions = denoiser
    speech, lmk, e_emo, x = _inputs(cfg)
    with torch.no_grad():
        base = unet(x, 500, encoder_hidden_states=conditions(speech, lmk, e_emo)).sample
        changed = {"audio": conditions(speech.flip(1) + 1, lmk, e_emo), "landmark": conditions(speech, lmk + 20, e_emo),
                   "emotion": conditions(speech, lmk, -e_emo)}
        for name, cond in changed.items():
            assert (unet(x, 500, encoder_hidden_states=cond).sample - base).abs().max() > 1e-4, name
        # the landmark token reads only the upper face (17-47): a moved mouth changes nothing
        mouth = lmk.clone()
        mouth[:, 48:] += 30
        assert torch.equal(conditions(speech, mouth, e_emo), conditions(speech, lmk, e_emo))


def test_strength_zero_removes_the_emotion_token_and_one_is_plain_attention(denoiser):
    cfg, unet, conditions = denoiser
    speech, lmk, e_emo, x = _inputs(cfg)
    with torch.no_grad():
        cond = conditions(speech, lmk, e_emo)
        other = cond.clone()
        other[:, EMOTION_TOKEN] = conditions(speech, lmk, 3 * torch.randn_like(e_emo))[:, EMOTION_TOKEN]

        def run(c, strength):
            kwargs = None if strength is None else {"emotion_strength": torch.full((2,), strength)}
            return unet(x, 300, encoder_hidden_states=c, cross_attention_kwargs=kwargs).sample

        assert torch.allclose(run(cond, 0.0), run(other, 0.0), atol=1e-5)  # the emotion token has no effect at 0
        assert (run(cond, 1.0) - run(other, 1.0)).abs().max() > 1e-3
        assert torch.allclose(run(cond, 1.0), run(cond, None), atol=1e-5)
        assert (run(cond, 2.0) - run(cond, 1.0)).abs().max() > 1e-4


def test_masks_and_speech_windows():
    images = torch.ones(1, 3, 20, 20)
    masked = lower_face_mask(images, 0.55)
    assert masked[..., :11, :].eq(1).all() and masked[..., 11:, :].eq(0).all()
    speech = torch.arange(10.0).view(1, 10, 1)
    windows = speech_windows(speech, torch.tensor([[0, 5, 9]]), 4)  # frames t-2 .. t+1, edges repeated
    assert windows[0, :, :, 0].tolist() == [[0, 0, 0, 1], [3, 4, 5, 6], [7, 8, 9, 9]]


@pytest.fixture(scope="module")
def emotalker(crema_shards, tmp_path_factory):
    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules.autoencoder import AutoencoderModule
    from lightning_modules.emotalker import EmoTalkerModule

    work = tmp_path_factory.mktemp("emotalker")
    L.seed_everything(0)
    ae = AutoencoderModule(net=AE_NET, optim={"scale_batches": 2})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=ae.data_keys + ("phones", "mel"),
                                          window=12, batch_size=2, train_batches=3, seed=0))
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=work, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu")
    trainer.fit(ae, datamodule=dm)
    assert float(ae.scaling_factor) != 1.0  # measured at the end of fit, not SD's constant
    ae_ckpt = work / "autoencoder.ckpt"
    trainer.save_checkpoint(ae_ckpt)
    model = EmoTalkerModule(net=NET, optim={"autoencoder_ckpt": str(ae_ckpt), "lambda_emo": 0.0,
                                            "intensity_block": "untrained"})
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=work, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer, ae_ckpt, work


def test_fit_and_generate_and_reload_without_the_autoencoder_file(emotalker):
    from lightning_modules.emotalker import EmoTalkerModule

    model, dm, trainer, ae_ckpt, work = emotalker
    assert math.isfinite(float(trainer.callback_metrics["train/diffusion"]))
    assert all(not p.requires_grad for p in model.autoencoder.parameters())
    batch = next(iter(dm.test_dataloader()))
    args = (batch[f"frames_{S}"][:1, 0], batch["mel"][:1], torch.tensor([5]), 6)
    kwargs = {"ref_lmk": batch["lmk"][:1, 0], "phones": batch["phones"][:1]}
    model.eval().configure_sampling({"ddim_steps": 3})
    video = model.generate(*args, **kwargs)
    assert video.shape == (1, 6, S, S, 3) and video.dtype == torch.uint8
    assert torch.equal(video, model.generate(*args, **kwargs))  # seeded noise: reproducible
    assert not torch.equal(video, model.generate(*args, **kwargs, strength=0.0))
    trainer.save_checkpoint(work / "emotalker.ckpt")
    ae_ckpt.unlink()  # the autoencoder lives inside the EmoTalker checkpoint
    again = EmoTalkerModule.load_from_checkpoint(work / "emotalker.ckpt", map_location="cpu").eval()
    again.configure_sampling({"ddim_steps": 3})
    assert torch.equal(again.generate(*args, **kwargs), video)
    with pytest.raises(ValueError, match="ref_lmk and phones"):
        model.generate(*args)


def test_ema_checkpoint_holds_the_average(emotalker):
    """optim.ema_decay -> pipeline.train.weight_averaging -> the checkpoint holds the average. torch's
    AveragedModel starts from the weights after the first step, so decay 1 keeps step 1's weights
    and decay 0 is the last step's (= a run without EMA)."""
    from lightning_modules.emotalker import EmoTalkerModule
    from pipeline.train import weight_averaging

    _, dm, _, _, work = emotalker

    def fit(steps: int, decay: float | None) -> dict:
        L.seed_everything(1)  # the same initial weights every time (the autoencoder built from its config)
        model = EmoTalkerModule(net=NET, optim={"autoencoder_ckpt": "unused", "lambda_emo": 0.0, "ema_decay": decay,
                                                "intensity_block": "untrained"},
                                autoencoder_net=AE_NET)
        trainer = L.Trainer(max_steps=steps, logger=False, default_root_dir=work, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
                            callbacks=weight_averaging(model), enable_checkpointing=False)
        trainer.fit(model, datamodule=dm)
        trainer.save_checkpoint(work / "ema.ckpt")
        state = torch.load(work / "ema.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith("unet.")}

    def same(a: dict, b: dict) -> bool:
        return all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)

    step1, step2 = fit(1, None), fit(2, None)
    assert not same(step1, step2)
    assert same(fit(2, 0.0), step2)
    assert same(fit(2, 1.0), step1)
    with pytest.raises(ValueError, match="ema_decay"):
        EmoTalkerModule.validate_params(NET, {"autoencoder_ckpt": "x", "ema_decay": 1.5})


def test_head_channels_give_heads_of_that_width():
    cfg = DenoiserConfig(crop_size=64, block_out_channels=(32, 64, 96), head_channels=16, norm_num_groups=8)
    unet = build_unet(cfg, 16)
    heads = {m.heads * 16 == m.inner_dim for name, m in unet.named_modules() if name.endswith(".attn2")}
    assert heads == {True}
    assert {m.heads for name, m in unet.named_modules() if name.endswith("down_blocks.2.attentions.0.transformer_blocks.0.attn2")} == {6}
    with pytest.raises(ValueError, match="head_channels"):
        DenoiserConfig(block_out_channels=(32, 48), head_channels=32)


def test_bad_params_name_the_fix(tmp_path):
    from lightning_modules.emotalker import EmoTalkerModule

    with pytest.raises(ValueError, match="exactly one of autoencoder_ckpt"):
        EmoTalkerModule.validate_params(NET, {})
    with pytest.raises(ValueError, match=r"intensity_block is required.*dvc repro train_intensity"):
        EmoTalkerModule.validate_params(NET, {"autoencoder_ckpt": "x"})  # no silent all-zero emotion condition
    from lightning_modules.networks.intensity import load_intensity_block

    with pytest.raises(FileNotFoundError, match="no Emotion Intensity Block at .*train_intensity"):
        load_intensity_block(tmp_path / "gone")  # what a configured but missing block gives
    with pytest.raises(ValueError, match="autoencoder_scaling"):
        EmoTalkerModule.validate_params(NET, {"autoencoder_path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="train@autoencoder"):
        EmoTalkerModule(net=NET, optim={"autoencoder_ckpt": str(tmp_path / "none.ckpt"), "intensity_block": "untrained"})
    with pytest.raises(ValueError, match=r"emotalker\.net\.\w+: unknown key"):
        EmoTalkerModule.validate_params({"crop": 64}, {"autoencoder_ckpt": "x"})


def test_autoencoder_scores_know_the_psnr_of_a_constant_offset():
    from types import SimpleNamespace

    from pipeline.protocol.extras import AutoencoderScores

    shifted = SimpleNamespace(device="cpu", encode=lambda x: x, decode=lambda z: (z + 16 / 255).clamp(0, 1))
    scores = AutoencoderScores()
    scores.update(shifted, torch.full((40, 8, 8, 3), 100, dtype=torch.uint8), chunk=16)
    assert scores.compute()["ae_psnr"] == pytest.approx(20 * math.log10(255 / 16), abs=1e-3)


def test_video_protocol_adds_ae_psnr_and_the_prompt_grid(emotalker, crema_shards, monkeypatch, tmp_path,
                                                         tiny_inception):
    import json

    import cv2

    from pipeline.evaluate_video import main

    _, _, trainer, _, _ = emotalker
    work = tmp_path / "work"
    work.mkdir()
    (work / "shards").symlink_to(crema_shards / "shards")
    monkeypatch.chdir(work)
    trainer.save_checkpoint(work / "models/emotalker/crema_d/last.ckpt")
    params = {"evaluate": {"crop_size": S, "n_videos": 0, "fid_weights": tiny_inception, "fid_sha256": None,
                           "sampling": {"emotalker": {"ddim_steps": 2}},
                           "fine_tune": {"emotalker": {"steps": 2, "window": 8}},
                           "prompt_grid": {"prompts": ["very angry and disgusted"], "strengths": [0.0, 1.0]}},
              "train": {"data": {"window": 12, "batch_size": 2}},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "emotalker"}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    assert main(["--method", "emotalker", "--dataset", "crema_d", "--params", str(tmp_path / "params.yaml")]) == 0
    out = work / "eval/emotalker/crema_d"
    result = json.loads((out / "metrics.json").read_text())
    assert {"psnr", "ssim", "ae_psnr"} <= set(result["metrics"])
    protocol = json.loads((out / "provenance.json").read_text())["protocol"]
    assert "'ddim_steps': 2" in protocol["sampling"]
    assert "steps=2" in protocol["fine_tune"] and "videos" in protocol["fine_tune"]  # paper 004 §3.2 ran
    assert cv2.imread(str(out / "prompt_grid.png")).shape == (S, 3 * S, 3)  # reference + two strengths


def test_masked_input_never_shows_the_target_by_default(emotalker, monkeypatch):
    """net.masked_input: "none" gives the UNet a blank masked image in training and at inference (no
    upper face of the target to copy); "target" (DiffTalk) gives the target's upper face in training."""
    import copy
    import dataclasses

    from lightning_modules.networks.emotalker import lower_face_mask

    model, dm, *_ = emotalker
    batch = next(iter(dm.train_dataloader()))
    seen = {}

    def capture(name, module):
        def denoise(z_t, t, z_masked, z_ref, cond, strength=None):
            seen[name] = z_masked.detach()
            return torch.zeros_like(z_t)
        monkeypatch.setattr(module, "denoise", denoise)

    diffdalk = copy.deepcopy(model)
    diffdalk.net_cfg = dataclasses.replace(model.net_cfg, masked_input="target")
    capture("none", model)
    capture("target", diffdalk)
    torch.manual_seed(0)
    model._losses(batch)
    torch.manual_seed(0)
    targets, _ = diffdalk._pick_frames(len(batch["lmk"]), batch["lmk"].shape[1], "cpu")
    torch.manual_seed(0)
    diffdalk._losses(batch)
    blank = model.autoencoder.encode(torch.zeros(1, 3, S, S))
    assert torch.allclose(seen["none"], blank.expand_as(seen["none"]), atol=1e-2)  # batched conv rounding
    assert torch.equal(seen["none"][0], seen["none"][1])  # nothing of any sample's own frames
    image = batch[f"frames_{S}"][torch.arange(len(targets)), targets].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(seen["target"], model.autoencoder.encode(lower_face_mask(image, model.net_cfg.mask_top)), atol=1e-2)
    assert not torch.allclose(seen["target"][0], seen["target"][1], atol=0.1)
    with pytest.raises(ValueError, match="masked_input"):
        dataclasses.replace(model.net_cfg, masked_input="reference")


def test_pretrained_vq_f4_autoencoder_directory(tmp_path):
    """optim.autoencoder_path takes a diffusers VQModel (LDM's VQ-f4, the paper's) as well as an
    AutoencoderKL: latents before quantisation, decoder quantises; a checkpoint rebuilds it alone."""
    from diffusers import VQModel

    from lightning_modules.autoencoder import AutoencoderModule
    from lightning_modules.emotalker import EmoTalkerModule

    torch.manual_seed(0)
    vq = VQModel(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, num_vq_embeddings=16,
                 latent_channels=3, sample_size=S, scaling_factor=1.0).eval()
    vq.save_pretrained(tmp_path / "vq-f4")
    optim = {"autoencoder_path": str(tmp_path / "vq-f4"), "autoencoder_scaling": 1.0, "intensity_block": "untrained"}
    model = EmoTalkerModule(net=NET, optim=optim)
    assert model.autoencoder.net_cfg.kind == "vq" and model.latent_size == S // 4
    x = torch.rand(2, 3, S, S)
    with torch.no_grad():
        z = model.autoencoder.encode(x)
        assert torch.allclose(z, vq.encode(x * 2 - 1).latents, atol=1e-6)
        assert torch.allclose(model.autoencoder.decode(z), ((vq.decode(z).sample + 1) / 2).clamp(0, 1), atol=1e-4)
        quantised = vq.quantize(z)[0]
        assert torch.allclose(model.autoencoder.decode(z), model.autoencoder.decode(quantised), atol=1e-4)
    again = EmoTalkerModule(net=NET, optim=optim, autoencoder_net=model.hparams["autoencoder_net"])
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert again.autoencoder.net_cfg.kind == "vq" and torch.equal(again.autoencoder.encode(x), z)
    with pytest.raises(ValueError, match="trains a KL autoencoder"):
        AutoencoderModule.validate_params({"kind": "vq"})


def test_one_video_plan_is_leave_one_out():
    from pipeline.protocol.one_video import plan_videos

    plan = plan_videos({"a3": "A", "a1": "A", "b1": "B", "a2": "A", "c2": "C", "c1": "C"})
    assert plan == {"a1": "a2", "a2": "a1", "a3": "a1", "b1": None, "c1": "c2", "c2": "c1"}


def test_one_video_fine_tuning_adapts_to_the_video_and_restores(emotalker, crema_shards):
    """Paper 004 §3.2: fine_tune lowers eq. 1 on the video it sees, is seeded (same weights twice)
    without touching the global RNG; the protocol switches weights per clip and restores them."""
    import copy

    from lightning_modules.emotalker import FineTuneConfig
    from pipeline.protocol.one_video import OneVideoFineTuning, load_videos, split_speakers

    model, *_ = emotalker
    model = copy.deepcopy(model).eval()
    shard_dir = crema_shards / "shards/crema_d"
    speakers = split_speakers(shard_dir)
    key = sorted(speakers)[0]
    assert set(speakers.values()) and all(isinstance(s, str) for s in speakers.values())
    video = load_videos(shard_dir, {key}, f"frames_{S}")[key]
    args = (torch.from_numpy(video[f"frames_{S}"]), torch.from_numpy(video["lmk"]), torch.from_numpy(video["phones"]),
            int(video["meta"]["emotion_id"]), int(video["meta"]["intensity"]))
    cfg = FineTuneConfig(steps=25, lr=2e-3, batch_size=4, window=12, seed=3)

    def eq1_on_video(module) -> float:  # the same 16 draws of (window, t, noise) for both weights
        with torch.random.fork_rng():
            torch.manual_seed(7)
            values = []
            for _ in range(16):
                idx = torch.randint(0, len(args[0]) - 12 + 1, (1,)) + torch.arange(12)
                batch = {f"frames_{S}": args[0][idx][None], "lmk": args[1][idx][None], "phones": args[2][idx][None],
                         "emotion": torch.tensor([args[3]]), "intensity": torch.tensor([args[4]])}
                with torch.no_grad():
                    values.append(float(module._losses(batch)["diffusion"]))
        return float(np.mean(values))

    trained = copy.deepcopy(model.state_dict())
    before = eq1_on_video(model)
    rng = torch.get_rng_state()
    losses = model.fine_tune(*args, cfg)
    assert torch.equal(torch.get_rng_state(), rng) and len(losses) == 25 and not model.training
    assert eq1_on_video(model) < 0.8 * before
    tuned = copy.deepcopy(model.state_dict())
    model.load_state_dict(trained)
    model.fine_tune(*args, cfg)
    assert all(torch.equal(tuned[k], v) for k, v in model.state_dict().items())
    assert model.fine_tune(*args, FineTuneConfig(steps=0)) == []

    model.load_state_dict(trained)
    protocol = OneVideoFineTuning(model, cfg, {"x": key, "y": None}, {key: video}, f"frames_{S}")
    protocol.prepare("x")
    assert all(torch.equal(tuned[k], v) for k, v in model.state_dict().items())
    protocol.prepare("y")  # a single-clip speaker: the trained weights, counted
    assert protocol.skipped == 1 and all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    protocol.prepare("x")  # cached, not fine-tuned again
    assert len(protocol.tuned) == 1 and all(torch.equal(tuned[k], v) for k, v in model.state_dict().items())
    protocol.restore()
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="steps >= 0"):
        FineTuneConfig(steps=-1)

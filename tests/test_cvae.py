"""Tests of the paper-000 conditional VAE generator (``lightning_modules.networks.cvae`` / ``.cvae``)."""

from __future__ import annotations

import hashlib
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.talking_face import DataConfig, TalkingFaceDataModule
from lightning_modules.cvae import CVAEModule, frame_mel_windows
from lightning_modules.generation import VideoGenerator
from lightning_modules.networks.cvae import (CVAE, VGG19_FILENAME, CVAEConfig, VGGPerceptual, kl_divergence,
                                             mask_lower_half, recon_loss, vgg19_features)
from lightning_modules.networks.emotion import EmotionClassifier, EmotionClassifierConfig
from lightning_modules.networks.syncnet import SyncNet, SyncNetConfig

S = 64
NET = dict(crop_size=S, widths=(16, 32, 64), stem_channels=8, latent_dim=32, audio_channels=(8, 16), audio_dim=32,
           emotion_dim=16, cond_channels=16)


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, S, S, generator=g)
    return mask_lower_half(x), x, torch.rand(b, 1, 16, 80, generator=g) * 8 - 4, torch.arange(b) % 8


@pytest.fixture(scope="module")
def real_batch(crema_shards):
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"),
                                          keys=("lmk", f"frames_{S}", "mel"), window=5, batch_size=4,
                                          train_batches=1, seed=0))
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_forward_shapes_and_range():
    torch.manual_seed(0)
    net = CVAE(CVAEConfig(**NET))
    out = net(*_inputs(3))
    assert out.recon.shape == (3, 3, S, S) and out.mu.shape == out.logvar.shape == (3, 32)
    assert float(out.recon.detach().min()) >= 0 and float(out.recon.detach().max()) <= 1
    with pytest.raises(ValueError, match="crop_size"):
        CVAEConfig(crop_size=60, widths=(16, 32, 64))
    with pytest.raises(ValueError, match=r"cvae\.net\.\w+: unknown key"):
        CVAEConfig.from_dict({"crop": 64})


def test_kl_closed_form():
    assert float(kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8))) == 0.0
    torch.manual_seed(0)
    mu, logvar = torch.randn(2, 3), torch.randn(2, 3) * 0.5
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2, 3), torch.ones(2, 3))
    analytic = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(kl_divergence(mu, logvar), analytic, atol=1e-5)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean()
    assert abs(float(mc) - float(analytic)) < 0.05 * float(analytic) + 0.02


def test_residual_output_starts_as_reference_copy():
    torch.manual_seed(0)
    masked, ref, mel, emotion = _inputs(2)
    ref = ref.clamp(0.01, 0.99)  # logit's eps (1e-3) leaves the extremes slightly moved
    with torch.no_grad():
        copy = CVAE(CVAEConfig(**NET)).eval()(masked, ref, mel, emotion).recon
        absolute = CVAE(CVAEConfig(**NET, output="absolute")).eval()(masked, ref, mel, emotion).recon
    assert torch.allclose(copy, ref, atol=1e-5)
    assert (absolute - ref).abs().mean() > 0.1
    with pytest.raises(ValueError, match="output"):
        CVAEConfig(**NET, output="linear")


def test_emotion_conditioning_changes_output():
    torch.manual_seed(0)
    net = CVAE(CVAEConfig(**NET)).eval()
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)  # a trained head (zero-initialised: a plain copy)
    masked, ref, mel, _ = _inputs(2)
    with torch.no_grad():
        a = net(masked, ref, mel, torch.tensor([0, 0])).recon
        a2 = net(masked, ref, mel, torch.tensor([0, 0])).recon
        b = net(masked, ref, mel, torch.tensor([5, 5])).recon
    assert torch.equal(a, a2)  # eval: z = mu, deterministic
    assert (a - b).abs().max() > 1e-4


def test_frame_mel_windows_centred_and_clamped():
    mel = torch.arange(32 * 80, dtype=torch.float32).view(1, 32, 80)
    w = frame_mel_windows(mel, torch.tensor([[0, 5, 9]]))
    assert w.shape == (1, 3, 1, 16, 80)
    starts = (w[0, :, 0, 0, 0] / 80).long().tolist()
    assert starts == [0, 16 - 6, 32 - 16]  # clamp at 0, int(3.2*5)-6 = 10, clamp at M-16


def test_one_batch_overfit_on_real_frames(real_batch):
    torch.manual_seed(0)
    frames = real_batch[f"frames_{S}"][:, 2].permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S)
    ref = real_batch[f"frames_{S}"][:, 0].permute(0, 3, 1, 2).float() / 255
    mel = frame_mel_windows(real_batch["mel"], torch.full((len(frames), 1), 2))[:, 0]
    net = CVAE(CVAEConfig(**NET)).train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        out = net(mask_lower_half(frames), ref, mel, real_batch["emotion"])
        rec = recon_loss(out.recon, frames)
        loss = rec + kl_divergence(out.mu, out.logvar) / (3 * S * S)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(rec))
    copy_mse = float(recon_loss(ref, frames))
    assert losses[0] == pytest.approx(copy_mse, rel=0.02)  # residual output: step 0 copies the reference
    assert min(losses[-5:]) * 3 <= copy_mse, (copy_mse, losses[-5:])


def test_generate_implements_video_generator(real_batch):
    model = CVAEModule(net=NET, optim={"augment": False})
    assert isinstance(model, VideoGenerator)
    assert model.data_keys == ("lmk", f"frames_{S}", "mel")
    ref = real_batch[f"frames_{S}"][:, 0]
    for latent in ("posterior", "prior"):
        model.optim_cfg.generate_latent = latent
        video = model.generate(ref, real_batch["mel"], real_batch["emotion"], 5)
        assert video.shape == (4, 5, S, S, 3) and video.dtype == torch.uint8
    assert model.net.training  # mode restored


def test_missing_vgg_weights_disable_perceptual_loss(tmp_path, real_batch):
    missing = tmp_path / VGG19_FILENAME
    with pytest.raises(FileNotFoundError, match=VGG19_FILENAME):
        VGGPerceptual(missing)
    model = CVAEModule(net=NET, optim={"vgg_weights": str(missing), "beta": 0.5, "augment": False})
    assert model.beta == 0.0
    assert model.resolved_config()["perceptual_loss"] == "disabled (weights missing)"
    _, losses = model.model_step(real_batch)
    assert "perceptual" not in losses and torch.isfinite(losses["total"])


def test_vgg_loads_torchvision_keys_and_checks_hash(tmp_path):
    torch.manual_seed(0)
    feats = vgg19_features(4)  # relu1_2 only: small synthetic file with torchvision's key names
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    vgg = VGGPerceptual(path, sha256=digest, layers=("relu1_2",))
    assert torch.equal(vgg.features[2].weight, feats[2].weight)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert float(vgg(x, x.detach())) == 0.0
    loss = vgg(x, torch.rand(2, 3, 32, 32))
    loss.backward()
    assert loss > 0 and x.grad is not None
    with pytest.raises(ValueError, match="sha256"):
        VGGPerceptual(path, sha256="0" * 64, layers=("relu1_2",))


def test_sync_and_finetuned_emotion_losses_backprop(real_batch):
    torch.manual_seed(0)
    model = CVAEModule(net=NET, optim={"gamma": 0.1, "delta": 0.1, "emotion_finetune": True, "augment": True})
    model.set_sync_expert(SyncNet(SyncNetConfig(crop_size=S, face_channels=(8, 16), audio_channels=(8, 16),
                                                embed_dim=16)))
    model.set_emotion_discriminator(EmotionClassifier(EmotionClassifierConfig(widths=(8, 16))))
    gen, losses = model.model_step(real_batch)
    assert gen.shape == (4, 5, 3, S, S)
    assert {"sync", "emotion", "emotion_disc"} <= set(losses)
    losses["total"].backward()
    assert model.net.head[-1].weight.grad is not None
    assert model.emotion_disc.head[-1].weight.grad is not None
    assert all(p.grad is None for p in model._aux["sync"].parameters())  # frozen expert


def test_aux_losses_start_at_aux_start_step(real_batch, monkeypatch):
    """Before ``aux_start_step`` only reconstruction + KL are trained (one frame per sample); from it on,
    the sync (5 frames) and emotion losses join."""
    torch.manual_seed(0)
    model = CVAEModule(net=NET, optim={"gamma": 0.1, "delta": 0.1, "aux_start_step": 3, "augment": False})
    model.set_sync_expert(SyncNet(SyncNetConfig(crop_size=S, face_channels=(8, 16), audio_channels=(8, 16),
                                                embed_dim=16)))
    model.set_emotion_discriminator(EmotionClassifier(EmotionClassifierConfig(widths=(8, 16))))
    for step, expected in ((0, set()), (2, set()), (3, {"sync", "emotion"}), (9, {"sync", "emotion"})):
        monkeypatch.setattr(CVAEModule, "global_step", property(lambda self, s=step: s))
        gen, losses = model.model_step(real_batch)
        assert {"sync", "emotion"} & set(losses) == expected, step
        assert gen.shape[1] == (5 if expected else 1)
        aux = model.gamma * losses.get("sync", 0) + model.delta * losses.get("emotion", 0)
        assert float(losses["total"]) == pytest.approx(float(losses["recon"] + model.alpha * losses["kl"] + aux),
                                                       rel=1e-6)
    with pytest.raises(ValueError, match="aux_start_step"):
        CVAEModule(net=NET, optim={"aux_start_step": -1})


def test_finetuned_discriminator_statistics_see_real_frames_only(real_batch):
    """The emotion discriminator's BatchNorm running statistics after one step equal those of one
    train-mode pass over the real target frames: generated frames never enter them."""
    import copy

    torch.manual_seed(0)
    model = CVAEModule(net=NET, optim={"gamma": 0.0, "delta": 0.1, "emotion_finetune": True, "augment": False,
                                       "reference": "first"})
    model.set_emotion_discriminator(EmotionClassifier(EmotionClassifierConfig(widths=(8, 16))))
    reference = copy.deepcopy(model.emotion_disc)
    torch.manual_seed(1)
    model.model_step(real_batch, train=True)
    stats = {n: b for n, b in model.emotion_disc.named_buffers() if "running" in n}
    # replay the one real-frame pass the step made, on the copy taken before the step
    torch.manual_seed(1)
    idx, _ = model._pick(real_batch[f"frames_{S}"], True, 1)
    rows = torch.arange(len(idx))
    real = real_batch[f"frames_{S}"][rows[:, None], idx].float()  # (B, 1, S, S, 3) in 0..255
    reference(real)
    expected = {n: b for n, b in reference.named_buffers() if "running" in n}
    assert stats and all(torch.allclose(stats[n], expected[n], atol=1e-6) for n in stats)


class _Recorder(Callback):
    def __init__(self):
        self.recon: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.recon.append(float(trainer.callback_metrics["train/recon"]))


def test_short_lightning_fit_reduces_recon(crema_shards):
    L.seed_everything(0)
    # absolute output: starts far from the data, so 24 steps must show a large drop
    model = CVAEModule(net={**NET, "output": "absolute"}, optim={"lr": 2e-3, "reference": "first"})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=model.data_keys,
                                          window=5, batch_size=4, train_batches=8, windows_per_clip=4, seed=0))
    rec = _Recorder()
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, callbacks=[rec], accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    assert len(rec.recon) == 3 and all(math.isfinite(r) for r in rec.recon)
    assert rec.recon[-1] < 0.7 * rec.recon[0], rec.recon
    assert "val/loss" in trainer.callback_metrics


def test_random_reference_is_never_one_of_the_target_frames():
    """reference: random with the sync loss's 5 targets: over many draws the reference falls on
    frames outside the targets and never inside (the old draw excluded only the first target)."""
    model = CVAEModule(net=NET, optim={"reference": "random"})
    frames = torch.zeros(4096, 8, 1, 1, 3)
    idx, ref = model._pick(frames, True, 5)
    inside = (ref[:, None] == idx).any(dim=1)
    assert not inside.any()
    assert idx.shape == (4096, 5) and set(ref.tolist()) == {0, 1, 2, 5, 6, 7}  # 3 and 4: always targets
    _, ref_first = model._pick(frames[:, :5], True, 5)  # no frame outside the targets: the first
    assert (ref_first == 0).all()


def test_augmentation_same_parameters_for_reference_and_target():
    from lightning_modules.cvae import build_augmentation

    torch.manual_seed(0)
    x = torch.rand(6, 1, 3, 32, 32).expand(-1, 3, -1, -1, -1)  # same image as reference + 2 targets
    y = build_augmentation(p=1.0)(x)
    assert y.shape == x.shape
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 0], y[:, 2])
    assert not torch.allclose(y, x)
    model = CVAEModule(net=NET)
    assert all(k.startswith("net.") for k in model.state_dict())  # no aux / kornia state in checkpoints


def test_masked_target_input_follows_the_config(real_batch, monkeypatch):
    """optim.masked_target: "full" (paper 000: a fully masked face) never shows the network any of
    the target frame; "lower_half" (Wav2Lip) shows the target's upper half in training."""
    from lightning_modules.networks.cvae import mask_target

    seen = {}
    for mode in ("lower_half", "full"):
        model = CVAEModule(net=NET, optim={"augment": False, "masked_target": mode})
        forward = model.net.forward

        def capture(masked, reference, *args, _mode=mode, _forward=forward, **kwargs):
            seen.setdefault(_mode, []).append((masked.clone(), reference.clone()))
            return _forward(masked, reference, *args, **kwargs)

        monkeypatch.setattr(model.net, "forward", capture)
        model.model_step(real_batch, train=True)
        model.generate(real_batch[f"frames_{S}"][:, 0], real_batch["mel"], real_batch["emotion"], 2)
    for masked, _ in seen["full"]:
        assert masked.abs().sum() == 0
    train_masked = seen["lower_half"][0][0]
    assert train_masked[..., S // 2:, :].abs().sum() == 0 and train_masked[..., :S // 2, :].abs().sum() > 0
    generate_masked, generate_ref = seen["lower_half"][1]
    assert torch.equal(generate_masked, mask_target(generate_ref, "lower_half"))  # the reference's upper half
    with pytest.raises(ValueError, match="masked_target"):
        CVAEModule(net=NET, optim={"masked_target": "upper_half"})


def test_speaker_neutral_reference_is_the_speakers_neutral_frame(crema_shards, real_batch, monkeypatch):
    """optim.reference: speaker_neutral: in training every sample's reference is its speaker's
    most closed-mouth frame of a neutral training clip (not a frame of its emotional window, which
    already shows the emotion); validation keeps the window's first frame."""
    from primitives.speaker_neutral import most_closed_neutral_frames

    model = CVAEModule(net=NET, optim={"reference": "speaker_neutral", "augment": False})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=model.data_keys,
                                          window=5, batch_size=4, train_batches=1, seed=0))
    model.fit_speaker_neutrals(dm)
    clips = {c["key"]: c for c in dm.iter_training_clips(("lmk", f"frames_{S}"), max_clips=None)}
    chosen = most_closed_neutral_frames(clips.values())
    assert set(model.neutral_frames) == set(chosen) == set(real_batch["speaker"])
    for speaker, frame in chosen.items():
        assert frame.neutral and clips[frame.key]["meta"]["emotion"] == "neutral"
        assert torch.equal(model.neutral_frames[speaker][0], torch.from_numpy(clips[frame.key][f"frames_{S}"][frame.t]))
    seen = []
    forward = model.net.forward

    def capture(masked, reference, *args, **kwargs):
        seen.append(reference.clone())
        return forward(masked, reference, *args, **kwargs)

    monkeypatch.setattr(model.net, "forward", capture)
    model.model_step(real_batch, train=True)
    model.model_step(real_batch, train=False)
    for i, speaker in enumerate(real_batch["speaker"]):
        assert torch.equal(seen[0][i], model.neutral_frames[speaker][0].permute(2, 0, 1).float() / 255)
        assert torch.equal(seen[1][i], real_batch[f"frames_{S}"][i, 0].permute(2, 0, 1).float() / 255)
    assert not any(k.startswith("neutral") for k in model.state_dict())  # training data, not weights
    with pytest.raises(ValueError, match="reference"):
        CVAEModule(net=NET, optim={"reference": "neutral"})

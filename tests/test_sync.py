"""LSE-D / LSE-C metrics, the expert SyncNet and its Lightning module.

The key test (``test_tiny_syncnet_learns_sync_on_real_clips``) trains a tiny SyncNet for a few
seconds on the 2 real training clips of the ``crema_shards`` fixture (64 px crops) and checks
that it scores the real in-sync clips better than the same clips with the audio shifted by
10 frames. It is seeded, runs single-threaded (2 shared cores: intra-op threads slow tiny convs
down by 10-30x under load) and asserts on averages over all window positions of both clips.
"""

import math

import numpy as np
import pytest
import torch

from eval_metrics.sync import (
    LSEC,
    LSED,
    SyncEvaluator,
    lip_sync_error,
    load_public_syncnet,
    sync_distances,
)
from lightning_modules.networks.syncnet import SyncNet, SyncNetConfig, sync_loss, sync_probability
from primitives.sync_windows import clip_windows, face_windows, mel_windows
from lightning_modules.syncnet import SyncNetModule
from syncnet_python_reference import syncnet_python_evaluate

TINY = dict(crop_size=64, face_channels=(8, 16, 32), audio_channels=(8, 16, 32), embed_dim=32)
KEYS = ("lmk", "frames_64", "mel")


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------- (a) LSE metric
@pytest.mark.parametrize("n_frames,shift", [(50, 0), (50, 3), (120, 0), (120, -7)])
def test_lse_is_syncnet_pythons_definition(n_frames, shift):
    """LSE-D / LSE-C / offset equal syncnet_python's Min dist / Confidence / -AV offset to 1e-6 on
    syncnet_v2-sized (1024-d) embeddings of a 2 s and a 4.8 s clip, with a known shift recovered."""
    n, d = n_frames - 4, 1024
    g = torch.Generator().manual_seed(n_frames + shift)
    v = 3 * torch.randn(n, d, generator=g)
    a = 3 * torch.randn(n, d, generator=g)
    for t in range(n):  # A[t + shift] = V[t] + noise where both exist
        if 0 <= t + shift < n:
            a[t + shift] = v[t] + 0.5 * torch.randn(d, generator=g)
    av_offset, min_dist, conf, mdist = syncnet_python_evaluate(v.numpy().astype(np.float64),
                                                                a.numpy().astype(np.float64))
    r = lip_sync_error(v, a, max_offset=15)
    np.testing.assert_allclose(r.distances[0].numpy(), mdist, rtol=1e-6)
    assert float(r.lse_d[0]) == pytest.approx(min_dist, rel=1e-6)
    assert float(r.lse_c[0]) == pytest.approx(conf, rel=1e-6)
    assert int(r.offset[0]) == -av_offset == shift
    overlap = lip_sync_error(v, a, max_offset=15, padding="overlap")  # the variant differs when shifted
    assert int(overlap.offset[0]) == shift
    assert (float(overlap.lse_d[0]) == pytest.approx(min_dist, rel=1e-6)) == (shift == 0)


def test_lse_overlap_variant_and_shapes():
    g = torch.Generator().manual_seed(2)
    v, a = torch.randn(3, 20, 4, generator=g), torch.randn(3, 20, 4, generator=g)
    d = sync_distances(v, a, max_offset=5, padding="overlap")
    assert d.shape == (3, 11) and d.dtype == torch.float64
    for b in range(3):
        for o in (-5, 0, 4):
            ref = np.mean([np.linalg.norm(v[b, t].numpy() - a[b, t + o].numpy())
                           for t in range(20) if 0 <= t + o < 20])
            assert float(d[b, o + 5]) == pytest.approx(ref, rel=1e-5)
    assert sync_distances(v, a, max_offset=5).shape == (3, 11)
    with pytest.raises(ValueError, match="max_offset"):
        sync_distances(v[:, :5], a[:, :5], max_offset=15)
    with pytest.raises(ValueError, match="padding"):
        sync_distances(v, a, padding="zeros")


def test_lse_metric_is_batch_split_independent():
    g = torch.Generator().manual_seed(3)
    v, a = torch.randn(6, 30, 8, generator=g), torch.randn(6, 30, 8, generator=g)
    a[:3] = v[:3] + 0.05 * torch.randn(3, 30, 8, generator=g)
    whole_d, whole_c = LSED(), LSEC()
    whole_d.update(v, a)
    whole_c.update(v, a)
    split_d, split_c = LSED(), LSEC()
    for lo, hi in [(0, 1), (1, 4), (4, 6)]:
        split_d.update(v[lo:hi], a[lo:hi])
        split_c.update(v[lo:hi], a[lo:hi])
    split_d.update(v[5], a[5])  # a single (N, D) clip counts once
    whole_d.update(v[5], a[5])
    assert torch.allclose(whole_d.compute(), split_d.compute())
    assert torch.allclose(whole_c.compute(), split_c.compute())
    r = lip_sync_error(v, a)
    assert float(whole_c.compute()) == pytest.approx(float(r.lse_c.mean()), rel=1e-6)
    with pytest.warns(UserWarning):  # torchmetrics warns on compute() before update()
        assert math.isnan(float(LSED().compute()))


def test_public_syncnet_loader_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="syncnet_v2.model.*syncnet_python"):
        load_public_syncnet(tmp_path / "syncnet_v2.model")
    fake = tmp_path / "syncnet_v2.model"
    fake.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="sha256"):
        load_public_syncnet(fake, sha256="0" * 64)
    with pytest.raises(ValueError, match="not a PyTorch state dict"):  # the loader is tested in test_syncnet_v2.py
        load_public_syncnet(fake)


# --------------------------------------------------------------------------- (b) network
def test_windows_shapes_and_alignment():
    b, t, s = 2, 10, 16
    frames = torch.arange(t, dtype=torch.uint8).view(1, t, 1, 1, 1).expand(b, t, s, s, 3).contiguous()
    frames[:, :, : s // 2] = 255  # upper half must not appear
    faces = face_windows(frames, torch.tensor([0, 5]))
    assert faces.shape == (2, 15, s // 2, s) and faces.dtype == torch.float32
    assert torch.allclose(faces[1, ::3, 0, 0] * 255, torch.arange(5, 10).float())
    mel = torch.arange(32).float().view(1, 32, 1).expand(b, 32, 80)
    mels = mel_windows(mel, torch.tensor([0, 5]))
    assert mels.shape == (2, 1, 80, 16)
    assert mels[1, 0, 0, 0] == 16 and mels[1, 0, 0, -1] == 31  # frame 5 -> row int(3.2 * 5) = 16
    with pytest.raises(ValueError):
        mel_windows(mel, 6)  # rows 19..34 > 32
    f, m = clip_windows(frames[0], mel[0])
    assert f.shape[0] == m.shape[0] == 6  # T - 4


def test_syncnet_shapes_and_gradients():
    torch.manual_seed(0)
    for mode in ("relu", "affine"):
        net = SyncNet(SyncNetConfig(prob_mode=mode, **TINY))
        faces, mels = torch.rand(4, 15, 32, 64), torch.randn(4, 1, 80, 16)
        v, s = net(faces, mels)
        assert v.shape == s.shape == (4, 32)
        assert torch.allclose(v.norm(dim=1), torch.ones(4), atol=1e-5) or mode == "relu"
        p = sync_probability(v, s, mode)
        assert p.shape == (4,) and bool(((p >= 0) & (p <= 1)).all())
        loss = sync_loss(v, s, torch.tensor([1.0, 0.0, 1.0, 0.0]), mode)
        loss.backward()
        for enc in (net.face_encoder, net.audio_encoder):
            grads = [q.grad for q in enc.parameters()]
            assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
            assert sum(float(gr.abs().sum()) for gr in grads) > 0
    with pytest.raises(ValueError, match="faces must be"):
        net.embed_face(torch.rand(1, 15, 64, 64))
    # eq. 5: all-positive labels == mean(-log P)
    v, s = torch.rand(3, 8), torch.rand(3, 8)
    assert float(sync_loss(v, s, torch.ones(3))) == pytest.approx(
        float(-sync_probability(v, s).log().mean()), rel=1e-5)


def test_module_config_and_data_keys():
    assert SyncNetModule.data_keys == ("lmk", "frames_128", "mel")
    m = SyncNetModule(net=TINY, optim={"lr": 1e-3})
    assert m.data_keys == KEYS
    cfg = m.resolved_config()
    assert cfg["net"]["crop_size"] == 64 and cfg["optim"]["lr"] == 1e-3
    with pytest.raises(ValueError, match=r"syncnet\.net\.\w+: unknown key"):
        SyncNetModule(net={"crop": 64})


# --------------------------------------------------------------------------- (c) real clips
def _train_clips(shard_dir):
    from datamodules.talking_face import DecodeSample, ReadShards, SelectMembers, shard_urls

    urls = shard_urls(shard_dir, "train")
    return [DecodeSample(KEYS)(s) for s in ReadShards(SelectMembers(KEYS))([{"url": u} for u in urls])]


def test_tiny_syncnet_learns_sync_on_real_clips(crema_shards, one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clips = _train_clips(crema_shards / "shards" / "crema_d")
    assert len(clips) == 2
    module = SyncNetModule(net=TINY, optim={"lr": 1e-3, "pairs_per_window": 4})
    opt = module.configure_optimizers()
    t_win, mel_win = 25, int(3.2 * 25)
    module.train()
    for _ in range(80):  # ~8 s on one core
        keys, frames, mels = [], [], []
        for b in range(8):
            c = clips[b % 2]
            s = int(rng.integers(0, len(c["lmk"]) - t_win + 1))
            keys.append(f"{c['key']}@{s}")
            frames.append(c["frames_64"][s:s + t_win])
            mels.append(c["mel"][(16 * s) // 5:(16 * s) // 5 + mel_win])
        batch = {"key": keys, "frames_64": torch.from_numpy(np.stack(frames)), "mel": torch.from_numpy(np.stack(mels))}
        loss, *_ = module.model_step(batch, train=True)
        opt.zero_grad()
        loss.backward()
        opt.step()

    evaluator = SyncEvaluator.own_expert(module.net, "crema_d")
    assert evaluator.name == "own expert SyncNet trained on crema_d"
    shift = 10
    p_sync, p_off, d_sync, d_off, offsets = [], [], [], [], []
    for c in clips:
        v, a = evaluator.embed(torch.from_numpy(c["frames_64"]), torch.from_numpy(c["mel"]))
        assert v.shape == a.shape == (len(c["lmk"]) - 4, 32)
        # audio shifted by 10 frames: visual window t paired with audio window t + 10
        p_sync.append(module.net.probability(v, a).mean())
        p_off.append(module.net.probability(v[:-shift], a[shift:]).mean())
        in_sync, off_sync = lip_sync_error(v, a), lip_sync_error(v[:-shift], a[shift:])
        d_sync.append(float(in_sync.distances[0, 15]))  # distance at offset 0
        d_off.append(float(off_sync.distances[0, 15]))
        offsets.append((int(in_sync.offset[0]), int(off_sync.offset[0])))
        score = evaluator.score(torch.from_numpy(c["frames_64"][:50]), torch.from_numpy(c["mel"][:160]))
        assert score["evaluator"] == evaluator.name and math.isfinite(score["lse_d"])  # a 2 s clip works
    p_sync, p_off = float(torch.stack(p_sync).mean()), float(torch.stack(p_off).mean())
    msg = f"p_sync={p_sync:.3f} p_off={p_off:.3f} d_sync={d_sync} d_off={d_off} offsets={offsets}"
    assert p_sync > p_off + 0.03, msg
    assert np.mean(d_sync) < np.mean(d_off), msg
    # the LSE search recovers the shift on average over the clips (in sync ~0, shifted ~-10)
    assert np.mean([abs(o) for o, _ in offsets]) <= 2, msg
    assert np.mean([o for _, o in offsets]) <= -shift + 2, msg


def test_lightning_fit_smoke(crema_shards, one_thread, tmp_path):
    import lightning as L

    from datamodules.talking_face import DataConfig, TalkingFaceDataModule

    module = SyncNetModule(net=TINY, optim={"lr": 1e-3, "pairs_per_window": 2})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards" / "crema_d"), keys=module.data_keys,
                                          window=25, batch_size=2, train_batches=2, windows_per_clip=2,
                                          shuffle_buffer=4))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert "val/loss" in metrics and "val/acc" in metrics and torch.isfinite(metrics["val/loss"])

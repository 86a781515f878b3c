"""Port of syncnet_python's public SyncNet (:mod:`eval_metrics.syncnet_v2`) and ``SyncEvaluator.public``.

The real ``syncnet_v2.model`` is not available offline: the tests check the architecture against
names / shapes / counts written from joonson/syncnet_python ``SyncNetModel.py``, the loader on
randomly initialised weights saved the way syncnet_python's file is (a plain state dict), and the
input preparation against a literal re-statement of ``SyncNetInstance.evaluate``'s slicing.
Forward passes at 224 px cost ~0.1 s per window on 2 CPU cores, so the clips are short.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from eval_metrics.sync import LSEC, LSED, SyncEvaluator, lip_sync_error
from eval_metrics.syncnet_v2 import (
    SYNCNET_V2_URL,
    SyncNetV2,
    load_public_syncnet,
    syncnet_v2_embed,
    syncnet_v2_frames,
    syncnet_v2_mfcc,
    syncnet_v2_window_count,
)
from primitives.checksum import file_sha256
from syncnet_python_reference import syncnet_python_evaluate

# Sequential indices of the Conv layers in S.netcnnaud / S.netcnnlip (each followed by its BatchNorm
# at index + 1), and of the Linear (0, 3) / BatchNorm1d (1) layers of netfcaud / netfclip.
CONV_IDX = (0, 4, 8, 11, 14, 18)
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# representative shapes written from SyncNetModel.py
SHAPES = {
    "netcnnaud.0.weight": (64, 1, 3, 3),
    "netcnnaud.4.weight": (192, 64, 3, 3),
    "netcnnaud.8.weight": (384, 192, 3, 3),
    "netcnnaud.18.weight": (512, 256, 5, 4),
    "netcnnaud.19.running_var": (512,),
    "netfcaud.0.weight": (512, 512),
    "netfcaud.1.running_mean": (512,),
    "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7),
    "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.14.weight": (256, 256, 1, 3, 3),
    "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netcnnlip.19.num_batches_tracked": (),
    "netfclip.3.bias": (1024,),
}
# by hand from SyncNetModel.py (conv: in*out*k + out, BN: 2*ch, Linear: in*out + out):
# audio CNN 4,875,712 + lip CNN 7,177,920 + 2 FC heads x 788,992
N_PARAMS = 13_631_616


def _expected_keys() -> set[str]:
    keys = set()
    for net in ("netcnnaud", "netcnnlip"):
        for i in CONV_IDX:
            keys |= {f"{net}.{i}.weight", f"{net}.{i}.bias"} | {f"{net}.{i + 1}.{k}" for k in BN_KEYS}
    for net in ("netfcaud", "netfclip"):
        keys |= {f"{net}.{i}.{k}" for i in (0, 3) for k in ("weight", "bias")} | {f"{net}.1.{k}" for k in BN_KEYS}
    return keys


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded random SyncNetV2 (non-trivial BN statistics) saved as a plain state dict."""
    torch.manual_seed(0)
    net = SyncNetV2()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(net.state_dict(), path)
    return net.eval(), path


@pytest.fixture(scope="module")
def real_clip(crema_shards):
    """First 2 s (50 frames, 32000 samples) of the real test clip, 64 px crops."""
    from pipeline.protocol.clips import split_clips

    clip = next(split_clips(crema_shards / "shards" / "crema_d", "frames_64"))
    frames, audio = clip["frames_64"][:50], clip["audio"][:32000]
    assert frames.shape == (50, 64, 64, 3) and audio.shape == (32000,) and audio.dtype == np.float32
    return torch.from_numpy(frames), torch.from_numpy(audio)


def test_port_has_syncnet_python_state_dict():
    net = SyncNetV2()
    sd = net.state_dict()
    assert set(sd) == _expected_keys() and len(sd) == 102
    for key, shape in SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert sum(p.numel() for p in net.parameters()) == N_PARAMS
    with torch.no_grad():  # documented I/O shapes (audio: 13 MFCC x 20 columns -> 1x1 after the CNN)
        net.eval()
        assert net.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert net.netcnnaud(torch.randn(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        assert net.netcnnlip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)
    with pytest.raises(ValueError, match="frames must be"):
        net.forward_lip(torch.zeros(1, 3, 5, 96, 96))


def test_load_public_syncnet(weights, tmp_path):
    net, path = weights
    loaded = load_public_syncnet(path)
    assert not loaded.training and loaded.weights_sha256 == file_sha256(path)
    g = torch.Generator().manual_seed(1)
    mfcc, lips = torch.randn(4, 1, 13, 20, generator=g) * 10, torch.rand(1, 3, 5, 224, 224, generator=g) * 255
    with torch.no_grad():
        assert torch.equal(loaded.forward_aud(mfcc), net.forward_aud(mfcc))
        assert torch.equal(loaded.forward_lip(lips), net.forward_lip(lips))
    assert load_public_syncnet(path, sha256=file_sha256(path).upper()).weights_sha256 == file_sha256(path)
    with pytest.raises(ValueError, match="sha256"):
        load_public_syncnet(path, sha256="0" * 64)
    with pytest.raises(FileNotFoundError) as err:
        load_public_syncnet(tmp_path / "nowhere" / "syncnet_v2.model")
    assert "syncnet_v2.model" in str(err.value) and SYNCNET_V2_URL in str(err.value)
    assert "download_model.sh" in str(err.value)

    sd = OrderedDict(net.state_dict())
    # files saved before PyTorch 0.4.1 have no num_batches_tracked buffers: tolerated
    old = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    torch.save(old, tmp_path / "old.model")
    with torch.no_grad():
        assert torch.equal(load_public_syncnet(tmp_path / "old.model").forward_aud(mfcc), net.forward_aud(mfcc))
    broken = OrderedDict((k, v) for k, v in sd.items() if k != "netfclip.3.weight")
    torch.save(broken, tmp_path / "missing.model")
    with pytest.raises(ValueError, match=r"missing keys \['netfclip.3.weight'\]"):
        load_public_syncnet(tmp_path / "missing.model")
    torch.save({**sd, "netfclip.3.weight": torch.zeros(512, 512)}, tmp_path / "shape.model")
    with pytest.raises(ValueError, match=r"wrong shapes \['netfclip.3.weight: \(512, 512\)"):
        load_public_syncnet(tmp_path / "shape.model")
    torch.save({"__S__." + k: v for k, v in sd.items()}, tmp_path / "prefixed.model")
    with pytest.raises(ValueError, match="unexpected keys"):
        load_public_syncnet(tmp_path / "prefixed.model")


class _Recorder(SyncNetV2):
    """Records the network inputs and returns zero embeddings (no 224 px forward passes)."""

    def __init__(self):
        super().__init__()
        self.lips, self.auds = [], []

    def forward_lip(self, frames):
        self.lips.append(frames.clone())
        return torch.zeros(len(frames), 1024)

    def forward_aud(self, mfcc):
        self.auds.append(mfcc.clone())
        return torch.zeros(len(mfcc), 1024)


def test_inputs_match_syncnet_instance_evaluate():
    """Windows fed to the network == SyncNetInstance.evaluate's imtv / cct slices (restated here)."""
    import python_speech_features

    rng = np.random.default_rng(0)
    t, n_samples = 13, 12 * 640 + 100  # audio shorter than the video: min(T, L // 640) = 12
    rgb = rng.integers(0, 256, (t, 224, 224, 3), dtype=np.uint8)
    pcm = rng.integers(-8000, 8000, n_samples).astype(np.int16)
    audio = pcm.astype(np.float32) / 32768  # what soundfile returns for 16-bit PCM
    net = _Recorder()
    v, a = syncnet_v2_embed(net, rgb, audio, batch_size=3)
    n = syncnet_v2_window_count(t, n_samples)
    assert n == 7 and v.shape == a.shape == (n, 1024) and v.dtype == torch.float32
    # SyncNetInstance.evaluate: cv2.imread frames (BGR) stacked to (1, 3, T, H, W), float
    images = [f[..., ::-1] for f in rgb]
    imtv = torch.from_numpy(np.transpose(np.stack(images, axis=3)[None], (0, 3, 4, 1, 2)).astype(float)).float()
    mfcc = np.stack([np.array(c) for c in zip(*python_speech_features.mfcc(pcm, 16000))])  # (13, M)
    cct = torch.from_numpy(mfcc[None, None].astype(float)).float()
    lastframe = min(t, math.floor(n_samples / 640)) - 5
    ref_lip = torch.cat([imtv[:, :, i:i + 5] for i in range(lastframe)])
    ref_aud = torch.cat([cct[:, :, :, i * 4:i * 4 + 20] for i in range(lastframe)])
    assert [len(x) for x in net.lips] == [3, 3, 1]
    assert torch.equal(torch.cat(net.lips), ref_lip)
    assert torch.equal(torch.cat(net.auds), ref_aud)
    with pytest.raises(ValueError, match="too short"):
        syncnet_v2_embed(net, rgb[:5], audio)


def test_frame_and_audio_conversion(real_clip):
    red = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    red[..., 0] = 255  # pure red RGB
    bgr = syncnet_v2_frames(red)
    assert bgr.shape == (2, 224, 224, 3) and bgr.dtype == torch.uint8
    assert int(bgr[..., 0].max()) == 0 and int(bgr[..., 2].min()) == 255  # red lands in channel 2 (BGR)
    with pytest.raises(ValueError, match="uint8"):
        syncnet_v2_frames(red.astype(np.float32))
    _, audio = real_clip
    mfcc = syncnet_v2_mfcc(audio)
    assert mfcc.shape == (13, 199) and mfcc.dtype == torch.float32  # 100 columns/s: 1 + (32000 - 400) / 160
    assert torch.isfinite(mfcc).all() and float(mfcc.std()) > 0
    pcm = np.round(audio.numpy() * 32768).astype(np.int16)  # float -> int16 is exact for 16-bit PCM
    assert np.array_equal(pcm.astype(np.float32) / 32768, audio.numpy())
    assert torch.equal(syncnet_v2_mfcc(pcm), mfcc)
    with pytest.raises(ValueError, match="16 kHz"):
        syncnet_v2_mfcc(audio, sample_rate=22050)


def test_real_2s_clip_embeddings_and_lse(weights, real_clip):
    """On a real clip: embeddings == the network run on SyncNetInstance.evaluate's own slices (one
    batch), and LSE-D / LSE-C / offset == the NumPy transcription of calc_pdist + evaluate."""
    import python_speech_features

    frames, audio = real_clip
    net, _ = weights
    v, a = syncnet_v2_embed(net, frames, audio, batch_size=16)
    assert syncnet_v2_window_count(50, 32000) == 45
    assert v.shape == a.shape == (45, 1024) and v.dtype == a.dtype == torch.float32

    bgr = syncnet_v2_frames(frames.numpy()).numpy()  # (50, 224, 224, 3), as cv2.imread gives them
    imtv = torch.from_numpy(np.transpose(np.stack(list(bgr), axis=3)[None], (0, 3, 4, 1, 2)).astype(float)).float()
    pcm = np.round(audio.numpy() * 32768).astype(np.int16)
    mfcc = np.stack([np.array(c) for c in zip(*python_speech_features.mfcc(pcm, 16000))])  # (13, 199)
    cct = torch.from_numpy(mfcc[None, None].astype(float)).float()
    with torch.no_grad():
        ref_v = net.forward_lip(torch.cat([imtv[:, :, i:i + 5] for i in range(45)]))
        ref_a = net.forward_aud(torch.cat([cct[:, :, :, i * 4:i * 4 + 20] for i in range(45)]))
    torch.testing.assert_close(v, ref_v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, ref_a, rtol=1e-4, atol=1e-4)

    r = lip_sync_error(v, a, max_offset=15)
    offset, min_dist, conf, mdist = syncnet_python_evaluate(v.double().numpy(), a.double().numpy(), vshift=15)
    np.testing.assert_allclose(r.distances[0].double().numpy(), mdist, rtol=1e-5)
    assert int(r.offset[0]) == -offset  # syncnet_python prints AV offset = -offset
    assert float(r.lse_d[0]) == pytest.approx(min_dist, rel=1e-5)
    assert float(r.lse_c[0]) == pytest.approx(conf, rel=1e-4, abs=1e-5)


def test_public_evaluator(weights, real_clip):
    _, path = weights
    frames, audio = real_clip
    ev = SyncEvaluator.public(path, max_offset=3)
    assert ev.name == f"public syncnet_v2 (syncnet_python weights, sha256 {file_sha256(path)[:12]})"
    frames, audio = frames[:10], audio[:6400]  # 10 frames -> 5 windows > max_offset 3
    s = ev.score(frames, audio=audio)
    assert s["evaluator"] == ev.name and math.isfinite(s["lse_d"]) and s["lse_d"] >= 0 and s["lse_c"] >= 0
    lse_d, lse_c = LSED(max_offset=3), LSEC(max_offset=3)
    ev.update([lse_d, lse_c], frames, None, audio)
    assert float(lse_d.compute()) == pytest.approx(s["lse_d"], rel=1e-5)
    assert float(lse_c.compute()) == pytest.approx(s["lse_c"], rel=1e-5, abs=1e-6)
    mel = torch.zeros(32, 80)
    with pytest.raises(ValueError, match="audio waveform"):
        ev.score(frames, mel)
    with pytest.raises(ValueError, match="audio waveform"):
        ev.update([LSED()], frames, mel)
    with pytest.raises(FileNotFoundError, match="syncnet_v2.model"):
        SyncEvaluator.public(path.parent / "missing" / "syncnet_v2.model")
    own = SyncEvaluator.own_expert(SyncNetV2(), "crema_d")  # any module; fails before using it
    with pytest.raises(ValueError, match="mel spectrogram"):
        own.score(frames, audio=audio)
    with pytest.raises(ValueError, match="inputs must be"):
        SyncEvaluator(SyncNetV2(), "x", inputs="mfcc")


def test_window_counts_per_evaluator():
    """What evaluate_video checks before scoring a clip (a 2 s clip: 50 frames, 32000 samples)."""
    public = SyncEvaluator(SyncNetV2(), "untrained syncnet_v2", inputs="waveform")
    own = SyncEvaluator(torch.nn.Linear(1, 1), "untrained expert")
    assert public.n_windows(50, 32000) == 45 and own.n_windows(50, 32000) == 46
    assert public.n_windows(50, 640 * 20) == 15  # the audio is shorter: it limits syncnet_v2's windows
    assert public.n_windows(50, 640 * 20) <= public.max_offset  # too short for +-15 offsets: skipped

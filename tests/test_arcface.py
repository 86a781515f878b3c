"""ArcFace IResNet (insightface arcface_torch) embedder for CSIM: architecture, weight loading,
preprocessing and CSIM end to end (random weights; the real backbone.pth is never downloaded)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_metrics.arcface import (ARCHS, ArcFaceEmbedder, IResNet, crop_matrix, infer_arch, load_arcface_state_dict,
                                  preprocess_crops)
from eval_metrics.identity import CSIM
from primitives.checksum import file_sha256
from pipeline.extract.align import ARCFACE_TEMPLATE

R50_PARAMS = 43_590_848  # IResNet-50, 512 features (insightface's r50: ~43.6M)


def _iresnet_params(layers, num_features=512) -> int:
    """Parameter count derived from arcface_torch's iresnet.py, independently of the module."""
    bn = 2  # weight + bias per channel (BatchNorm1d/2d); running stats are buffers

    def block(cin, c, down):
        n = bn * cin + 9 * cin * c + bn * c + c + 9 * c * c + bn * c  # bn1 conv1 bn2 prelu conv2 bn3
        return n + (cin * c + bn * c if down else 0)  # downsample: conv1x1 + BN

    total = 27 * 64 + bn * 64 + 64  # conv1, bn1, prelu
    cin = 64
    for c, blocks in zip((64, 128, 256, 512), layers):
        total += block(cin, c, True) + (blocks - 1) * block(c, c, False)
        cin = c
    return total + bn * 512 + 512 * 49 * num_features + num_features + bn * num_features  # bn2, fc, features


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory) -> tuple[Path, IResNet]:
    """A randomly initialised IResNet-18 (random BN statistics too) saved as a backbone.pth."""
    torch.manual_seed(0)
    net = IResNet.from_arch("r18")
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


@pytest.fixture(scope="module")
def r18_embedder(r18_file) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(r18_file[0], arch="r18", batch_size=3)


def _clip_frames(talking_clips: Path, n: int = 4) -> np.ndarray:
    """First n frames (n, 224, 224, 3) RGB uint8 of a real sample clip."""
    cap = cv2.VideoCapture(str(talking_clips / "pcavs" / "Input" / "00002.mp4"))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        assert ok, "could not read the sample clip"
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


# ---------------------------------------------------------------- architecture


def test_param_counts_and_checkpoint_keys():
    with torch.device("meta"):  # shapes only, no memory
        nets = {arch: IResNet.from_arch(arch) for arch in ARCHS}
    net = nets["r50"]
    assert sum(p.numel() for p in net.parameters()) == R50_PARAMS == _iresnet_params(ARCHS["r50"])
    for arch, other in nets.items():
        assert sum(p.numel() for p in other.parameters()) == _iresnet_params(ARCHS[arch]), arch
        assert infer_arch(other.state_dict()) == arch
    sd = net.state_dict()
    expected = {
        "conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer1.0.downsample.1.running_mean": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3), "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer3.13.conv2.weight": (256, 256, 3, 3),
        "layer3.13.prelu.weight": (256,), "layer4.2.bn3.weight": (512,), "bn2.weight": (512,),
        "fc.weight": (512, 25088), "fc.bias": (512,), "features.weight": (512,),
        "features.running_var": (512,), "features.num_batches_tracked": (),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.1.downsample.0.weight" not in sd and "layer3.14.conv1.weight" not in sd
    assert len(sd) == 475 and not net.features.weight.requires_grad


def test_forward_shape_and_errors(r18_file):
    net = r18_file[1]
    with torch.no_grad():
        out = net(torch.rand(1, 3, 112, 112) * 2 - 1)
    assert out.shape == (1, 512) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="112"):
        net(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="unknown IResNet arch"):
        IResNet.from_arch("r42")


# ---------------------------------------------------------------- weight loading


def test_round_trip_and_errors(r18_file, tmp_path, talking_clips):
    path, net = r18_file
    emb = ArcFaceEmbedder(path, arch="r18", sha256=file_sha256(path).upper(), batch_size=3)
    frames = _clip_frames(talking_clips, 4)  # 4 frames, batch_size 3: two chunks
    got = emb(frames)
    with torch.no_grad():
        want = net(preprocess_crops(frames, 0.6))
    assert got.shape == (4, 512) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.equal(emb.preprocess(frames[0]), preprocess_crops(frames[:1], 0.6))  # (H, W, 3) accepted
    digest = file_sha256(path)[:12]
    assert emb.evaluator == f"ArcFace IResNet-18 (insightface arcface_torch backbone.pth, sha256 {digest})"
    assert emb.dim == 512 and not emb.net.training

    with pytest.raises(ValueError, match="checksum mismatch"):
        ArcFaceEmbedder(path, arch="r18", sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="backbone.pth") as err:
        ArcFaceEmbedder(tmp_path / "missing.pth")
    assert "evaluate.arcface_weights" in str(err.value) and "arcface_torch" in str(err.value)
    with pytest.raises(ValueError, match=r"arch='r50'.*looks like arch='r18'.*missing"):
        ArcFaceEmbedder(path, arch="r50")
    with pytest.raises(ValueError, match="unknown IResNet arch"):
        ArcFaceEmbedder(path, arch="r42")
    with pytest.raises(ValueError, match="face_scale"):
        ArcFaceEmbedder(path, arch="r18", face_scale=1.5)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="state dict"):
        ArcFaceEmbedder(tmp_path / "junk.pth", arch="r18")


def test_state_dict_variants(r18_file):
    _, net = r18_file
    # fp16 tensors and a DistributedDataParallel "module." prefix still load (as float32)
    half = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    other = IResNet.from_arch("r18")
    load_arcface_state_dict(other, half, "r18")
    assert other.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(other.fc.weight, net.fc.weight.half().float())
    bad = dict(net.state_dict())
    bad["fc.weight"] = bad["fc.weight"][:, :100]  # e.g. a backbone for another input size
    with pytest.raises(ValueError, match=r"1 shape mismatches.*fc.weight"):
        load_arcface_state_dict(IResNet.from_arch("r18"), bad, "r18")


# ---------------------------------------------------------------- preprocessing


def test_preprocess_crops_the_centred_face_square():
    s = 256  # ArcFace square: [51.2, 204.8] crop pixels, 112 / 153.6 px per crop px
    img = np.zeros((s, s, 3), dtype=np.uint8)
    img[53:60, 53:60, 1] = 255  # green, inside (just past the top-left corner)
    img[100:110, 30:51, 0] = 255  # red, outside (left of the square, touching it)
    img[205:230, 120:140, 2] = 255  # blue, outside (below the square)
    x = preprocess_crops(img, face_scale=0.6)
    assert x.shape == (1, 3, 112, 112) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert (x[0, 0] == -1).all() and (x[0, 2] == -1).all()  # red and blue cut
    green = x[0, 1]
    assert (green[2:6, 2:6] == 1).all()  # crop px 53..59 -> ArcFace px 1.3..6.4
    assert (green[8:] == -1).all() and (green[:, 8:] == -1).all()

    # face_scale 1 on a 112 px crop: no resampling, just arcface_torch's (x / 255 - 0.5) / 0.5
    rgb = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    want = (torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    assert torch.equal(preprocess_crops(torch.from_numpy(rgb), face_scale=1.0), want)
    with pytest.raises(ValueError, match="square"):
        preprocess_crops(np.zeros((112, 100, 3), dtype=np.uint8), 1.0)
    with pytest.raises(ValueError, match="face_scale"):
        preprocess_crops(rgb, 0.0)


@pytest.mark.parametrize("face_scale, size", [(0.6, 256), (0.6, 64), (0.8, 224)])
def test_crop_matrix_maps_our_template_onto_arcface(face_scale, size):
    ours = (0.5 + face_scale * (ARCFACE_TEMPLATE - 0.5)) * size  # pipeline/extract/align.py::crop_transforms
    m = crop_matrix(size, face_scale)
    np.testing.assert_allclose(ours @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE * 112, atol=1e-9)


# ---------------------------------------------------------------- CSIM end to end


def test_csim_with_arcface_on_real_frames(r18_embedder, r18_file, talking_clips):
    emb = r18_embedder
    frames = torch.from_numpy(_clip_frames(talking_clips, 3))  # (3, 224, 224, 3) uint8
    refs = torch.stack([frames[0], frames[2]])  # (B=2, H, W, 3)
    same = CSIM(emb)
    same.update(refs[:, None].expand(2, 2, *refs.shape[1:]), refs)  # every generated frame = its reference
    assert same.evaluator == emb.evaluator and same.evaluator.startswith("ArcFace IResNet-18")
    assert abs(same.compute().item() - 1.0) < 1e-5

    moved = CSIM(emb)
    moved.update(frames[None, 1:], frames[0][None])  # the next 2 frames of the clip vs frame 0
    # known answer: the backbone itself on the preprocessed frames, normalised and averaged by hand
    _, net = r18_file
    with torch.no_grad():
        e = net(preprocess_crops(frames.numpy(), 0.6)).double().numpy()  # (3, 512)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    expected = float(np.mean(e[1:] @ e[0]))
    assert expected < 1.0 - 1e-4
    assert moved.compute().item() == pytest.approx(expected, abs=1e-6)

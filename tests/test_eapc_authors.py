"""The EAPC authors' evaluation (eval_metrics.eapc_authors) against transcriptions of their formulas."""

import math

import numpy as np
import pytest
import torch

from eval_metrics.eapc_authors import AuthorsImageScores, AuthorsLandmarkScores, psnr_gray_wrap, strided_windows


def _their_lmd(pred: np.ndarray, gt: np.ndarray) -> float:
    """calculate_LMD (norm_distance 1) on (BS, N_frame, N_point, 2): mean over points, frames, batch."""
    return float(np.mean(np.mean(np.mean(np.sqrt(np.sum((pred - gt) ** 2, axis=3)), axis=2), axis=1)))


def _their_lmv(pred: np.ndarray, gt: np.ndarray) -> float:
    vp, vg = pred[:, 1:] - pred[:, :-1], gt[:, 1:] - gt[:, :-1]
    return _their_lmd(vp, vg)


def test_landmark_scores_equal_a_numpy_transcription_on_stride_3_windows():
    rng = np.random.default_rng(0)
    gt = rng.uniform(40, 200, (31, 68, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    windows = [slice(s, s + 25) for s in range(0, 31 - 24, 3)]  # starts 0, 3, 6
    assert len(windows) == 3 and strided_windows(torch.from_numpy(gt)).shape == (3, 25, 68, 2)
    metric = AuthorsLandmarkScores()
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    got = metric.compute()
    for region, idx in (("mouth", slice(48, 68)), ("face", slice(0, 48))):
        p = np.stack([pred[w][:, idx] for w in windows])
        g = np.stack([gt[w][:, idx] for w in windows])
        assert got[f"authors_{region}_ld"] == pytest.approx(_their_lmd(p, g), rel=1e-12)
        assert got[f"authors_{region}_lvd"] == pytest.approx(_their_lmv(p, g), rel=1e-12)
    # no alignment: a head that moves 5 px scores 5 (our aligned metric would score 0)
    shifted = AuthorsLandmarkScores()
    shifted.update(torch.from_numpy(gt + 5.0 * np.array([0.6, 0.8])), torch.from_numpy(gt))
    assert shifted.compute()["authors_face_ld"] == pytest.approx(5.0)
    assert shifted.compute()["authors_face_lvd"] == pytest.approx(0.0, abs=1e-9)
    short = AuthorsLandmarkScores()
    short.update(torch.zeros(24, 68, 2), torch.zeros(24, 68, 2))  # shorter than a window: nothing scored
    assert math.isnan(short.compute()["authors_mouth_ld"])


def test_psnr_with_uint8_wrap_around_by_hand():
    a = np.array([[10, 200]], dtype=np.uint8)
    b = np.array([[26, 0]], dtype=np.uint8)
    # (10 - 26) mod 256 = 240, 240^2 mod 256 = 0; 200^2 = 40000, mod 256 = 64: "MSE" (0 + 64) / 2 = 32
    assert psnr_gray_wrap(a, b) == pytest.approx(20 * math.log10(255 / math.sqrt(32)))
    assert psnr_gray_wrap(a, b) > 33 > 20 * math.log10(255 / math.sqrt((16 ** 2 + 200 ** 2) / 2))  # the true PSNR: 5.1 dB
    assert psnr_gray_wrap(a, a) == 100.0
    with pytest.raises(ValueError, match="uint8"):
        psnr_gray_wrap(a.astype(np.float32), b.astype(np.float32))


def test_image_scores_average_grey_frames():
    rng = np.random.default_rng(1)
    real = torch.from_numpy(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    metric = AuthorsImageScores()
    metric.update(real, real)
    assert metric.compute() == {"authors_psnr_gray_wrap": 100.0, "authors_ssim_gray": pytest.approx(1.0)}
    grey = torch.from_numpy(rng.integers(0, 200, (3, 32, 32, 1), dtype=np.uint8)).expand(3, 32, 32, 3)
    metric = AuthorsImageScores()
    metric.update(grey + 16, grey)  # 16 grey levels brighter everywhere: 16^2 = 256 wraps to 0
    assert metric.compute()["authors_psnr_gray_wrap"] == 100.0  # a perfect score (the true PSNR: 24.0 dB)


def test_crema_d_split_rule_reproduces_the_authors_lists(shared_datasets):
    from pipeline.splits import eapc_authors_crema_d_lists

    reference = shared_datasets.parent / "reference" / "eapc-authors"
    lists = eapc_authors_crema_d_lists(shared_datasets / "crema-d-meta/summaryTable.csv")
    for split in ("train", "test"):
        assert sorted(lists[split]) == (reference / f"crema_d_{split}.txt").read_text().split()
    assert (len(lists["train"]), len(lists["test"])) == (5953, 1489)
    assert {c[:4] for c in lists["train"]} == {c[:4] for c in lists["test"]}  # all 91 actors in both: not speaker-disjoint


def test_authors_split_on_the_sample_and_the_mead_lists(shared_datasets, tmp_path):
    """On the sample: actor 1001's six real clips split 3 / 3 by the rule; the CREMA-D-layout clips
    (actors 99xx, not in CREMA-D) are in no list: recorded as dropped, never silently."""
    from pipeline.manifest import build_manifest, dataset_config
    from pipeline.params import ParamsError
    from pipeline.splits import read_split_lists

    params = {"manifest": {"seed": 0, "split_fractions": {"train": 0.8, "test": 0.2}, "datasets": {"crema_d": {
        "format": "crema_d", "root": str(shared_datasets), "parts": ["crema-d-layout", "crema-d-real"],
        "summary_table": str(shared_datasets / "crema-d-meta/summaryTable.csv"), "split": "eapc_authors"}}}}
    rows, issues = build_manifest(dataset_config(params, "crema_d"))
    assert {r.id: r.split for r in rows} == {"1001_DFA_ANG_XX": "test", "1001_DFA_DIS_XX": "test", "1001_DFA_FEA_XX": "test",
                                             "1001_DFA_HAP_XX": "train", "1001_DFA_NEU_XX": "train", "1001_DFA_SAD_XX": "train"}
    dropped = [i for i in issues if i.problem == "not_in_split_lists"]
    assert len(dropped) == 16 and not any(i.kept for i in dropped)
    lists = read_split_lists({"train": str(shared_datasets.parent / "reference/eapc-authors/mead_M003_train.txt")})
    assert len(lists["train"]) == 533 and lists["train"][0] == "M003_angry_1_001"
    params["manifest"]["datasets"]["crema_d"]["split"] = "lists"
    with pytest.raises(ParamsError, match="split_lists: required"):
        dataset_config(params, "crema_d")


def test_dlib68_in_the_authors_face_box_on_a_real_crema_d_clip(shared_datasets):
    """Their landmarks: dlib 68 inside MediaPipe's box (+50 px a side, 512 px frame) scaled to a 256 px
    box. On 1001_DFA_NEU_XX the eye centres are ~61 px apart (our aligned 256 px crops: ~48); the
    reference README quotes ~69-70 for the authors' own files (not matched here: see the README)."""
    from pipeline.extract.dlib68 import authors_dlib68
    from pipeline.extract.video import decode_video

    frames = decode_video(shared_datasets / "crema-d-real/VideoFlash/1001_DFA_NEU_XX.flv").frames[:4]
    lmk = authors_dlib68(frames)
    assert lmk.shape == (4, 68, 2) and lmk.dtype == np.float32 and not np.isnan(lmk).any()
    eyes = np.linalg.norm(lmk[:, 36:42].mean(1) - lmk[:, 42:48].mean(1), axis=1)
    assert np.all((eyes > 55) & (eyes < 75)), eyes
    assert lmk.min() > 0 and lmk.max() < 256  # inside the face box
    assert np.isnan(authors_dlib68(np.zeros((1, 360, 480, 3), np.uint8))).all()  # no face: NaN, the caller counts it


def test_authors_mfcc_is_each_frames_own_40_ms():
    """Their per-frame MFCC: python_speech_features on the frame's 640 samples, rows 1..28, c1..c12."""
    import python_speech_features as psf

    from pipeline.extract.audio import authors_mfcc

    wav = np.random.default_rng(2).normal(0, 0.1, 640 * 6).astype(np.float32)
    out = authors_mfcc(wav, 6)
    assert out.shape == (6, 28, 12) and out.dtype == np.float32
    for i in (0, 5):
        theirs = psf.mfcc(wav[i * 640:i * 640 + 640], 16000, winlen=0.010, winstep=0.001)[1:-2, 1:]
        np.testing.assert_allclose(out[i], theirs, rtol=1e-5, atol=1e-4)
    wav2 = wav.copy()
    wav2[640:1280] = np.sin(np.arange(640) * 0.3) * 0.1  # frame 1 only: no other frame's MFCC changes (no context)
    changed = np.abs(authors_mfcc(wav2, 6) - out).max(axis=(1, 2)) > 1e-3
    assert changed.tolist() == [False, True, False, False, False, False]


def test_authors_llf_is_their_librosa_recipe():
    """Their LLFs (their MEAD feature script, transcribed here with librosa's defaults): hop 640,
    frames centred on each video frame's start, CQT chroma of the harmonic part, raw values."""
    import librosa

    from pipeline.extract.audio import authors_llf

    rng = np.random.default_rng(3)
    t = np.arange(640 * 10) / 16000
    y = (0.2 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 1e-4, t.size)).astype(np.float32)
    out = authors_llf(y, 10)
    assert out.shape == (10, 25) and out.dtype == np.float32
    hop = 640
    theirs = np.concatenate([
        librosa.feature.rms(y=y, frame_length=hop, hop_length=hop),
        librosa.feature.chroma_cqt(y=librosa.effects.harmonic(y), sr=16000, hop_length=hop),
        librosa.feature.spectral_centroid(y=y, sr=16000, win_length=hop, hop_length=hop),
        librosa.feature.spectral_bandwidth(y=y, sr=16000, win_length=hop, hop_length=hop),
        librosa.feature.spectral_contrast(y=y, sr=16000, win_length=hop, hop_length=hop),
        librosa.feature.spectral_flatness(y=y, win_length=hop, hop_length=hop),
        librosa.feature.spectral_rolloff(y=y, sr=16000, win_length=hop, hop_length=hop),
        librosa.feature.zero_crossing_rate(y=y, frame_length=hop, hop_length=hop),
    ])[:, :10].T
    np.testing.assert_allclose(out, theirs, rtol=1e-5, atol=1e-5)
    assert np.argmax(out[5, 1:13]) == 9  # 220 Hz is an A: chroma column A (C=0 .. B=11)
    assert out[5, 13] == pytest.approx(220, rel=0.3)  # spectral centroid near the tone, in Hz


def test_emotion_pretraining_phase_trains_the_embedding_alone():
    """optim.emotion_pretrain_steps: the first steps optimise emotion CE + 0.1 level CE, so only the
    emotion branch moves; then the landmark loss trains everything."""
    from lightning_modules.eapc import EAPCModule, emotion_pretrain_loss

    logits = torch.tensor([[[2.0, 0.0]]])  # (1, 1, 2)
    levels = torch.tensor([[[0.0, 0.0, 0.0]]])
    loss = emotion_pretrain_loss(logits, levels, torch.tensor([0]), torch.tensor([2]))
    assert loss["emotion_ce"] == pytest.approx(np.log(1 + np.exp(-2.0)), rel=1e-5)
    assert loss["level_ce"] == pytest.approx(np.log(3), rel=1e-5)
    assert loss["total"] == pytest.approx(loss["emotion_ce"].item() + 0.1 * np.log(3), rel=1e-5)
    unspecified = emotion_pretrain_loss(logits, levels, torch.tensor([0]), torch.tensor([0]))
    assert unspecified["level_ce"] == 0  # CREMA-D's XX level: no level term

    small = {"audio_hidden": 16, "audio_layers": 1, "lm_hidden": 16, "lm_layers": 1, "emotion_hidden": 16,
             "emotion_lstm": 8, "emotion_layers": 1, "emotion_dim": 8, "fc_dims": [16]}
    module = EAPCModule(net={"variant": "authors", **small},
                        optim={"loss": "authors", "emotion_pretrain_steps": 1, "lr": 1e-2})
    batch = {"mfcc": torch.randn(4, 5, 28, 12), "llf": torch.randn(4, 5, 25), "ref_lmk": torch.zeros(4, 68, 2),
             "lmk": torch.rand(4, 5, 68, 2) * 256, "emotion": torch.tensor([0, 1, 2, 3]),
             "intensity": torch.tensor([1, 2, 3, 1]), "key": ["a", "b", "c", "d"]}
    module.train()
    losses = module.model_step(batch)[1]
    assert set(losses) == {"emotion_ce", "level_ce", "total"}
    losses["total"].backward()
    grads = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("net.emotion.") for n in grads)
    module.zero_grad()
    module.eval()  # not training: the landmark loss (validation)
    assert "lmd" in module.model_step(batch)[1]
    with pytest.raises(ValueError, match="emotion_pretrain_steps"):
        EAPCModule(optim={"emotion_pretrain_steps": 5})  # the paper variant has no level head


def test_authors_network_size_inputs_and_loss():
    """16.5 M trainable parameters at their widths (their script prints 16.5M); absolute landmarks
    from MFCC and LLFs only; their loss 0.1 x MSE + point-wise distance."""
    from lightning_modules.eapc import EAPCModule, authors_loss

    module = EAPCModule(net={"variant": "authors"}, optim={"loss": "authors", "lmk_key": "lmk_dlib68",
                                                           "mfcc_key": "mfcc_authors", "llf_key": "llf_authors"})
    assert round(sum(p.numel() for p in module.parameters()) / 1e6, 1) == 16.5
    assert module.data_keys == ("lmk", "lmk_dlib68", "mfcc_authors", "llf", "llf_authors")
    torch.manual_seed(0)
    batch = {"mfcc_authors": torch.randn(2, 25, 28, 12), "llf_authors": torch.randn(2, 25, 25),
             "ref_lmk": torch.zeros(2, 68, 2), "lmk_dlib68": torch.rand(2, 25, 68, 2) * 256, "emotion": torch.tensor([0, 1])}
    module.eval()
    pred = module(batch)
    assert pred.shape == (2, 25, 68, 2)
    assert torch.equal(pred, module({**batch, "ref_lmk": torch.ones(2, 68, 2) * 100}))  # no reference input
    target = torch.zeros(1, 1, 2, 2)
    guess = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]])  # one point 5 px off, one exact
    loss = authors_loss(guess, target)
    assert loss["lmd"] == pytest.approx(2.5) and loss["mse"] == pytest.approx(25 / 4)
    assert loss["total"] == pytest.approx(0.1 * 25 / 4 + 2.5)
    with pytest.raises(ValueError, match="variant"):
        EAPCModule(net={"variant": "theirs"})

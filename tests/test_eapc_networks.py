"""EAPC stage-1 networks and landmark losses (paper file 001, eq. 1-9, 11-13). Fast, CPU only."""

import dataclasses

import pytest
import torch

from lightning_modules.networks.eapc import (
    EAPC,
    DualLSTM,
    EAPCConfig,
    EAPCOutput,
    LLFsEncoder,
    llf_feature_transform,
)
from lightning_modules.networks.losses import eapc_loss, landmark_distance_loss, landmark_mse

TINY = dict(
    llf_hidden=16, llf_layers=2, audio_hidden=16, audio_layers=2, lm_hidden=16, lm_layers=2,
    ref_hidden=8, attention_dim=16, fc_dims=(32, 16),
)


def _llf(b, t, g):
    """Raw-scale LLFs: [0,1] features, Hz-scale centroid/bandwidth/rolloff, dB contrast."""
    x = torch.rand(b, t, 25, generator=g)
    x[..., 13:16] = 500 + 6000 * torch.rand(b, t, 3, generator=g)
    x[..., 18:25] = 5 + 50 * torch.rand(b, t, 7, generator=g)
    return x


def _batch(b=2, t=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    mfcc = torch.randn(b, t, 28, 12, generator=g)
    llf = _llf(b, t, g)
    ref = 128 + 40 * torch.randn(b, 68, 2, generator=g)
    lmk = ref[:, None] + 3 * torch.randn(b, t, 68, 2, generator=g)
    emotion = torch.randint(0, 8, (b,), generator=g)
    return mfcc, llf, ref, lmk, emotion


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return EAPC(EAPCConfig(**{**TINY, **kw})).eval()


# ---------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("t", [25, 10])
def test_output_shapes_default_config(t):
    mfcc, llf, ref, _, _ = _batch(2, t)
    model = EAPC().eval()
    with torch.no_grad():
        out = model(mfcc, llf, ref)
    assert isinstance(out, EAPCOutput)
    assert out.lmk.shape == (2, t, 68, 2) and out.lmk.dtype == torch.float32
    assert out.emotion_logits.shape == (2, t, 8)
    assert torch.isfinite(out.lmk).all() and torch.isfinite(out.emotion_logits).all()
    # submodules on their own
    assert LLFsEncoder(model.cfg)(llf).shape == (2, t, 8)
    probs = torch.softmax(out.emotion_logits, -1)
    assert model.dual_lstm(mfcc, probs, ref).shape == (2, t, 68, 2)


def test_untrained_offset_model_starts_near_reference():
    mfcc, llf, ref, _, _ = _batch()
    with torch.no_grad():
        out = _model()(mfcc, llf, ref)
    # small last-layer init: displacements of a few pixels at most, identity kept
    assert (out.lmk - ref[:, None]).abs().max() < 20


def test_absolute_mode_runs_and_ignores_offset_path():
    mfcc, llf, ref, _, _ = _batch()
    with torch.no_grad():
        out = _model(predict_offsets=False)(mfcc, llf, ref)
    assert out.lmk.shape == (2, 25, 68, 2)
    # around the crop centre when untrained, not around ref
    assert (out.lmk - 128).abs().max() < 30


def test_emotion_override_and_broadcast():
    mfcc, llf, ref, _, _ = _batch()
    model = _model()
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 5]), 8).float()
    with torch.no_grad():
        a = model(mfcc, llf, ref, emotion_probs=onehot).lmk
        b = model(mfcc, llf, ref, emotion_probs=onehot[:, None].expand(2, 25, 8)).lmk
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------- ablations


def test_prev_frame_switch_changes_computation_same_params():
    mfcc, llf, ref, _, _ = _batch()
    full = _model()
    outs = {}
    for kw in ({}, {"use_prev_frame": False}, {"prev_frame_mode": "cumsum"}):
        m = _model(**kw)
        assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in full.parameters())
        m.load_state_dict(full.state_dict())  # identical weights
        with torch.no_grad():
            outs[str(kw)] = m(mfcc, llf, ref).lmk
    keys = list(outs)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not torch.allclose(outs[keys[i]], outs[keys[j]]), (keys[i], keys[j])
    # (eq. 5 at the first frame is checked exactly in test_prev_frame_residual_reading_is_exact;
    # here the local attention mixes neighbouring frames into frame 0.)


def test_prev_frame_residual_reading_is_exact():
    cfg = EAPCConfig(**TINY)
    torch.manual_seed(0)
    dual = DualLSTM(cfg).eval()
    x_af = torch.randn(2, 7, cfg.audio_hidden)
    ref_n = torch.randn(2, 68, 2) * 0.3
    with torch.no_grad():
        res = dual.landmark_features(x_af, ref_n)
        dual.cfg = dataclasses.replace(cfg, use_prev_frame=False)
        h = dual.landmark_features(x_af, ref_n)
        dual.cfg = dataclasses.replace(cfg, prev_frame_mode="cumsum")
        cum = dual.landmark_features(x_af, ref_n)
    torch.testing.assert_close(res[:, 0], h[:, 0])
    torch.testing.assert_close(res[:, 1:], h[:, 1:] + h[:, :-1])
    torch.testing.assert_close(cum, torch.cumsum(h, 1))


def test_attention_switch_changes_computation_and_params():
    mfcc, llf, ref, _, _ = _batch()
    full = _model()
    ablated = _model(use_attention=False)
    n_full = sum(p.numel() for p in full.parameters())
    n_abl = sum(p.numel() for p in ablated.parameters())
    assert n_abl < n_full  # no W_q, W_k
    missing, unexpected = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(".query." in k or ".key." in k for k in unexpected)
    with torch.no_grad():
        a, b = full(mfcc, llf, ref).lmk, ablated(mfcc, llf, ref).lmk
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    # window 0: softmax over one element -> exactly the "w/o attention" fusion (literal eq. 6)
    w0 = _model(attention_window=0)
    w0.load_state_dict(full.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(w0(mfcc, llf, ref).lmk, b)


def test_attention_is_local():
    cfg = EAPCConfig(**{**TINY, "attention_window": 1})
    torch.manual_seed(0)
    att = DualLSTM(cfg).attention.eval()
    x_afnew = torch.randn(1, 9, cfg.audio_hidden + cfg.n_emotions)
    x_lm = torch.randn(1, 9, cfg.lm_hidden)
    x_lm2 = x_lm.clone()
    x_lm2[:, 8] += 5.0  # perturb the last frame only
    with torch.no_grad():
        a, b = att(x_afnew, x_lm), att(x_afnew, x_lm2)
    torch.testing.assert_close(a[:, :7], b[:, :7])  # frames further than 1 away unaffected
    assert not torch.allclose(a[:, 7:], b[:, 7:])


# ---------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kw", [{}, {"use_attention": False, "use_prev_frame": False}, {"dropout": 0.1}])
def test_gradient_reaches_every_parameter(kw):
    mfcc, llf, ref, lmk, emotion = _batch(2, 10)
    model = _model(**kw).train()
    out = model(mfcc, llf, ref)
    loss = eapc_loss(out.lmk, lmk[:, :10], out.emotion_logits, emotion, w_emotion=0.5, unit=256)["total"]
    loss.backward()
    for name, p in model.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_llf_encoder_gets_gradient_from_landmarks_alone():
    mfcc, llf, ref, lmk, emotion = _batch(2, 10)
    model = _model()
    out = model(mfcc, llf, ref)
    eapc_loss(out.lmk, lmk[:, :10], w_emotion=0.0)["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.llf_encoder.parameters())


def test_emotion_input_changes_landmarks():
    mfcc, llf, ref, _, _ = _batch()
    model = EAPC().eval()
    probs = torch.full((2, 25, 8), 1 / 8)
    with torch.no_grad():
        a = model(mfcc, llf, ref, emotion_probs=probs).lmk
        b = model(mfcc, llf, ref, emotion_probs=torch.nn.functional.one_hot(torch.tensor([3, 3]), 8).float()).lmk
    assert (a - b).abs().max() > 1e-4
    # and through the LLFs path: different LLFs -> different emotion -> different landmarks
    with torch.no_grad():
        c = model(mfcc, llf, ref).lmk
        d = model(mfcc, llf * 1.5, ref).lmk
    assert not torch.allclose(c, d)


# ---------------------------------------------------------------------------------- normalisation


def test_llf_normalisation_buffers():
    _, llf, _, _, _ = _batch()
    enc = LLFsEncoder(EAPCConfig(**TINY))
    assert "llf_mean" in enc.state_dict() and "llf_std" in enc.state_dict()
    z0 = enc.normalize(llf)
    torch.testing.assert_close(z0, llf_feature_transform(llf))  # identity stats by default
    assert z0.abs().max() < 10  # Hz-scale values compressed by the signed log1p
    mean, std = enc.fit_llf_stats(llf)
    z = enc.normalize(llf)
    torch.testing.assert_close(z.reshape(-1, 25).mean(0), torch.zeros(25), atol=1e-4, rtol=0)
    enc.set_llf_stats(mean, std)
    with pytest.raises(ValueError, match="std"):
        enc.set_llf_stats(mean, torch.zeros(25))
    with pytest.raises(ValueError, match="25"):
        enc.set_llf_stats(torch.zeros(3), torch.ones(3))


def test_mfcc_stats_and_state_dict_roundtrip():
    mfcc, llf, ref, _, _ = _batch()
    model = _model()
    model.fit_input_stats(mfcc=mfcc * 50 - 200, llf=llf)
    clone = _model(seed=1)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.dual_lstm.mfcc_mean, model.dual_lstm.mfcc_mean)
    with torch.no_grad():
        torch.testing.assert_close(clone(mfcc, llf, ref).lmk, model(mfcc, llf, ref).lmk)


def test_forward_shape_errors():
    mfcc, llf, ref, _, _ = _batch()
    model = _model()
    with pytest.raises(ValueError, match="llf"):
        model(mfcc, llf[..., :24], ref)
    with pytest.raises(ValueError, match="mfcc"):
        model(mfcc[:, :, :27], llf, ref)
    with pytest.raises(ValueError, match="share"):
        model(mfcc, llf[:, :10], ref)
    with pytest.raises(ValueError, match="ref_lmk"):
        model(mfcc, llf, ref[:, :60])


# ---------------------------------------------------------------------------------- losses


def test_loss_known_answers():
    g = torch.Generator().manual_seed(0)
    target = 256 * torch.rand(2, 5, 68, 2, generator=g)
    assert landmark_mse(target, target.clone()) == 0
    assert landmark_distance_loss(target, target.clone(), mode="pairwise") == 0
    assert landmark_distance_loss(target, target.clone(), mode="point") == 0
    shifted = target + torch.tensor([3.0, 4.0])  # translate every point by 5 px
    assert torch.isclose(landmark_distance_loss(shifted, target, mode="point"), torch.tensor(5.0))
    assert landmark_distance_loss(shifted, target, mode="pairwise") < 1e-3
    assert torch.isclose(landmark_mse(shifted, target), torch.tensor(25.0))
    # scaling the face changes the pairwise mode
    scaled = 128 + 1.1 * (target - 128)
    assert landmark_distance_loss(scaled, target, mode="pairwise") > 1.0
    with pytest.raises(ValueError, match="mode"):
        landmark_distance_loss(target, target, mode="bogus")
    with pytest.raises(ValueError, match="shape"):
        landmark_mse(target, target[:, :4])


def test_loss_gradients_finite_for_coincident_points():
    pred = torch.zeros(1, 1, 4, 2, requires_grad=True)  # all points coincide
    target = torch.zeros(1, 1, 4, 2)
    for mode in ("pairwise", "point"):
        loss = landmark_distance_loss(pred, target, mode=mode)
        (g,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(g).all()


def test_eapc_loss_terms():
    _, _, _, lmk, emotion = _batch(2, 5)
    logits = torch.randn(2, 5, 8)
    pred = lmk + 1.0
    out = eapc_loss(pred, lmk, logits, emotion, w_mse=1.0, w_lmd=1.0, w_emotion=0.5)
    assert set(out) == {"mse", "lmd", "emotion_ce", "total"}
    torch.testing.assert_close(out["total"], out["mse"] + out["lmd"] + 0.5 * out["emotion_ce"])
    off = eapc_loss(pred, lmk, logits, emotion, w_emotion=0.0)
    torch.testing.assert_close(off["total"], off["mse"] + off["lmd"])  # eq. 13
    perfect = eapc_loss(lmk, lmk, None, None, w_emotion=0.0)
    assert perfect["total"] == 0 and "emotion_ce" not in perfect
    normed = eapc_loss(pred, lmk, w_emotion=0.0, unit=256.0)
    torch.testing.assert_close(normed["mse"], off["mse"] / 256**2)
    with pytest.raises(ValueError, match="w_emotion"):
        eapc_loss(pred, lmk, None, None, w_emotion=1.0)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        eapc_loss(pred, lmk, logits, torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="w_lmd"):
        eapc_loss(pred, lmk, w_lmd=-1.0, w_emotion=0.0)


# ---------------------------------------------------------------------------------- overfit


def test_one_batch_overfit():
    """~150 Adam steps on one fixed random batch cut the loss (and each landmark term) >= 10x.

    The last FC width (128) exceeds the number of frames (B*T = 40) so that random per-frame
    targets are representable (a 16-d bottleneck could not fit 40 independent 136-d targets).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to CPU contention
    try:
        torch.manual_seed(0)
        mfcc, llf, ref, lmk, emotion = _batch(4, 10, seed=3)
        cfg = {**TINY, "llf_hidden": 32, "audio_hidden": 32, "lm_hidden": 32, "fc_dims": (128, 128)}
        model = EAPC(EAPCConfig(**cfg))
        model.fit_input_stats(mfcc=mfcc, llf=llf)
        steps = 150
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

        def losses():
            out = model(mfcc, llf, ref)
            return eapc_loss(out.lmk, lmk, out.emotion_logits, emotion, w_emotion=0.1, unit=256.0)

        with torch.no_grad():
            first = losses()
        for _ in range(steps):
            opt.zero_grad()
            losses()["total"].backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            last = losses()
    finally:
        torch.set_num_threads(threads)
    for key in ("total", "mse", "lmd"):
        assert last[key] * 10 <= first[key], (key, first[key].item(), last[key].item())


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field,value",
    [
        ("mfcc_window", 0),
        ("n_mfcc", -1),
        ("llf_layers", 0),
        ("lm_layers", 0),
        ("audio_hidden", 2.5),
        ("attention_window", -1),
        ("ref_hidden", -3),
        ("fc_dims", ()),
        ("fc_dims", (512, 0)),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("prev_frame_mode", "sum"),
        ("use_attention", "yes"),
        ("crop_size", 0),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        EAPCConfig(**{field: value})


def test_config_defaults_and_from_dict():
    cfg = EAPCConfig()
    assert (cfg.mfcc_window, cfg.n_mfcc, cfg.n_llf, cfg.n_emotions) == (28, 12, 25, 8)
    assert (cfg.llf_layers, cfg.audio_layers, cfg.fc_dims, cfg.n_landmarks) == (3, 3, (512, 256), 68)
    assert cfg.use_prev_frame and cfg.use_attention and cfg.predict_offsets
    assert EAPCConfig.from_dict({"fc_dims": [64, 32]}).fc_dims == (64, 32)
    with pytest.raises(ValueError, match="bogus"):
        EAPCConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="ref_hidden"):
        EAPCConfig(ref_hidden=0, predict_offsets=False)


def test_lstm_runs_under_cpu_bf16_autocast_in_float32():
    """oneDNN has no bf16 LSTM on CPUs without AVX-512 BF16: nn.LSTM under CPU autocast stops there
    ("could not create a primitive descriptor"); the project's LSTM runs in float32 instead."""
    from lightning_modules.networks.rnn import LSTM

    torch.manual_seed(0)
    lstm, x = LSTM(8, 16, num_layers=2, batch_first=True), torch.randn(3, 5, 8)
    plain, _ = lstm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, (h, c) = lstm(x.bfloat16())
    assert mixed.dtype == torch.float32 and h.shape == (2, 3, 16)
    assert torch.allclose(mixed, plain, atol=1e-2)  # only the input's bf16 rounding differs

"""Tests of the landmark metrics M-LD, M-LVD, F-LD, F-LVD (``eval_metrics.landmarks``).

A plain NumPy reference (own Umeyama, loops over frames) is the oracle; known answers pin the
readings (F-LVD over all 68 points, alignment to the ground truth's reference).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile

import numpy as np
import pytest
import torch

from eval_metrics import (
    FACE_IDX,
    MOUTH_IDX,
    STABLE_IDX,
    LandmarkDistance,
    LandmarkMetrics,
    LandmarkVelocityDifference,
    align_landmarks,
    face_ld,
    face_lvd,
    landmark_distance,
    landmark_velocity_difference,
    mouth_ld,
    mouth_lvd,
)

ATOL = 1e-4


# ------------------------------------------------------------------------------------------
# NumPy reference implementation (deliberately loop-based and independent of the torch code)
# ------------------------------------------------------------------------------------------
def np_umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum ||s R src_i + t - dst_i||^2 (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / len(src)
    s = float((sig * d).sum() / var_s)
    t = mu_d - s * rot @ mu_s
    return s, rot, t


def np_align(seq: np.ndarray, ref_stable: np.ndarray) -> np.ndarray:
    """seq (T, 68, 2) -> each frame mapped by the similarity taking its stable points to ref."""
    out = np.empty_like(seq)
    for f in range(seq.shape[0]):
        s, rot, t = np_umeyama(seq[f, list(STABLE_IDX)], ref_stable)
        out[f] = s * seq[f] @ rot.T + t
    return out


def np_metric(preds, target, idx, align: bool, velocity: bool) -> float:
    preds = np.asarray(preds, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    idx = list(idx)
    total, n = 0.0, 0
    for b in range(preds.shape[0]):
        p, g = preds[b], target[b]
        if align:
            ref = g[:, list(STABLE_IDX)].mean(axis=0)
            p, g = np_align(p, ref), np_align(g, ref)
        p, g = p[:, idx], g[:, idx]
        if velocity:
            p, g = np.diff(p, axis=0), np.diff(g, axis=0)
        for f in range(p.shape[0]):
            for k in range(p.shape[1]):
                total += math.hypot(*(p[f, k] - g[f, k]))
                n += 1
    return total / n


# ------------------------------------------------------------------------------------------
# data helpers
# ------------------------------------------------------------------------------------------
def rot2(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def random_similarity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply an independent random similarity transform to every frame of x (B, T, 68, 2)."""
    b, t = x.shape[:2]
    angle = (torch.rand(b, t, generator=gen, dtype=x.dtype) - 0.5) * 0.8  # +-23 degrees
    scale = 0.7 + 0.6 * torch.rand(b, t, 1, 1, generator=gen, dtype=x.dtype)
    shift = (torch.rand(b, t, 1, 2, generator=gen, dtype=x.dtype) - 0.5) * 60
    center = torch.tensor([128.0, 128.0], dtype=x.dtype)
    return scale * ((x - center) @ rot2(angle).transpose(-1, -2)) + center + shift


def talking_faces(b: int, t: int, seed: int, head_motion: bool = True) -> torch.Tensor:
    """Plausible-ish sequences: a random template + per-frame jitter + per-frame head motion."""
    gen = torch.Generator().manual_seed(seed)
    template = 60 + 136 * torch.rand(b, 1, 68, 2, generator=gen, dtype=torch.float64)
    x = template + 2.0 * torch.randn(b, t, 68, 2, generator=gen, dtype=torch.float64)
    if head_motion:
        x = random_similarity(x, gen)
    return x.float()


def still_face(b: int, t: int) -> torch.Tensor:
    """A face that does not move at all: 68 distinct points, identical in every frame."""
    k = torch.arange(68, dtype=torch.float32)
    frame = torch.stack([60.0 + 2.0 * k, 80.0 + 5.0 * (k % 7) + 0.5 * k], dim=-1)
    return frame.expand(b, t, 68, 2).clone()


FUNCS = {
    "mouth_ld": (mouth_ld, MOUTH_IDX, False),
    "mouth_lvd": (mouth_lvd, MOUTH_IDX, True),
    "face_ld": (face_ld, FACE_IDX, False),
    "face_lvd": (face_lvd, FACE_IDX, True),
}


# ------------------------------------------------------------------------------------------
# against the NumPy reference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("name", list(FUNCS))
def test_matches_numpy_reference(name, align, seed):
    fn, idx, velocity = FUNCS[name]
    target = talking_faces(3, 7, seed)
    preds = talking_faces(3, 7, seed + 100)
    got = fn(preds, target, align=align)
    want = np_metric(preds.numpy(), target.numpy(), idx, align, velocity)
    assert got.shape == () and got.dtype == torch.float32
    assert abs(float(got) - want) < ATOL, (name, align, float(got), want)


@pytest.mark.parametrize("seed", [3, 4])
def test_align_landmarks_matches_numpy(seed):
    x = talking_faces(2, 6, seed)
    got = align_landmarks(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    xn = x.double().numpy()
    for b in range(2):
        want = np_align(xn[b], xn[b][:, list(STABLE_IDX)].mean(0))
        np.testing.assert_allclose(got[b].double().numpy(), want, atol=ATOL)


def test_align_landmarks_explicit_reference_forms():
    x = talking_faces(2, 4, 5)
    ref68 = x[:, 0]
    a = align_landmarks(x, reference=ref68)
    b = align_landmarks(x, reference=ref68[:, list(STABLE_IDX)])
    torch.testing.assert_close(a, b)
    # frame 0 mapped onto itself is (numerically) the identity
    torch.testing.assert_close(a[:, 0], x[:, 0], atol=1e-3, rtol=0)
    # a single (68, 2) template broadcasts over the batch
    c = align_landmarks(x, reference=ref68[0])
    torch.testing.assert_close(c[0], a[0])


# ------------------------------------------------------------------------------------------
# F-LVD reading: all 68 points, not mouth LVD added to face LVD
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("align", [True, False])
def test_face_lvd_is_over_all_points_not_mouth_plus_face(align):
    speed = 3.0
    target = still_face(1, 6)
    preds = target.clone()
    steps = torch.arange(6, dtype=torch.float32)
    preds[:, :, 48:68, 0] += speed * steps[None, :, None]  # only the mouth drifts, 3 px/frame
    m_lvd = float(mouth_lvd(preds, target, align=align))
    f_lvd = float(face_lvd(preds, target, align=align))
    non_mouth = [i for i in FACE_IDX if i not in MOUTH_IDX]
    rest_lvd = float(landmark_velocity_difference(preds, target, non_mouth, align=align))
    assert m_lvd == pytest.approx(speed, abs=ATOL)
    assert rest_lvd == pytest.approx(0.0, abs=ATOL)
    # all 68 points: 20 of them move at 3 px/frame relative to GT
    assert f_lvd == pytest.approx(speed * 20 / 68, abs=ATOL)
    assert f_lvd == pytest.approx(
        np_metric(preds.numpy(), target.numpy(), FACE_IDX, align, True), abs=ATOL
    )
    # the peer-script readings give other numbers
    assert abs(f_lvd - (m_lvd + rest_lvd)) > 1.0
    assert abs(f_lvd - (m_lvd + f_lvd)) > 1.0


# ------------------------------------------------------------------------------------------
# known answers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("name", list(FUNCS))
def test_identical_sequences_give_zero(name, align):
    x = talking_faces(2, 5, 11)
    assert float(FUNCS[name][0](x, x.clone(), align=align)) == pytest.approx(0.0, abs=ATOL)


def test_constant_offset():
    target = talking_faces(2, 5, 12)
    d = torch.tensor([3.0, -4.0])
    preds = target + d
    for fn in (mouth_ld, face_ld):
        assert float(fn(preds, target, align=False)) == pytest.approx(5.0, abs=ATOL)
        assert float(fn(preds, target, align=True)) == pytest.approx(0.0, abs=ATOL)
    for fn in (mouth_lvd, face_lvd):  # a constant offset has no velocity, aligned or not
        assert float(fn(preds, target, align=False)) == pytest.approx(0.0, abs=ATOL)
        assert float(fn(preds, target, align=True)) == pytest.approx(0.0, abs=ATOL)


def test_per_frame_similarity_is_removed_by_alignment():
    target = talking_faces(2, 8, 13)
    preds = random_similarity(target.double(), torch.Generator().manual_seed(99)).float()
    for name, (fn, _, _) in FUNCS.items():
        assert float(fn(preds, target, align=True)) == pytest.approx(0.0, abs=1e-3), name
    assert float(face_ld(preds, target, align=False)) > 1.0


def test_moving_mouth_vs_still_mouth():
    # GT: still face. Prediction: mouth opens/closes, lower-lip points jump +-2 px each frame.
    target = still_face(1, 5)
    preds = target.clone()
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    preds[:, :, 48:68, 1] += 2.0 * sign[None, :, None]
    for align in (True, False):  # mouth is not in STABLE_IDX: alignment leaves this unchanged
        assert float(mouth_lvd(preds, target, align=align)) == pytest.approx(4.0, abs=ATOL)
        assert float(mouth_ld(preds, target, align=align)) == pytest.approx(2.0, abs=ATOL)
        assert float(face_lvd(preds, target, align=align)) == pytest.approx(4.0 * 20 / 68, abs=ATOL)
        assert float(face_ld(preds, target, align=align)) == pytest.approx(2.0 * 20 / 68, abs=ATOL)


# ------------------------------------------------------------------------------------------
# Metric classes: batch independence, DDP reduction
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("align", [True, False])
def test_metric_accumulation_equals_functional_on_concatenation(align):
    sizes = [1, 4, 2]
    targets = [talking_faces(b, 6, 20 + i) for i, b in enumerate(sizes)]
    preds = [talking_faces(b, 6, 40 + i) for i, b in enumerate(sizes)]
    p_all, t_all = torch.cat(preds), torch.cat(targets)
    mc = LandmarkMetrics(align=align)
    for p, t in zip(preds, targets):
        mc.update(p, t)
    out = mc.compute()
    assert set(out) == {"mouth_ld", "mouth_lvd", "face_ld", "face_lvd"}
    for name, (fn, _, _) in FUNCS.items():
        assert float(out[name]) == pytest.approx(float(fn(p_all, t_all, align=align)), abs=1e-6)
    for region, idx in (("mouth", MOUTH_IDX), ("face", FACE_IDX)):
        ld, lvd = LandmarkDistance(region, align=align), LandmarkVelocityDifference(region, align=align)
        for p, t in zip(preds, targets):
            ld.update(p, t)
            lvd.update(p, t)
        assert float(ld.compute()) == pytest.approx(
            float(landmark_distance(p_all, t_all, idx, align=align)), abs=1e-6
        )
        assert float(lvd.compute()) == pytest.approx(
            float(landmark_velocity_difference(p_all, t_all, idx, align=align)), abs=1e-6
        )


def test_metric_attributes_and_state():
    m = LandmarkDistance("face")
    assert m.higher_is_better is False and m.full_state_update is False
    assert m.sum_dist.dtype == torch.float64
    assert m._reductions["sum_dist"] is not None and m._reductions["count"] is not None
    m.update(talking_faces(2, 3, 0), talking_faces(2, 3, 1))
    assert m.sum_dist.dtype == torch.float64 and int(m.count) == 2 * 3 * 68
    v = LandmarkVelocityDifference("mouth")
    v.update(talking_faces(2, 3, 0), talking_faces(2, 3, 1))
    assert int(v.count) == 2 * 2 * 20
    with pytest.raises(ValueError, match="region"):
        LandmarkDistance("eyes")


@pytest.mark.parametrize("cls", [LandmarkDistance, LandmarkVelocityDifference])
def test_merge_state_simulates_ddp_sum(cls):
    p, t = talking_faces(6, 5, 50), talking_faces(6, 5, 51)
    single = cls("face")
    single.update(p, t)
    rank0, rank1 = cls("face"), cls("face")
    rank0.update(p[:2], t[:2])
    rank1.update(p[2:], t[2:])
    # the states are plain sums: reducing them by "sum" is what DDP sync does
    torch.testing.assert_close(rank0.sum_dist + rank1.sum_dist, single.sum_dist)
    assert int(rank0.count + rank1.count) == int(single.count)
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(float(single.compute()), abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        p, t = talking_faces(5, 6, 60), talking_faces(5, 6, 61)
        shard = [slice(0, 2), slice(2, 5)][rank]  # uneven shards on purpose
        mc = LandmarkMetrics(align=True)
        mc.update(p[shard], t[shard])
        out = {k: float(v) for k, v in mc.compute().items()}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters import torch: about 10 s on a 2-core machine
def test_real_ddp_gloo_sync_equals_single_process():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    p, t = talking_faces(5, 6, 60), talking_faces(5, 6, 61)
    single = LandmarkMetrics(align=True)
    single.update(p, t)
    want = {k: float(v) for k, v in single.compute().items()}
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, _free_port(), d), nprocs=2, join=True)
        for rank in range(2):
            got = torch.load(os.path.join(d, f"rank{rank}.pt"))
            for k in want:
                assert got[k] == pytest.approx(want[k], abs=1e-6), (rank, k)


# ------------------------------------------------------------------------------------------
# shape validation
# ------------------------------------------------------------------------------------------
def test_shape_mismatch_raises_with_shapes():
    a, b = torch.zeros(2, 5, 68, 2), torch.zeros(2, 4, 68, 2)
    with pytest.raises(ValueError, match=r"\(2, 5, 68, 2\).*\(2, 4, 68, 2\)"):
        face_ld(a, b)
    with pytest.raises(ValueError, match="same shape"):
        LandmarkVelocityDifference("mouth").update(a, b)


@pytest.mark.parametrize(
    "shape", [(2, 5, 67, 2), (2, 5, 68, 3), (5, 68, 2), (1, 2, 5, 68, 2)]
)
def test_wrong_layout_raises(shape):
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"\(B, T, 68, 2\)"):
        mouth_ld(x, x)
    with pytest.raises(ValueError, match=r"\(B, T, 68, 2\)"):
        LandmarkDistance("face").update(x, x)
    with pytest.raises(ValueError, match=r"\(B, T, 68, 2\)"):
        align_landmarks(x)


def test_lvd_needs_two_frames():
    x = torch.zeros(3, 1, 68, 2)
    with pytest.raises(ValueError, match=r"T >= 2.*\(3, 1, 68, 2\)"):
        mouth_lvd(x, x)
    with pytest.raises(ValueError, match=r"T >= 2"):
        LandmarkMetrics().update(x, x)
    assert float(face_ld(x + 1.0, x, align=False)) == pytest.approx(math.sqrt(2))  # LD: T=1 ok


def test_bad_reference_and_index():
    x = talking_faces(2, 3, 0)
    with pytest.raises(ValueError, match="reference"):
        align_landmarks(x, reference=torch.zeros(2, 10, 2))
    with pytest.raises(ValueError, match="batch size"):
        align_landmarks(x, reference=torch.zeros(3, 68, 2))
    with pytest.raises(ValueError, match="indices"):
        landmark_distance(x, x, [0, 68])
    with pytest.raises(ValueError, match="empty"):
        landmark_distance(x, x, [])

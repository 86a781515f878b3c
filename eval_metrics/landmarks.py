"""Landmark metrics M-LD, M-LVD, F-LD and F-LVD as torchmetrics ``Metric`` classes and functions.

Sources
-------
* Landmark Distance (LD) and Landmark Velocity Difference (LVD): Chen et al., "Lip Movements
  Generation at a Glance" (ECCV 2018), and ATVGnet (Chen et al., CVPR 2019) / MakeItTalk
  (Zhou et al., 2020), which EAPC cites.
* Paper 001 (EAPC, Cao et al.) section 4.2: "facial landmarks were extracted from both the
  generated sequences and the ground truth sequences, with alignment performed to compensate for
  head motions. [...] LD represents the average Euclidean distance between the generated and
  recorded landmarks, while LVD quantifies the average velocity differences of landmark motions
  between the two sequences. [...] the mouth (M-LD, M-LVD) and face areas (F-LD, F-LVD)".
* Paper 002 (Sinha et al., IJCAI 2022) reports the same four numbers (citing Ji et al., 2021).

Landmark scheme and tensors
---------------------------
The standard 68-point iBUG/dlib scheme: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
mouth 48-67. Landmark sequences are float tensors of shape ``(B, T, 68, 2)`` (batch, frames,
points, xy) in pixels of the aligned face crop (256 px crops by default in this project).

Units
-----
All four metrics are in **pixels of the face crop** the landmarks were measured in (after
alignment, pixels at the ground truth's mean face scale, see :func:`align_landmarks`). The papers
report LD/LVD in pixels of *their own* crops, whose size they do not always state, so our numbers
are comparable to theirs only up to the ratio of crop sizes; the report states the crop size
(256 px by default).

Readings chosen (and why)
-------------------------
* **Face region = all 68 points.** F-LD / F-LVD are computed over all 68 points (``FACE_IDX``),
  mouth included. A widely used MEAD evaluation script adds the mouth LVD to the face LVD; that
  is *not* what is computed here (see ``/work/shared/DESIGN.md``, "Known pitfalls").
* **Head-motion alignment** (EAPC section 4.2; ATVGnet/MakeItTalk practice): every frame is
  mapped by a per-frame similarity transform (rotation, uniform scale, translation; Umeyama's
  closed form) that takes that frame's ``STABLE_IDX`` points onto a reference. For a metric
  *both* the prediction and the ground truth are aligned to the **ground truth's** reference
  (the per-sequence mean of the ground truth's stable points). Consequently a prediction that
  differs from the ground truth only by a per-frame similarity transform scores LD = LVD = 0,
  which is what "compensate for head motions" asks for. Aligning each sequence to its *own*
  mean would instead leave the difference between the two means in the score.
* **Averaging.** LD is the mean, over batch, frames and points, of the per-point Euclidean
  distance; LVD is the mean, over batch, the ``T - 1`` frame-to-frame steps and points, of the
  Euclidean distance between the velocity vectors ``x[t+1] - x[t]`` of prediction and ground
  truth. The Metric classes accumulate ``sum`` and ``count`` in float64, so the result does not
  depend on how the data is split into batches or across DDP ranks. When clips of different
  lengths are fed in separate ``update`` calls every *frame* weighs the same (not every clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from primitives.geometry import umeyama

__all__ = [
    "FACE_IDX",
    "MOUTH_IDX",
    "NUM_LANDMARKS",
    "REGIONS",
    "STABLE_IDX",
    "LandmarkDistance",
    "LandmarkMetrics",
    "LandmarkVelocityDifference",
    "align_landmarks",
    "face_ld",
    "face_lvd",
    "landmark_distance",
    "landmark_velocity_difference",
    "mouth_ld",
    "mouth_lvd",
]

NUM_LANDMARKS = 68

#: Mouth points of the 68-point scheme (outer lip 48-59, inner lip 60-67): 20 points.
MOUTH_IDX = range(48, 68)
#: The whole face: all 68 points (jaw, brows, nose, eyes, mouth). F-LD/F-LVD use these.
FACE_IDX = range(0, 68)
#: Points used to estimate (and remove) head motion, 13 points: nose bridge and tip 27-30, nose
#: base 31-35, and the four eye corners 36, 39, 42, 45. They lie on the rigid part of the face:
#: the eye *corners* (not the lids) do not move with blinks, the nose does not move with speech.
#: The jaw (moves with speech), the brows (move with expression) and the mouth are left out, so
#: the alignment removes head pose and distance to the camera but keeps speech and expression.
STABLE_IDX: tuple[int, ...] = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)

#: Named regions accepted by the Metric classes.
REGIONS: dict[str, range] = {"mouth": MOUTH_IDX, "face": FACE_IDX}

# Variance below this (px^2) counts as a degenerate frame (all stable points on one spot).
_EPS_VAR = 1e-12


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_pair(preds: Tensor, target: Tensor, min_frames: int, name: str) -> None:
    """Raise ``ValueError`` unless ``preds`` and ``target`` are equal ``(B, T, 68, 2)`` tensors."""
    for label, x in (("preds", preds), ("target", target)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(x).__name__}")
    if preds.shape != target.shape:
        raise ValueError(
            f"{name}: preds and target must have the same shape (B, T, 68, 2), "
            f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}"
        )
    if preds.ndim != 4 or preds.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(
            f"{name}: expected landmark tensors of shape (B, T, 68, 2), "
            f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}"
        )
    if preds.shape[1] < min_frames:
        raise ValueError(
            f"{name}: needs at least {min_frames} frame(s) (T >= {min_frames}), "
            f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}"
        )


def _index(idx: Sequence[int] | Tensor, device: torch.device) -> Tensor:
    """Turn a range/sequence/tensor of point indices into a validated long tensor."""
    t = torch.as_tensor(list(idx) if not isinstance(idx, Tensor) else idx, dtype=torch.long)
    t = t.reshape(-1)
    if t.numel() == 0:
        raise ValueError("landmark index set is empty")
    if int(t.min()) < 0 or int(t.max()) >= NUM_LANDMARKS:
        raise ValueError(f"landmark indices must lie in [0, {NUM_LANDMARKS}), got {t.tolist()}")
    return t.to(device)


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 everywhere except on Apple MPS, which has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------------
def _reference_stable(reference: Tensor, batch: int) -> Tensor:
    """Stable points ``(B, 1, K, 2)`` of a reference given as 68 points or as the K stable ones."""
    n_stable = len(STABLE_IDX)
    if reference.ndim not in (2, 3) or reference.shape[-1] != 2 or reference.shape[-2] not in (
        NUM_LANDMARKS,
        n_stable,
    ):
        raise ValueError(
            "reference must have shape (B, 68, 2), (68, 2), "
            f"(B, {n_stable}, 2) or ({n_stable}, 2); got {tuple(reference.shape)}"
        )
    if reference.ndim == 3 and reference.shape[0] not in (1, batch):
        raise ValueError(
            f"reference batch size {reference.shape[0]} does not match landmarks batch size {batch}"
        )
    if reference.shape[-2] == NUM_LANDMARKS:
        reference = reference[..., list(STABLE_IDX), :]
    if reference.ndim == 2:
        reference = reference.unsqueeze(0)
    return reference.unsqueeze(1)  # (B|1, 1, K, 2)


def _align(lmk: Tensor, ref_stable: Tensor) -> Tensor:
    """Align ``(B, T, 68, 2)`` landmarks to ``ref_stable`` ``(B|1, 1, K, 2)`` (same dtype)."""
    stable = lmk[..., list(STABLE_IDX), :]
    matrix = umeyama(stable, ref_stable, eps=_EPS_VAR)  # (B, T, 2, 3)
    return lmk @ matrix[..., :2].mT + matrix[..., None, :, 2]


def _sequence_reference(lmk: Tensor) -> Tensor:
    """Default reference: per-sequence mean over frames of the stable points, ``(B, 1, K, 2)``."""
    return lmk[..., list(STABLE_IDX), :].mean(dim=1, keepdim=True)


def align_landmarks(lmk: Tensor, reference: Tensor | None = None) -> Tensor:
    """Remove head motion from landmark sequences by per-frame similarity alignment.

    For every frame the similarity transform (rotation, uniform scale, translation; Umeyama's
    closed-form least-squares solution, reflections excluded) that maps the frame's
    :data:`STABLE_IDX` points onto the reference's stable points is estimated and applied to all
    68 points. All frames of all sequences are solved at once (batched 2x2 SVDs, no Python loop).
    This is the "alignment performed to compensate for head motions" of paper 001 (EAPC) section
    4.2, done as in ATVGnet/MakeItTalk.

    Args:
        lmk: ``(B, T, 68, 2)`` floating landmarks in crop pixels.
        reference: where the stable points are mapped to. ``None`` (default): the per-sequence mean
            over frames of ``lmk``'s own stable points. Otherwise a tensor of shape ``(B, 68, 2)``
            or ``(68, 2)`` (a landmark frame or template; only its stable points are used) or
            ``(B, 13, 2)`` / ``(13, 2)`` (the stable points themselves, in ``STABLE_IDX`` order).
            The metrics pass the ground truth's per-sequence mean here for both prediction and
            ground truth.

    Returns:
        ``(B, T, 68, 2)`` aligned landmarks, same dtype and device as ``lmk``, in pixels at the
        reference's scale. Computed in float64 internally (float32 on MPS). A degenerate frame
        whose stable points all coincide is collapsed onto the reference centroid; NaNs in a
        frame propagate to that frame.

    Raises:
        ValueError: if ``lmk`` is not ``(B, T, 68, 2)`` or ``reference`` has a wrong shape.

    Example:
        >>> import math
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(1, 4, 68, 2, generator=g) * 256
        >>> c, s = math.cos(0.3), math.sin(0.3)
        >>> rot = torch.tensor([[c, -s], [s, c]])
        >>> moved = 1.5 * x @ rot.T + torch.tensor([10.0, -7.0])  # same head motion in all frames
        >>> torch.allclose(align_landmarks(moved, reference=x[:, 0]),
        ...                align_landmarks(x, reference=x[:, 0]), atol=1e-3)
        True
    """
    if not isinstance(lmk, Tensor) or lmk.ndim != 4 or lmk.shape[-2:] != (NUM_LANDMARKS, 2):
        shape = tuple(lmk.shape) if isinstance(lmk, Tensor) else type(lmk).__name__
        raise ValueError(f"align_landmarks: expected lmk of shape (B, T, 68, 2), got {shape}")
    work = _work_dtype(lmk.device)
    x = lmk.to(work)
    if reference is None:
        ref = _sequence_reference(x)
    else:
        ref = _reference_stable(reference.to(device=lmk.device, dtype=work), lmk.shape[0])
    out = _align(x, ref)
    return out.to(lmk.dtype) if lmk.is_floating_point() else out


def _prepare(preds: Tensor, target: Tensor, align: bool) -> tuple[Tensor, Tensor]:
    """Cast to the float64 work dtype and (optionally) align both to the target's reference."""
    work = _work_dtype(target.device)
    p = preds.to(device=target.device, dtype=work)
    t = target.to(work)
    if align:
        ref = _sequence_reference(t)
        p, t = _align(p, ref), _align(t, ref)
    return p, t


# --------------------------------------------------------------------------------------------
# torchmetrics-style private update/compute
# --------------------------------------------------------------------------------------------
def _ld_update(
    preds: Tensor, target: Tensor, idx: Sequence[int] | Tensor, align: bool = True
) -> tuple[Tensor, Tensor]:
    """Sum of per-point Euclidean distances over ``idx`` and the number of terms.

    Returns ``(sum_dist, count)``: a float64 scalar (float32 on MPS) and an int64 scalar
    ``B * T * len(idx)``.
    """
    _check_pair(preds, target, min_frames=1, name="landmark_distance")
    index = _index(idx, target.device)
    p, t = _prepare(preds, target, align)
    dist = torch.linalg.vector_norm(p[..., index, :] - t[..., index, :], dim=-1)  # (B, T, K)
    return dist.sum(), torch.tensor(dist.numel(), dtype=torch.long, device=target.device)


def _ld_compute(sum_dist: Tensor, count: Tensor) -> Tensor:
    """Mean distance ``sum_dist / count`` as a float32 scalar; NaN when ``count == 0``."""
    if int(count) == 0:
        return torch.tensor(float("nan"), dtype=torch.float32, device=sum_dist.device)
    return (sum_dist / count).to(torch.float32)


def _lvd_update(
    preds: Tensor, target: Tensor, idx: Sequence[int] | Tensor, align: bool = True
) -> tuple[Tensor, Tensor]:
    """Sum of per-point velocity-difference norms over ``idx`` and the number of terms.

    Velocities are ``x[:, t+1] - x[:, t]``; returns ``(sum_dist, count)`` with
    ``count = B * (T - 1) * len(idx)``.
    """
    _check_pair(preds, target, min_frames=2, name="landmark_velocity_difference")
    index = _index(idx, target.device)
    p, t = _prepare(preds, target, align)
    p, t = p[..., index, :], t[..., index, :]
    vp = p[:, 1:] - p[:, :-1]
    vt = t[:, 1:] - t[:, :-1]
    dist = torch.linalg.vector_norm(vp - vt, dim=-1)  # (B, T-1, K)
    return dist.sum(), torch.tensor(dist.numel(), dtype=torch.long, device=target.device)


_lvd_compute = _ld_compute


# --------------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------------
def landmark_distance(
    preds: Tensor, target: Tensor, idx: Sequence[int] | Tensor = FACE_IDX, align: bool = True
) -> Tensor:
    """Landmark Distance (LD): mean Euclidean distance between predicted and true landmarks.

    ``LD = 1/(B T K) * sum_{b,t,k in idx} || p[b,t,k] - g[b,t,k] ||_2`` after (optional) head-motion
    alignment of both sequences to the ground truth's reference (:func:`align_landmarks`).
    Source: Chen et al. 2018; paper 001 (EAPC) section 4.2.

    Args:
        preds: ``(B, T, 68, 2)`` predicted landmarks, crop pixels (any real dtype).
        target: ``(B, T, 68, 2)`` ground-truth landmarks, crop pixels, same shape.
        idx: point indices to average over (``MOUTH_IDX``, ``FACE_IDX`` or any subset of 0..67).
        align: remove head motion first (default ``True``, as in the papers).

    Returns:
        Scalar float32 tensor, ``>= 0``, in crop pixels (lower is better).

    Raises:
        ValueError: shapes differ, are not ``(B, T, 68, 2)``, ``T < 1`` or ``idx`` is invalid.

    Example:
        >>> g = torch.zeros(2, 5, 68, 2)
        >>> landmark_distance(g + torch.tensor([3.0, 4.0]), g, MOUTH_IDX, align=False)
        tensor(5.)
    """
    return _ld_compute(*_ld_update(preds, target, idx, align))


def landmark_velocity_difference(
    preds: Tensor, target: Tensor, idx: Sequence[int] | Tensor = FACE_IDX, align: bool = True
) -> Tensor:
    """Landmark Velocity Difference (LVD): mean distance between landmark velocities.

    With ``v[t] = x[t+1] - x[t]``:
    ``LVD = 1/(B (T-1) K) * sum_{b,t,k in idx} || v_p[b,t,k] - v_g[b,t,k] ||_2``, after (optional)
    alignment of both sequences to the ground truth's reference. Source: Chen et al. 2018;
    paper 001 (EAPC) section 4.2. Over ``FACE_IDX`` this is F-LVD over all 68 points (it is *not*
    M-LVD plus an LVD of the non-mouth points).

    Args:
        preds: ``(B, T, 68, 2)`` predicted landmarks, crop pixels.
        target: ``(B, T, 68, 2)`` ground-truth landmarks, same shape, ``T >= 2``.
        idx: point indices (``MOUTH_IDX``, ``FACE_IDX`` or any subset of 0..67).
        align: remove head motion first (default ``True``).

    Returns:
        Scalar float32 tensor, ``>= 0``, in crop pixels per frame (lower is better).

    Raises:
        ValueError: shapes differ, are not ``(B, T, 68, 2)``, ``T < 2`` or ``idx`` is invalid.

    Example:
        >>> g = torch.zeros(1, 3, 68, 2)
        >>> p = g.clone(); p[:, 1, 48:68, 0] = 2.0   # mouth jumps 2 px right in frame 1 only
        >>> landmark_velocity_difference(p, g, MOUTH_IDX, align=False)
        tensor(2.)
    """
    return _lvd_compute(*_lvd_update(preds, target, idx, align))


def mouth_ld(preds: Tensor, target: Tensor, align: bool = True) -> Tensor:
    """M-LD: :func:`landmark_distance` over the 20 mouth points (48-67), crop pixels."""
    return landmark_distance(preds, target, MOUTH_IDX, align)


def mouth_lvd(preds: Tensor, target: Tensor, align: bool = True) -> Tensor:
    """M-LVD: :func:`landmark_velocity_difference` over the 20 mouth points (48-67)."""
    return landmark_velocity_difference(preds, target, MOUTH_IDX, align)


def face_ld(preds: Tensor, target: Tensor, align: bool = True) -> Tensor:
    """F-LD: :func:`landmark_distance` over all 68 points, crop pixels."""
    return landmark_distance(preds, target, FACE_IDX, align)


def face_lvd(preds: Tensor, target: Tensor, align: bool = True) -> Tensor:
    """F-LVD: :func:`landmark_velocity_difference` over all 68 points (not mouth + face)."""
    return landmark_velocity_difference(preds, target, FACE_IDX, align)


# --------------------------------------------------------------------------------------------
# Metric classes
# --------------------------------------------------------------------------------------------
def _region_idx(region: str) -> range:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {sorted(REGIONS)}, got {region!r}")
    return REGIONS[region]


class _LandmarkSumMetric(Metric):
    """Shared state: float64 ``sum_dist`` and int64 ``count``, both summed across DDP ranks."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    sum_dist: Tensor
    count: Tensor

    def __init__(self, region: Literal["mouth", "face"] = "mouth", align: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.region = region
        self.idx = _region_idx(region)
        self.align = bool(align)
        self.add_state("sum_dist", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, sum_dist: Tensor, count: Tensor) -> None:
        self.sum_dist += sum_dist.to(device=self.sum_dist.device, dtype=self.sum_dist.dtype)
        self.count += count.to(device=self.count.device)

    def compute(self) -> Tensor:
        return _ld_compute(self.sum_dist, self.count)


class LandmarkDistance(_LandmarkSumMetric):
    """Landmark Distance (M-LD for ``region="mouth"``, F-LD for ``region="face"``) as a Metric.

    Accumulates the float64 sum of per-point distances and their count over ``update`` calls
    (and DDP ranks, both reduced by ``sum``), so the value is independent of batch split.
    See :func:`landmark_distance` for the formula, alignment and units (crop pixels; papers report
    pixels of their own crops). Source: Chen et al. 2018; paper 001 (EAPC) section 4.2.

    Args:
        region: ``"mouth"`` (points 48-67) or ``"face"`` (all 68 points).
        align: remove head motion (both sequences aligned to the ground truth's reference).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``update(preds, target)``: ``(B, T, 68, 2)`` float tensors of equal shape; ``compute()``:
    float32 scalar, ``>= 0``, lower is better (NaN if nothing was accumulated).

    Example:
        >>> m = LandmarkDistance(region="face", align=False)
        >>> g = torch.zeros(2, 5, 68, 2)
        >>> m.update(g + torch.tensor([0.0, 2.0]), g)
        >>> m.update(g, g)
        >>> m.compute()
        tensor(1.)
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        self._accumulate(*_ld_update(preds, target, self.idx, self.align))


class LandmarkVelocityDifference(_LandmarkSumMetric):
    """Landmark Velocity Difference (M-LVD / F-LVD) as a Metric; F-LVD is over all 68 points.

    Accumulates the float64 sum of per-point velocity-difference norms and their count
    (``B * (T - 1) * K`` per update). See :func:`landmark_velocity_difference`.
    Source: Chen et al. 2018; paper 001 (EAPC) section 4.2.

    Args:
        region: ``"mouth"`` (points 48-67) or ``"face"`` (all 68 points).
        align: remove head motion (both sequences aligned to the ground truth's reference).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``update(preds, target)``: ``(B, T, 68, 2)`` float tensors of equal shape with ``T >= 2``;
    ``compute()``: float32 scalar, ``>= 0``, crop pixels per frame, lower is better.

    Example:
        >>> m = LandmarkVelocityDifference(region="mouth", align=False)
        >>> g = torch.zeros(1, 3, 68, 2)
        >>> p = g.clone(); p[:, 2, 48:68, 1] = 4.0
        >>> m.update(p, g)
        >>> m.compute()
        tensor(2.)
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        self._accumulate(*_lvd_update(preds, target, self.idx, self.align))


class LandmarkMetrics(MetricCollection):
    """The four landmark metrics in one :class:`torchmetrics.MetricCollection`.

    Keys: ``mouth_ld`` (M-LD), ``mouth_lvd`` (M-LVD), ``face_ld`` (F-LD), ``face_lvd`` (F-LVD),
    with ``prefix``/``postfix`` applied as usual. Compute groups are disabled: the four metrics
    have same-named states that must never be merged.

    Args:
        align: remove head motion before measuring (default ``True``).
        prefix, postfix: forwarded to :class:`~torchmetrics.MetricCollection`.
        kwargs: forwarded to each metric (e.g. ``sync_on_compute``).

    Example:
        >>> mc = LandmarkMetrics(align=False)
        >>> g = torch.zeros(1, 4, 68, 2)
        >>> mc.update(g + 1.0, g)
        >>> {k: round(float(v), 4) for k, v in sorted(mc.compute().items())}
        {'face_ld': 1.4142, 'face_lvd': 0.0, 'mouth_ld': 1.4142, 'mouth_lvd': 0.0}
    """

    def __init__(
        self,
        align: bool = True,
        prefix: str | None = None,
        postfix: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            {
                "mouth_ld": LandmarkDistance("mouth", align=align, **kwargs),
                "mouth_lvd": LandmarkVelocityDifference("mouth", align=align, **kwargs),
                "face_ld": LandmarkDistance("face", align=align, **kwargs),
                "face_lvd": LandmarkVelocityDifference("face", align=align, **kwargs),
            },
            prefix=prefix,
            postfix=postfix,
            compute_groups=False,
        )

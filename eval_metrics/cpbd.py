"""CPBD, the no-reference sharpness metric of Narvekar & Karam, with the authors' MATLAB behaviour.

Source: N. D. Narvekar and L. J. Karam, "A No-Reference Image Blur Metric Based on the Cumulative
Probability of Blur Detection (CPBD)", IEEE TIP 20(9), 2011 (QoMEX 2009), and the authors' MATLAB
release (``CPBD_compute.m``), which the talking-face papers' CPBD columns come from.

Steps of :func:`cpbd`: grayscale (ITU-R 601 luma); Canny edges decide the **edge blocks** (64x64
tiles, remainder ignored, with more than 0.2% edge pixels); a thinned Sobel vertical-edge map gives
the edges whose Marziliano **widths** are measured along rows; per block the contrast ``max - min``
sets the just-noticeable-blur width ``w_JNB = 5`` if contrast <= 50 else 3; per edge ``P_blur = 1 -
exp(-|w / w_JNB|^3.6)``; CPBD = fraction of edges with ``P_blur <= 0.63`` (``P_JNB``; P_blur rounded
to 1/100 as the reference histogram does).

Two sets of edge detectors (``edges=``), two metric keys:

* ``"matlab"`` (key ``cpbd``, the reference): :func:`matlab_canny`, MATLAB's ``edge(I, 'canny')``
  (R2011+ ``smoothGradient``: sigma sqrt(2), an even-length 16-tap derivative-of-Gaussian,
  thresholds from the 70th percentile of a 64-bin histogram, ratio 0.4, 8-connected hysteresis),
  and :func:`matlab_sobel`, MATLAB's thinned ``edge(I, 'sobel', ..., 'vertical')``. On LIVE img1
  both reproduce the authors' maps (``reference_img1_canny.txt``, ``reference_img1_sobel.txt``)
  pixel for pixel and CPBD is 0.1349 (MATLAB: 0.1353).
* ``"python_cpbd"`` (key ``cpbd_python``): a Canny close to ``skimage.feature.canny`` (sigma 1,
  absolute thresholds 0.1 / 0.2) and python-cpbd's Sobel port, as PyPI ``cpbd`` 1.0.7 uses; img1
  gives 0.1091, what python-cpbd gives with scikit-image 0.26 (its own published value, 0.1120,
  came from an older Canny). python-cpbd no longer imports on current SciPy
  (``scipy.ndimage.imread``) and is not used.

The widths follow the reference ``marziliano_method`` (they equal MATLAB's on MATLAB's Sobel map);
with MATLAB's edges and widths the block pooling (:func:`cpbd_pool`) gives python-cpbd's known
answer 0.1349.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import scipy.ndimage as ndi
import torch
from torch import Tensor
from torchmetrics import Metric

from eval_metrics.image import to_unit_float

__all__ = ["CPBD", "EDGE_DETECTORS", "cpbd", "cpbd_pool", "marziliano_widths", "matlab_canny", "matlab_sobel"]

CPBD_BLOCK = 64
CPBD_EDGE_BLOCK_FRACTION = 0.002
CPBD_BETA = 3.6
CPBD_P_JNB = 0.63
_MAX_MARGIN = 100


def _to_gray_float(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(f"cpbd expects a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # ITU-R 601 luma, like PIL's mode 'L'
    elif image.ndim != 2:
        raise ValueError(f"cpbd expects an (H, W) or (H, W, 3) image, got shape {image.shape}")
    return image.astype(np.float64)


# ------------------------------------------------------------------------- MATLAB's edge(I, 'canny')
def _imfilter_conv(f: np.ndarray, h: np.ndarray, axis: int) -> np.ndarray:
    """MATLAB ``imfilter(f, h, 'conv', 'replicate')`` for a 1-D kernel ``h`` along ``axis``: the
    kernel is rotated by 180 degrees and centred at ``floor((n + 1) / 2)`` (1-based), which for an
    even length ``n`` puts the centre left of the middle."""
    n = len(h)
    flipped, centre = h[::-1], (n + 1) // 2 - 1
    f = np.moveaxis(f, axis, -1)
    padded = np.pad(f, [(0, 0)] * (f.ndim - 1) + [(n, n)], mode="edge")
    length = f.shape[-1]
    out = np.zeros_like(f)
    for j in range(n):
        out += flipped[j] * padded[..., n + j - centre: n + j - centre + length]
    return np.moveaxis(out, -1, axis)


def _smooth_gradient(gray: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``edge.m``'s ``smoothGradient``: even-length (``8 ceil(sigma)`` taps) Gaussian and
    its ``gradient``, positive / negative parts each normalised to sum +-1."""
    half = (8 * math.ceil(sigma) - 1) / 2
    x = np.arange(-half, half + 1)
    gauss = np.exp(-x ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    gauss /= gauss.sum()
    deriv = np.gradient(gauss)
    deriv[deriv > 0] /= deriv[deriv > 0].sum()
    deriv[deriv < 0] /= abs(deriv[deriv < 0].sum())
    gx = _imfilter_conv(_imfilter_conv(gray, gauss, 0), deriv, 1)
    gy = _imfilter_conv(_imfilter_conv(gray, gauss, 1), deriv, 0)
    return gx, gy


def _local_maxima(direction: int, ix: np.ndarray, iy: np.ndarray, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``cannyFindLocalMaxima``: interior pixels whose gradient falls in sector
    ``direction`` (1..4) and whose magnitude is >= both interpolated neighbours across the edge."""
    sectors = {1: ((iy <= 0) & (ix > -iy)) | ((iy >= 0) & (ix < -iy)),
               2: ((ix > 0) & (-iy >= ix)) | ((ix < 0) & (-iy <= ix)),
               3: ((ix <= 0) & (ix > iy)) | ((ix >= 0) & (ix < iy)),
               4: ((iy < 0) & (ix <= iy)) | ((iy > 0) & (ix >= iy))}
    sel = sectors[direction]
    sel[[0, -1], :] = False
    sel[:, [0, -1]] = False
    r, c = np.nonzero(sel)

    def at(dr: int, dc: int) -> np.ndarray:
        return mag[r + dr, c + dc]

    ixv, iyv = ix[r, c], iy[r, c]
    with np.errstate(divide="ignore", invalid="ignore"):
        if direction in (1, 4):
            d = np.abs(iyv / ixv)
        else:
            d = np.abs(ixv / iyv)
        if direction == 1:
            g1, g2 = at(0, 1) * (1 - d) + at(-1, 1) * d, at(0, -1) * (1 - d) + at(1, -1) * d
        elif direction == 2:
            g1, g2 = at(-1, 0) * (1 - d) + at(-1, 1) * d, at(1, 0) * (1 - d) + at(1, -1) * d
        elif direction == 3:
            g1, g2 = at(-1, 0) * (1 - d) + at(-1, -1) * d, at(1, 0) * (1 - d) + at(1, 1) * d
        else:
            g1, g2 = at(0, -1) * (1 - d) + at(-1, -1) * d, at(0, 1) * (1 - d) + at(1, 1) * d
    keep = (mag[r, c] >= g1) & (mag[r, c] >= g2)
    return r[keep], c[keep]


def matlab_canny(gray: np.ndarray, sigma: float = math.sqrt(2)) -> np.ndarray:
    """MATLAB's ``edge(I, 'canny')`` with its default thresholds (R2011+ ``edge.m``).

    Args:
        gray: ``(H, W)`` float image (any scale: the thresholds are relative).
        sigma: Gaussian sigma (MATLAB's default sqrt(2)).

    Returns:
        ``(H, W)`` bool edge map; LIVE img1 matches MATLAB's map pixel for pixel.
    """
    gx, gy = _smooth_gradient(np.asarray(gray, dtype=np.float64), sigma)
    mag = np.hypot(gx, gy)
    if mag.max() > 0:
        mag = mag / mag.max()
    counts = np.bincount(np.round(mag.ravel() * 63).astype(np.int64), minlength=64)  # imhist(mag, 64)
    high = (np.nonzero(np.cumsum(counts) > 0.7 * mag.size)[0][0] + 1) / 64
    low = 0.4 * high
    weak = np.zeros(mag.shape, dtype=bool)
    strong = np.zeros(mag.shape, dtype=bool)
    for direction in (1, 2, 3, 4):
        r, c = _local_maxima(direction, gx, gy, mag)
        above = mag[r, c] > low
        weak[r[above], c[above]] = True
        is_strong = mag[r[above], c[above]] > high
        strong[r[above][is_strong], c[above][is_strong]] = True
    labels, _ = ndi.label(weak, structure=np.ones((3, 3)))  # bwselect(E, strong seeds, 8)
    seeds = np.unique(labels[strong])
    return np.isin(labels, seeds[seeds > 0])


def _python_cpbd_canny(gray: np.ndarray) -> np.ndarray:
    """Canny close to ``skimage.feature.canny(gray_float)`` defaults (sigma 1, thresholds 0.1 / 0.2)."""
    smooth = cv2.GaussianBlur(gray.astype(np.float32), (9, 9), sigmaX=1.0, sigmaY=1.0, borderType=cv2.BORDER_REFLECT)
    scale = 16.0  # sub-unit precision for the int16 gradients cv2.Canny takes
    dx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    dy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    dx16 = np.clip(np.round(dx * scale), -32768, 32767).astype(np.int16)
    dy16 = np.clip(np.round(dy * scale), -32768, 32767).astype(np.int16)
    edges = cv2.Canny(dx16, dy16, 0.1 * scale, 0.2 * scale, L2gradient=True) > 0
    edges[[0, -1], :] = False  # skimage erodes its mask by one pixel
    edges[:, [0, -1]] = False
    return edges


MATLAB_SOBEL_CUTOFF = 4.0
"""Default squared-gradient cutoff of :func:`matlab_sobel` ((gray levels / px)^2, MATLAB's /8 kernel)."""


def matlab_sobel(gray: np.ndarray, cutoff: float | str = MATLAB_SOBEL_CUTOFF) -> np.ndarray:
    """MATLAB's ``edge(I, 'sobel', thresh, 'vertical')`` with thinning: vertical-edge map for the widths.

    ``bx = imfilter(I, fspecial('sobel')' / 8, 'replicate')`` (the x-derivative, gray levels per
    pixel), ``by`` likewise with ``fspecial('sobel') / 8``, ``b = bx^2`` (``kx = 1, ky = 0``). A pixel
    is an edge when ``b > cutoff`` and it is a maximum of ``b`` (zero-padded) along a row with
    ``|bx| >= |by|`` (``b(r, c-1) <= b(r, c) > b(r, c+1)``) or along a column (``b(r-1, c) <= b(r, c) >
    b(r+1, c)``), the thinning rule of MATLAB's compiled ``computeEdges`` with ``kx, ky = 1, 0``.

    The cutoff, our reading: MATLAB's automatic one is ``4 mean(b)`` (50.0 on LIVE img1), but the
    authors' Sobel map of img1 (``reference_img1_sobel.txt``) is reproduced pixel for pixel only by
    a cutoff in [4.0, 4.52), not by the automatic rule; the default is therefore the fixed
    :data:`MATLAB_SOBEL_CUTOFF` = 4.0 (``|bx| > 2`` gray levels per pixel), and ``cutoff="auto"``
    gives MATLAB's automatic rule.

    Args:
        gray: ``(H, W)`` float64 gray levels in [0, 255].
        cutoff: threshold on ``b`` (>= 0), or ``"auto"`` for ``4 mean(b)``.

    Returns:
        ``(H, W)`` bool edge map.

    Raises:
        ValueError: ``cutoff`` neither a number >= 0 nor ``"auto"``.
    """
    op = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64) / 8.0  # fspecial('sobel') / 8
    bx = ndi.correlate(gray, op.T, mode="nearest")  # imfilter correlates; 'replicate' border
    by = ndi.correlate(gray, op, mode="nearest")
    b = bx * bx
    if cutoff == "auto":
        cutoff = 4.0 * float(b.mean())
    if isinstance(cutoff, str) or not cutoff >= 0:
        raise ValueError(f"cutoff must be a number >= 0 or 'auto', got {cutoff!r}")
    padded = np.pad(b, 1)  # an outside neighbour never blocks a maximum
    left, right = padded[1:-1, :-2], padded[1:-1, 2:]
    up, down = padded[:-2, 1:-1], padded[2:, 1:-1]
    eps = 100 * np.finfo(np.float64).eps
    along_row = (np.abs(bx) >= np.abs(by) - eps) & (left <= b) & (b > right)
    along_col = (up <= b) & (b > down)  # ky * |bx| = 0 <= |by|: always allowed
    return (b > cutoff) & (along_row | along_col)


def _python_cpbd_sobel(gray: np.ndarray) -> np.ndarray:
    """Thinned vertical-edge map of python-cpbd 1.0.7 (``cpbd/octave.py``: its port of Octave's
    ``edge(..., 'sobel')``, which compares ``b`` with ``2 sqrt(mean(b))`` and keeps strict row or
    column maxima)."""
    h1 = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64) / 8.0
    # scipy.ndimage.convolve (flipped kernel, 'reflect' = cv2 BORDER_REFLECT); cv2.filter2D correlates
    strength2 = np.square(cv2.filter2D(gray, cv2.CV_64F, h1[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT))
    strength2[strength2 <= 2.0 * np.sqrt(np.mean(strength2))] = 0.0
    s = strength2
    z_col = np.zeros((s.shape[0], 1))
    z_row = np.zeros((1, s.shape[1]))
    x = (s > np.hstack([z_col, s[:, :-1]])) & (s > np.hstack([s[:, 1:], z_col]))
    y = (s > np.vstack([z_row, s[:-1, :]])) & (s > np.vstack([s[1:, :], z_row]))
    return x | y


EDGE_DETECTORS = {"matlab": (matlab_canny, matlab_sobel), "python_cpbd": (_python_cpbd_canny, _python_cpbd_sobel)}
"""Name -> (Canny for the edge blocks, Sobel for the widths)."""


# ------------------------------------------------------------------------- widths and pooling
def marziliano_widths(edges: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Marziliano edge widths along image rows at edge pixels whose gradient is horizontal.

    Vectorised equivalent of the reference ``marziliano_method``: the gradient angle (from
    ``np.gradient``; 0 where the x-gradient is 0, as in the reference code) is quantised to 45
    degrees; at edge pixels with angle 0 (intensity rising left to right) or +-180 (falling), the
    width is the distance between the local extrema on either side along the row (each side
    searched at most 101 px). Returns an (H, W) array, 0 at non-measured pixels.
    """
    h, w = gray.shape
    widths = np.zeros((h, w))
    gy, gx = np.gradient(gray)
    with np.errstate(divide="ignore", invalid="ignore"):
        angles = np.where(gx != 0, np.degrees(np.arctan2(gy, gx)), 0.0)
    if not np.any(angles):
        return widths
    q = 45.0 * np.round(angles / 45.0)
    inner = np.zeros_like(edges)
    inner[1:-1, 1:-1] = edges[1:-1, 1:-1]
    rows, cols = np.nonzero(inner & ((q == 0) | (np.abs(q) == 180)))
    if rows.size == 0:
        return widths
    sign = np.where(q[rows, cols] == 0, 1.0, -1.0)

    def side(direction: int) -> np.ndarray:
        margin = np.full(rows.size, _MAX_MARGIN)
        active = np.ones(rows.size, dtype=bool)
        for m in range(_MAX_MARGIN + 1):
            idx = np.nonzero(active)[0]
            if idx.size == 0:
                break
            inner_c = cols[idx] + direction * (1 + m)
            outer_c = cols[idx] + direction * (2 + m)
            outside = (outer_c < 0) | (outer_c >= w)
            oc = np.clip(outer_c, 0, w - 1)
            ic = np.clip(inner_c, 0, w - 1)
            diff = sign[idx] * (gray[rows[idx], oc] - gray[rows[idx], ic])
            stop = outside | ((diff >= 0) if direction < 0 else (diff <= 0))
            margin[idx[stop]] = m
            active[idx[stop]] = False
        return margin + 1

    widths[rows, cols] = side(-1) + side(+1)
    return widths


def _pool_counts(gray: np.ndarray, canny: np.ndarray, widths: np.ndarray) -> tuple[int, int]:
    """(measured edges with P_blur <= P_JNB, measured edges), over the edge blocks."""
    h, w = gray.shape
    sharp = total = 0
    for i in range(h // CPBD_BLOCK):
        for j in range(w // CPBD_BLOCK):
            rs = slice(CPBD_BLOCK * i, CPBD_BLOCK * (i + 1))
            cs = slice(CPBD_BLOCK * j, CPBD_BLOCK * (j + 1))
            if np.count_nonzero(canny[rs, cs]) <= CPBD_BLOCK * CPBD_BLOCK * CPBD_EDGE_BLOCK_FRACTION:
                continue
            block_w = widths[rs, cs]
            block_w = block_w[block_w != 0]
            if block_w.size == 0:
                continue
            block = gray[rs, cs]
            w_jnb = 5.0 if int(block.max() - block.min()) <= 50 else 3.0
            p_blur = 1.0 - np.exp(-np.abs(block_w / w_jnb) ** CPBD_BETA)
            buckets = np.round(p_blur * 100.0)  # the reference's 101-bin histogram, bins 0..63 summed
            sharp += int(np.count_nonzero(buckets <= round(CPBD_P_JNB * 100)))
            total += int(block_w.size)
    return sharp, total


def cpbd_pool(gray: np.ndarray, canny: np.ndarray, widths: np.ndarray) -> float:
    """CPBD from given edge maps (``CPBD_compute.m``'s pooling).

    Args:
        gray: ``(H, W)`` float64 image in [0, 255].
        canny: ``(H, W)`` bool (or 0/1) Canny edge map: which 64x64 blocks are edge blocks.
        widths: ``(H, W)`` Marziliano widths in pixels, 0 where not measured.

    Returns:
        float in [0, 1]; 0.0 when no edge is measured.
    """
    sharp, total = _pool_counts(np.asarray(gray, np.float64), np.asarray(canny) > 0, np.asarray(widths))
    return sharp / total if total else 0.0


def cpbd(image: np.ndarray, edges: str = "matlab") -> float:
    """No-reference sharpness CPBD of one frame (higher = sharper); see the module docstring.

    Args:
        image: uint8 frame, ``(H, W)`` grayscale or ``(H, W, 3)`` RGB. The value depends on the
            resolution (state it); frames smaller than 64x64 have no block and give 0.
        edges: ``"matlab"`` (the authors' reference, key ``cpbd``) or ``"python_cpbd"``
            (python-cpbd compatible, key ``cpbd_python``).

    Returns:
        float in ``[0, 1]``; 0.0 when no edge is measured.

    Raises:
        ValueError: wrong dtype or shape, unknown ``edges``.
    """
    if edges not in EDGE_DETECTORS:
        raise ValueError(f"edges must be one of {sorted(EDGE_DETECTORS)}, got {edges!r}")
    gray = _to_gray_float(np.asarray(image))
    canny, sobel = EDGE_DETECTORS[edges]
    return cpbd_pool(gray, canny(gray), marziliano_widths(sobel(gray), gray))


class CPBD(Metric):
    """Mean per-frame CPBD (see :func:`cpbd`) as a torchmetrics ``Metric``.

    ``update(frames)``: ``(N, 3, H, W)`` RGB tensor, uint8 ``[0, 255]`` or float ``[0, 1]`` (float
    frames are quantised with ``round(x * 255)``). ``compute()``: scalar float64 tensor, the mean of
    per-frame CPBD over all frames seen (0 when none). States ``total`` (sum of per-frame CPBD)
    and ``count`` (frames), both summed across processes.

    Args:
        edges: the edge detectors, ``"matlab"`` (default) or ``"python_cpbd"`` (see :data:`EDGE_DETECTORS`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, edges: str = "matlab", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if edges not in EDGE_DETECTORS:
            raise ValueError(f"edges must be one of {sorted(EDGE_DETECTORS)}, got {edges!r}")
        self.edges = edges
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, frames: Tensor) -> None:  # noqa: D102 - documented on the class
        if frames.dtype != torch.uint8:
            frames = torch.round(to_unit_float(frames).clamp(0, 1) * 255.0).to(torch.uint8)
        elif frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected RGB frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
        arr = frames.permute(0, 2, 3, 1).cpu().numpy()
        values = [cpbd(np.ascontiguousarray(f), self.edges) for f in arr]
        self.total += float(math.fsum(values))
        self.count += len(values)

    def compute(self) -> Tensor:  # noqa: D102 - documented on the class
        if self.count == 0:
            return torch.tensor(0.0, dtype=torch.float64)
        return self.total / self.count

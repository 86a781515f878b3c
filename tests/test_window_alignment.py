"""Every key of a training / evaluation window refers to the same instants.

A shard made here holds one clip whose arrays encode their own time: frame t is filled with the
value 8 t, landmarks / mfcc / llf / phones rows of frame t hold t, and mel row r holds r (80 Hz:
3.2 rows per 25 fps frame). Read through the real datamodule, a window starting at frame s must
hold frames s..s+T-1 in every per-frame key, mel rows int(3.2 s) .. + int(3.2 T), the clip's own
labels and the landmarks of the clip's first frame as the reference.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from datamodules.talking_face import DataConfig, TalkingFaceDataModule
from pipeline.extract.clip import ClipResult
from pipeline.extract.shards import ShardPlan, write_shard
from primitives.frame_codec import encode_jpeg_frames

T_CLIP, WINDOW, S = 30, 5, 32


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _timed_clip(key: str) -> ClipResult:
    t = np.arange(T_CLIP, dtype=np.float32)
    n_mel = int(3.2 * T_CLIP)
    frames = np.broadcast_to((8 * np.arange(T_CLIP, dtype=np.uint8))[:, None, None, None], (T_CLIP, S, S, 3))
    meta = {"id": key, "speaker": "9999", "emotion": "happy", "emotion_id": 5, "intensity": 2, "fps": 25,
            "n_frames": T_CLIP, "lmk_crop_size": S}
    sample = {f"frames_{S}.jpgs": encode_jpeg_frames(np.ascontiguousarray(frames)),
              "lmk.npy": _npy(np.broadcast_to(t[:, None, None], (T_CLIP, 68, 2)).copy()),
              "mfcc.npy": _npy(np.broadcast_to(t[:, None, None], (T_CLIP, 28, 12)).copy()),
              "llf.npy": _npy(np.broadcast_to(t[:, None], (T_CLIP, 25)).copy()),
              "phones.npy": _npy(np.broadcast_to(t[:, None], (T_CLIP, 40)).copy()),
              "mel.npy": _npy(np.broadcast_to(np.arange(n_mel, dtype=np.float32)[:, None], (n_mel, 80)).copy()),
              "meta.json": json.dumps(meta).encode()}
    return ClipResult(key, sample=sample, n_frames=T_CLIP)


@pytest.fixture(scope="module")
def timed_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("timed") / "shards"
    for split in ("train", "val"):
        write_shard(out, ShardPlan(f"{split}-000000", split, ("timed",)), [_timed_clip("timed")], "test", 25)
    return out


def _check_window(batch: dict, i: int) -> int:
    start = int(batch["key"][i].rsplit("@", 1)[1])
    t = start + np.arange(WINDOW)
    frames = batch[f"frames_{S}"][i].numpy().astype(int)  # (T, S, S, 3)
    assert np.abs(frames.mean(axis=(1, 2, 3)) - 8 * t).max() < 1.5, (start, frames.mean(axis=(1, 2, 3)))
    for key in ("lmk", "mfcc", "llf", "phones"):
        rows = batch[key][i].numpy().reshape(WINDOW, -1)
        assert (rows == t[:, None]).all(), (key, start, rows[:, 0])
    mel = batch["mel"][i].numpy()
    first = int(3.2 * start)
    np.testing.assert_array_equal(mel[:, 0], np.arange(first, first + int(3.2 * WINDOW)))
    assert (batch["ref_lmk"][i].numpy() == 0).all()  # the clip's first frame, wherever the window starts
    assert int(batch["emotion"][i]) == 5 and int(batch["intensity"][i]) == 2
    return start


def test_train_and_eval_windows_align_every_key(timed_shards):
    cfg = DataConfig(shard_dir=str(timed_shards), keys=("lmk", "mfcc", "llf", "phones", "mel", f"frames_{S}"),
                     window=WINDOW, batch_size=4, train_batches=3, windows_per_clip=4, shuffle_buffer=4)
    dm = TalkingFaceDataModule(cfg)
    dm.setup("fit")
    starts = {_check_window(batch, i) for batch in dm.train_dataloader() for i in range(len(batch["key"]))}
    assert len(starts) > 3 and max(starts) <= T_CLIP - WINDOW  # random starts, all inside the clip
    val = [_check_window(batch, i) for batch in dm.val_dataloader() for i in range(len(batch["key"]))]
    assert sorted(val) == list(range(0, T_CLIP - WINDOW + 1, WINDOW))  # consecutive, non-overlapping

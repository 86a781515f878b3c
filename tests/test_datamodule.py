"""The WebDataset DataModule on real shards: shapes, windows, determinism, epoch length, bad shards."""

import logging
import pickle

import numpy as np
import pytest
import torch

from datamodules.talking_face import ClipWindows, DataConfig, DecodeSample, TalkingFaceDataModule


def make_dm(workdir, **kw):
    cfg = dict(shard_dir=str(workdir / "shards/crema_d"), keys=("lmk", "mfcc", "llf", "mel"), batch_size=4,
               train_batches=3, windows_per_clip=2, shuffle_buffer=8)
    cfg.update(kw)
    return TalkingFaceDataModule(DataConfig(**cfg))


def test_train_batches_have_documented_shapes_and_fixed_length(crema_shards):
    batches = list(make_dm(crema_shards).train_dataloader())
    assert len(batches) == 3  # fixed epoch length, whatever the number of shards
    b = batches[0]
    assert len(b["key"]) == 4 and all("@" in k for k in b["key"])
    assert b["lmk"].shape == (4, 25, 68, 2) and b["lmk"].dtype == torch.float32
    assert b["mfcc"].shape == (4, 25, 28, 12) and b["llf"].shape == (4, 25, 25)
    assert b["mel"].shape == (4, 80, 80)  # 25 frames = 1 s = 80 mel frames
    assert b["ref_lmk"].shape == (4, 68, 2)
    assert b["emotion"].dtype == torch.int64 and (b["emotion"] == 0).all()  # all neutral clips


@pytest.mark.parametrize("world", [1, 2])
def test_null_train_batches_is_one_pass_over_the_training_frames(crema_shards, world):
    """train_batches: null -> ceil(floor(train frames / T) / (batch_size x world)) batches per rank."""
    import json
    import math

    stats = sorted((crema_shards / "shards/crema_d").glob("train-*.json"))
    frames = sum(json.loads(p.read_text())["frames"] for p in stats)
    assert len(stats) > 1 and frames > 100
    dm = make_dm(crema_shards, train_batches=None, batch_size=2, window=10)
    assert dm.epoch_batches(world) == math.ceil(frames // 10 / (2 * world))
    if world == 1:
        assert len(list(dm.train_dataloader())) == dm.epoch_batches(1)
    assert make_dm(crema_shards, train_batches=3).epoch_batches(world) == 3


def test_a_crop_the_shards_lack_is_resized_from_the_next_larger(crema_shards):
    """A crop side the shards lack (Wav2Lip's 96 from 256 / 128 shards) is the next larger crop
    resized, as preprocess makes its smaller crops; these test shards hold 64 px only."""
    from datamodules.talking_face import frame_reads, shard_crop_sizes
    from primitives.geometry import resize_crops

    shard_dir = crema_shards / "shards/crema_d"
    assert shard_crop_sizes(shard_dir) == (64,)
    decode = frame_reads(("lmk", "frames_48"), shard_dir)
    assert decode.keys == ("lmk", "frames_64") and decode.derive == (("frames_48", "frames_64"),)
    assert decode.drop == ("frames_64",)
    assert frame_reads(("lmk", "frames_64"), shard_dir).derive == ()
    assert frame_reads(("frames_96",), shard_dir).derive == (("frames_96", "frames_64"),)  # none larger: the largest
    batch = next(iter(make_dm(crema_shards, keys=("lmk", "frames_48", "frames_64"), window=4).val_dataloader()))
    assert batch["frames_48"].shape[2:] == (48, 48, 3) and batch["frames_48"].dtype == torch.uint8
    assert np.array_equal(batch["frames_48"][0].numpy(), resize_crops(batch["frames_64"][0].numpy(), 48))
    only48 = next(iter(make_dm(crema_shards, keys=("lmk", "frames_48"), window=4).val_dataloader()))
    assert "frames_64" not in only48 and torch.equal(only48["frames_48"], batch["frames_48"])
    with pytest.raises(FileNotFoundError, match="which crops"):
        frame_reads(("frames_96",), crema_shards / "nothing_here")


def test_the_next_larger_crop_not_the_largest(tmp_path):
    """Shards with 256 and 128 px crops: Wav2Lip's 96 comes from the 128 crop (as preprocess makes it)."""
    import io
    import tarfile

    from datamodules.talking_face import frame_reads, shard_crop_sizes

    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        for name in ("a.frames_256.jpgs", "a.frames_128.jpgs", "a.meta.json", "b.frames_64.jpgs"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    assert shard_crop_sizes(tmp_path) == (256, 128)  # the first sample's members only
    assert frame_reads(("frames_96",), tmp_path).derive == (("frames_96", "frames_128"),)
    assert frame_reads(("frames_200",), tmp_path).derive == (("frames_200", "frames_256"),)


def test_test_windows_with_a_stride_overlap(crema_shards):
    """test_dataloader(stride=3): 25-frame windows every 3 frames (the EAPC authors' protocol)."""
    dm = make_dm(crema_shards, window=25, batch_size=64)
    plain = [k for b in dm.test_dataloader() for k in b["key"]]
    strided = [k for b in dm.test_dataloader(stride=3) for k in b["key"]]
    starts = sorted(int(k.split("@")[1]) for k in strided if k.split("@")[0] == strided[0].split("@")[0])
    assert starts[:3] == [0, 3, 6] and all(b - a == 3 for a, b in zip(starts, starts[1:]))
    assert len(strided) > 2 * len(plain) > 0


def test_window_slices_match_the_clip(crema_shards):
    """Each window is the clip's frames [s, s+T) and the mel rows of that second; ref is frame 0."""
    import webdataset as wds

    from datamodules.talking_face import ReadShards, SelectMembers

    url = str(crema_shards / "shards/crema_d/val-000000.tar")
    keys = ("lmk", "mel")
    clip = next(iter(wds.DataPipeline(wds.SimpleShardList([url]), ReadShards(SelectMembers(keys)),
                                      wds.map(DecodeSample(keys)))))
    windows = list(ClipWindows(25, train=False)([clip]))
    assert len(windows) == len(clip["lmk"]) // 25
    for w in windows:
        s = int(w["key"].split("@")[1])
        np.testing.assert_array_equal(w["lmk"], clip["lmk"][s:s + 25])
        m = int(3.2 * s)  # Wav2Lip's mel index of video frame s: int(80 * s / 25)
        np.testing.assert_array_equal(w["mel"], clip["mel"][m:m + 80])
        np.testing.assert_array_equal(w["ref_lmk"], clip["lmk"][0])


def test_eval_reads_every_window_once_and_training_is_seeded(crema_shards):
    dm = make_dm(crema_shards)
    keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert len(keys) == len(set(keys)) > 0 and all(k.startswith("9905_IOM_NEU_XX@") for k in keys)

    def epoch(seed):
        return [k for b in make_dm(crema_shards, seed=seed).train_dataloader() for k in b["key"]]

    assert epoch(0) == epoch(0)  # same seed, same windows in the same order
    assert epoch(0) != epoch(1)


def test_pipeline_steps_pickle(crema_shards):
    dm = make_dm(crema_shards, num_workers=1)
    loader = dm.train_dataloader()
    pickle.dumps(loader.dataset)
    pickle.dumps(dm.val_dataloader().dataset)
    assert len(list(loader)) == len(loader) == 3  # runs in a worker process too


def _epoch_keys(dm, epoch):
    dm.set_epoch(epoch)
    return [tuple(b["key"]) for b in dm.train_dataloader()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_epoch_draws_new_windows_reproducibly(crema_shards, num_workers):
    """Workers get fresh dataset copies every epoch: the epoch must come from outside."""
    dm = make_dm(crema_shards, num_workers=num_workers, train_batches=5, windows_per_clip=1)
    e0, e1, e0_again = _epoch_keys(dm, 0), _epoch_keys(dm, 1), _epoch_keys(dm, 0)
    assert len(e0) == len(e1) == 5  # train_batches per rank, not train_batches x num_workers
    assert e0 != e1
    assert e0 == e0_again  # a rerun with the same seed repeats the epoch
    assert _epoch_keys(make_dm(crema_shards, num_workers=num_workers, train_batches=5, windows_per_clip=1), 1) == e1
    dm.set_epoch(0, rank=1)
    assert [tuple(b["key"]) for b in dm.train_dataloader()] != e0  # ranks draw different windows


def test_trainer_pushes_epochs_and_resume_continues_the_stream(crema_shards, tmp_path):
    """With num_workers=2 under a real Trainer: epochs differ, and a run resumed from its
    checkpoint after epoch 1 sees epoch 2's windows (those of the uninterrupted run)."""
    import lightning as L

    from datamodules.talking_face import DataEpochCallback

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, _):
            self.seen.setdefault(self.current_epoch, []).append(tuple(batch["key"]))
            return (self.w - batch["lmk"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(max_epochs, ckpt=None, root=tmp_path / "full"):
        module = Recorder()
        trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, callbacks=[DataEpochCallback()],
                            default_root_dir=str(root))
        trainer.fit(module, datamodule=make_dm(crema_shards, num_workers=2, train_batches=3, windows_per_clip=1),
                    ckpt_path=ckpt)
        return module.seen, trainer

    full, _ = fit(3)
    assert sorted(full) == [0, 1, 2] and all(len(v) == 3 for v in full.values())
    assert full[0] != full[1] != full[2]
    first, trainer = fit(2, root=tmp_path / "first")
    assert first == {0: full[0], 1: full[1]}  # same seed: the same stream
    ckpt = tmp_path / "two_epochs.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, _ = fit(3, ckpt=str(ckpt), root=tmp_path / "resumed")
    assert resumed == {2: full[2]}


def test_broken_and_missing_shards(crema_shards, tmp_path, caplog):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    good = (crema_shards / "shards/crema_d/train-000000.tar").read_bytes()
    (shard_dir / "test-000000.tar").write_bytes(good)
    (shard_dir / "test-000001.tar").write_bytes(good[: len(good) // 2])  # truncated mid-sample
    (shard_dir / "test-000002.tar").write_bytes(b"not a tar at all" * 100)
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(shard_dir), keys=("lmk", "mfcc", "llf"), batch_size=2))
    with caplog.at_level(logging.WARNING):
        keys = [k for b in dm.test_dataloader() for k in b["key"]]
    import tarfile

    with tarfile.open(crema_shards / "shards/crema_d/train-000000.tar") as tar:
        clip = tar.getnames()[0].split(".")[0]
    assert keys and all(k.startswith(f"{clip}@") for k in keys)  # the good shard's windows
    assert len(keys) == len(set(keys))
    logged = caplog.text
    assert "test-000001.tar" in logged and "test-000002.tar" in logged

    with pytest.raises(FileNotFoundError, match="shard directory not found"):
        TalkingFaceDataModule(DataConfig(shard_dir=str(tmp_path / "nope"))).setup("fit")
    with pytest.raises(FileNotFoundError, match="no train"):
        TalkingFaceDataModule(DataConfig(shard_dir=str(shard_dir))).setup("fit")


def test_config_validation():
    with pytest.raises(ValueError, match="train.data.window"):
        DataConfig(shard_dir="x", window=0)
    with pytest.raises(ValueError, match="'lmk'"):
        DataConfig(shard_dir="x", keys=("mfcc",))


def test_input_statistics_sample_the_whole_training_split(tmp_path):
    """training_clips draws a seeded sample over every training shard (its stats JSON lists its
    clips; failed ones are left out), not the first clips of the first shard: speakers sorted by id
    all reach the statistics. Same seed, same clips (every DDP rank agrees)."""
    import io
    import json
    import tarfile

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    for k, speaker in enumerate(("1001", "1002", "1003", "1004")):  # one speaker per shard, as sorted ids gave
        ids = [f"{speaker}_clip{c}" for c in range(4)]
        with tarfile.open(tmp_path / f"train-{k:06d}.tar", "w") as tar:
            for clip_id in ids[:3]:  # the fourth failed in preprocessing
                for suffix, data in (("llf.npy", npy(np.full((5, 25), k, np.float32))),
                                     ("meta.json", json.dumps({"id": clip_id, "speaker": speaker}).encode())):
                    info = tarfile.TarInfo(f"{clip_id}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        (tmp_path / f"train-{k:06d}.json").write_text(json.dumps(
            {"planned": ids, "failed": [{"id": ids[3], "step": "audio"}], "frames": 15}))
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(tmp_path), keys=("lmk", "llf"), seed=3))
    clips = dm.training_clips(("llf",), max_clips=6)
    keys = [c["key"] for c in clips]
    assert len(keys) == 6 and len({k.split("_")[0] for k in keys}) >= 3, keys  # not shard 0's three clips
    assert not any(k.endswith("clip3") for k in keys)  # failed clips are not in the shards
    assert [c["key"] for c in dm.training_clips(("llf",), max_clips=6)] == keys
    other = TalkingFaceDataModule(DataConfig(shard_dir=str(tmp_path), keys=("lmk", "llf"), seed=4))
    assert [c["key"] for c in other.training_clips(("llf",), max_clips=6)] != keys
    assert dm.training_arrays("llf", max_clips=6).shape == (30, 25)

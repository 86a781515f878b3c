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
    assert keys and all(k.startswith("9903_DFA_NEU_XX@") for k in keys)  # the good shard's windows
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

"""LightningDataModule over the preprocess stage's WebDataset shards, cut into windows of T frames.

Pipeline (webdataset's ``DataPipeline``, every step a named, picklable object)::

    shards --(train: ResampledShards, seeded per rank/worker | eval: SimpleShardList,
              split_by_node + split_by_worker)--ReadShards--> tar samples --DecodeSample--> clip dicts
           --ClipWindows--> windows --detshuffle (train)--> batched(collate_windows)

Training draws shards with replacement and has a fixed epoch length (``train_batches`` per rank),
so DDP ranks never wait on each other when shards divide unevenly. Evaluation reads every window
once; with fewer shards than ranks every rank reads all shards (means stay exact).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import webdataset as wds

log = logging.getLogger(__name__)

WINDOWED_KEYS = {"lmk": 1.0, "lmk478": 1.0, "mfcc": 1.0, "llf": 1.0, "mel": 80 / 25}
"""Arrays sliced per window, with their rate in rows per video frame (mel: 80 Hz at 25 fps; a
window starting at frame s takes rows ``int(rate * s)`` .. ``+ int(rate * T)``, as Wav2Lip does)."""


def shard_urls(shard_dir: str | Path, split: str) -> list[str]:
    """Sorted shard paths ``<shard_dir>/<split>-NNNNNN.tar``.

    Raises:
        FileNotFoundError: ``shard_dir`` does not exist.
    """
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise FileNotFoundError(f"shard directory not found: {shard_dir} (run `dvc repro preprocess` first)")
    return [str(p) for p in sorted(shard_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))]


def log_and_continue(err: Exception) -> bool:
    """webdataset handler: a broken shard or sample is logged (with its source) and skipped."""
    log.warning("skipping unreadable shard data: %s", err)
    return True


@dataclass(frozen=True)
class SelectMembers:
    """Tar member filter: only ``meta.json``, the requested ``<key>.npy`` and the ``extra`` members
    (e.g. ``"audio.wav"``) are read into memory."""

    keys: tuple[str, ...]
    extra: tuple[str, ...] = ()

    def __call__(self, name: str) -> bool:
        suffix = name.split(".", 1)[-1]
        return suffix == "meta.json" or suffix in self.extra or suffix in {f"{k}.npy" for k in self.keys}


@dataclass(frozen=True)
class ReadShards:
    """Shard URLs -> tar samples ``{"__key__", "__url__", "<suffix>": bytes}``, reading only the
    members ``select`` accepts.

    The tar is opened for random access, so unselected members (the frames, when a method needs
    only landmarks and audio features) are skipped by seeking instead of being streamed through,
    which webdataset's streaming reader must do. A broken shard is logged and the samples read
    completely before the damage are kept.
    """

    select: SelectMembers

    def __call__(self, sources):
        for source in sources:
            url = source["url"]
            sample: dict = {}
            try:
                with tarfile.open(url, "r:") as tar:
                    for member in tar:
                        key, suffix = member.name.split(".", 1)  # keys contain no dots
                        if sample and sample["__key__"] != key:
                            yield sample
                            sample = {}
                        sample = sample or {"__key__": key, "__url__": url}
                        if member.isfile() and self.select(member.name):
                            sample[suffix] = tar.extractfile(member).read()
                if sample:
                    yield sample
            except (tarfile.TarError, OSError, EOFError, ValueError) as err:
                log_and_continue(RuntimeError(f"{url}: {err}; dropped the sample being read ({sample.get('__key__')})"))


@dataclass(frozen=True)
class DecodeSample:
    """Decode the ``.npy`` members listed in ``keys`` (plus ``meta.json``) of a tar sample.

    Returns dicts with ``key`` (str), ``meta`` (dict) and one float32/uint8 array per key; a
    sample lacking a requested member raises ``KeyError`` naming it (handled as a broken sample).
    """

    keys: tuple[str, ...]

    def __call__(self, sample: dict) -> dict:
        out = {"key": sample["__key__"], "meta": json.loads(sample["meta.json"])}
        for key in self.keys:
            member = f"{key}.npy"
            if member not in sample:
                raise KeyError(f"sample {sample['__key__']} in {sample.get('__url__')} has no {member}")
            out[key] = np.load(io.BytesIO(sample[member]), allow_pickle=False)
        return out


@dataclass
class ClipWindows:
    """Cut a decoded clip into windows of ``window`` frames.

    ``train=True``: ``per_clip`` windows at random starts (a ``numpy`` Generator seeded from
    ``seed``, the worker and the rank, so runs are reproducible); ``train=False``: consecutive
    non-overlapping windows covering the clip (the tail shorter than a window is dropped).
    Every window also carries ``ref_lmk``: the landmarks of the clip's first frame (the reference
    frame of the one-shot protocol).
    """

    window: int
    train: bool
    per_clip: int = 1
    seed: int = 0
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._rng = np.random.default_rng([self.seed, rank, info.id if info else 0])
        return self._rng

    def __call__(self, clips):
        for clip in clips:
            n = len(clip["lmk"])
            if n < self.window:
                continue
            if self.train:
                starts = self._generator().integers(0, n - self.window + 1, size=self.per_clip)
            else:
                starts = range(0, n - self.window + 1, self.window)
            for start in starts:
                item = {"key": f"{clip['key']}@{int(start)}", "emotion": clip["meta"]["emotion_id"],
                        "intensity": clip["meta"]["intensity"], "ref_lmk": clip["lmk"][0]}
                for name, value in clip.items():
                    if name in WINDOWED_KEYS:
                        first, rows = int(WINDOWED_KEYS[name] * start), int(WINDOWED_KEYS[name] * self.window)
                        item[name] = value[first: first + rows]
                    elif name.startswith("frames_"):
                        item[name] = value[start: start + self.window]
                yield item


def collate_windows(items: list[dict]) -> dict:
    """Stack windows into a batch.

    Returns:
        dict with ``key`` (list[str]), ``emotion`` (B,) int64 in [0, 8), ``intensity`` (B,) int64,
        ``ref_lmk`` (B, 68, 2) float32 and, when loaded, ``lmk`` (B, T, 68, 2) float32 (256 px
        crop pixels), ``lmk478`` (B, T, 478, 3), ``mfcc`` (B, T, 28, 12), ``llf`` (B, T, 25),
        ``mel`` (B, floor(3.2 T), 80) float32 in [-4, 4], ``frames_<S>`` (B, T, S, S, 3) uint8.
    """
    batch = {"key": [it["key"] for it in items],
             "emotion": torch.tensor([it["emotion"] for it in items], dtype=torch.int64),
             "intensity": torch.tensor([it["intensity"] for it in items], dtype=torch.int64)}
    for name in items[0]:
        if name not in batch:
            batch[name] = torch.from_numpy(np.stack([it[name] for it in items]))
    return batch


@dataclass
class DataConfig:
    """Data parameters (``train.data`` in params.yaml).

    Attributes:
        shard_dir: ``shards/<dataset>``.
        keys: arrays to load, e.g. ``("lmk", "mfcc", "llf")``; ``frames_256`` etc. for pixels.
        window: T, frames per window (EAPC: 25 = 1 s).
        batch_size: windows per batch and rank.
        train_batches: batches per training epoch and rank (fixed epoch length).
        windows_per_clip: random windows drawn from each training clip visit.
        shuffle_buffer: windows in the training shuffle buffer.
        num_workers: DataLoader worker processes.
        seed: seed of shard resampling, window starts and shuffling.
    """

    shard_dir: str
    keys: tuple[str, ...] = ("lmk", "mfcc", "llf")
    window: int = 25
    batch_size: int = 32
    train_batches: int = 100
    windows_per_clip: int = 4
    shuffle_buffer: int = 256
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        for name in ("window", "batch_size", "train_batches", "windows_per_clip", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"train.data.num_workers must be >= 0, got {self.num_workers}")
        if "lmk" not in self.keys:
            raise ValueError("train.data.keys must include 'lmk' (windows and references are cut from it)")


class TalkingFaceDataModule(L.LightningDataModule):
    """Train / val / test loaders over ``<shard_dir>/{train,val,test}-NNNNNN.tar``.

    Raises:
        FileNotFoundError: the shard directory or its training shards are missing (at ``setup``).
    """

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg

    def urls(self, split: str) -> list[str]:
        return shard_urls(self.cfg.shard_dir, split)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.urls("train"):
            raise FileNotFoundError(f"no train-*.tar shards in {self.cfg.shard_dir}")

    def _pipeline(self, split: str, train: bool) -> wds.DataPipeline:
        cfg = self.cfg
        urls = self.urls(split)
        if train:
            source = [wds.ResampledShards(urls, seed=cfg.seed, deterministic=True)]
        else:
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            # fewer shards than ranks: every rank reads all of them (no rank without data)
            source = [wds.SimpleShardList(urls)] + ([wds.split_by_node] if len(urls) >= world else [])
            source.append(wds.split_by_worker)
        stages = source + [
            ReadShards(SelectMembers(cfg.keys)),
            wds.map(DecodeSample(cfg.keys), handler=log_and_continue),
            ClipWindows(cfg.window, train, cfg.windows_per_clip, cfg.seed),
        ]
        if train:
            stages.append(wds.detshuffle(cfg.shuffle_buffer, initial=min(64, cfg.shuffle_buffer), seed=cfg.seed))
        stages.append(wds.batched(cfg.batch_size, collation_fn=collate_windows, partial=not train))
        pipeline = wds.DataPipeline(*stages)
        return pipeline.with_epoch(nbatches=cfg.train_batches) if train else pipeline

    def _loader(self, split: str, train: bool) -> torch.utils.data.DataLoader:
        workers = self.cfg.num_workers if train else min(self.cfg.num_workers, len(self.urls(split)))
        return torch.utils.data.DataLoader(self._pipeline(split, train), batch_size=None, num_workers=workers,
                                           persistent_workers=False)

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("val", train=False)

    def test_dataloader(self):
        return self._loader("test", train=False)

    def training_arrays(self, key: str, max_clips: int = 256) -> np.ndarray:
        """Frames of ``key`` (e.g. ``"llf"`` -> (N, 25)) from the first ``max_clips`` training clips
        in shard order: deterministic, so every DDP rank fits the same input statistics.

        Raises:
            FileNotFoundError: no readable training clip.
        """
        pipeline = wds.DataPipeline(wds.SimpleShardList(self.urls("train")),
                                    ReadShards(SelectMembers((key,))),
                                    wds.map(DecodeSample((key,)), handler=log_and_continue))
        arrays = [clip[key] for _, clip in zip(range(max_clips), pipeline)]
        if not arrays:
            raise FileNotFoundError(f"no readable training clips in {self.cfg.shard_dir}")
        return np.concatenate(arrays)

"""LightningDataModule over the preprocess stage's WebDataset shards, cut into windows of T frames.

Pipeline (webdataset's ``DataPipeline``, every step a named, picklable object)::

    shards --(train: ResampledShardList | eval: SimpleShardList, split_by_node + split_by_worker)
           --ReadShards--> tar samples --DecodeSample--> clip dicts
           --ClipWindows--> windows --shuffle (train)--> batched(collate_windows)

Training draws shards with replacement and has a fixed epoch length (``train_batches`` per rank),
so DDP ranks never wait on each other when shards divide unevenly. ``train_batches: null`` makes an
epoch one pass over the data (:meth:`TalkingFaceDataModule.epoch_batches`): as many windows as the
training frames hold non-overlapping windows of T frames, divided between the ranks, so the global
batch is ``batch_size x world size`` and an epoch has ``ceil(frames / T / (batch_size x world))``
steps on every rank. Evaluation reads every window
once; with fewer shards than ranks every rank reads all shards (means stay exact).

Epochs (:class:`TrainWindows`): DataLoader workers get a fresh copy of the dataset every epoch,
so no random state may live on it. The trainer pushes the epoch in (:class:`DataEpochCallback`,
and ``train_dataloader`` reads ``trainer.current_epoch``, which covers epoch 0 and a resumed run),
and every worker builds its pipeline from seeds derived from ``(seed, epoch, rank, worker)``: new
windows every epoch, the same ones on a rerun, and a run resumed from ``last.ckpt`` at epoch ``e``
draws epoch ``e``'s windows. The ``train_batches`` of an epoch are split between the workers, so
the epoch length is ``train_batches`` per rank whatever ``num_workers`` is.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import webdataset as wds
from lightning.pytorch.callbacks import Callback

from primitives.frame_codec import decode_jpeg_frames
from primitives.geometry import resize_crops

log = logging.getLogger(__name__)

WINDOWED_KEYS = {"lmk": 1.0, "lmk478": 1.0, "lmk_dlib68": 1.0, "mfcc": 1.0, "mfcc_authors": 1.0, "llf": 1.0,
                 "llf_authors": 1.0,
                 "phones": 1.0, "mel": 80 / 25}
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


def shard_fingerprint(shard_dir: Path) -> str:
    """Cheap identity of a shard folder: names and byte sizes of its tars plus the content of its
    per-shard stats (clip ids, frame counts, the preprocessing params hash). Reading every tar would
    cost minutes on a full dataset; a change of preprocessing code that keeps every size and the
    version is not seen (bump ``PREPROCESS_VERSION``)."""
    digest = hashlib.sha256()
    for path in sorted(Path(shard_dir).glob("*-*.tar")):
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
        stats = path.with_suffix(".json")
        if stats.is_file():
            digest.update(stats.read_bytes())
    return digest.hexdigest()[:16]


def shard_crop_sizes(shard_dir: str | Path) -> tuple[int, ...]:
    """The ``frames_<S>`` crop sides the shards hold (the members of the first sample of the first
    readable shard of any split), largest first; ``()`` when no shard is readable."""
    for path in sorted(Path(shard_dir).glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")):
        try:
            sides, first = set(), None
            with tarfile.open(path, "r:") as tar:
                for member in tar:  # headers only, up to the second sample
                    key, suffix = member.name.split(".", 1)
                    if first not in (None, key):
                        break
                    first = key
                    if suffix.startswith("frames_"):
                        sides.add(int(suffix.removeprefix("frames_").split(".")[0]))
            if sides:
                return tuple(sorted(sides, reverse=True))
        except (tarfile.TarError, OSError, ValueError):
            continue
    return ()


def frame_reads(keys: tuple[str, ...], shard_dir: str | Path) -> "DecodeSample":
    """The decoder of ``keys`` from the shards in ``shard_dir``: a ``frames_<S>`` the shards lack
    (:func:`shard_crop_sizes`) is resized from the smallest larger crop they hold (the largest when
    none is larger), so a method (Wav2Lip's 96 px) or an evaluator works at its own crop side.

    Raises:
        FileNotFoundError: a frames key is missing and no readable shard says which crops it holds.
    """
    keys = tuple(keys)
    wanted = [k for k in keys if k.startswith("frames_")]
    available = shard_crop_sizes(shard_dir) if wanted else ()
    derive = []
    for key in wanted:
        side = int(key.removeprefix("frames_"))
        if side in available:
            continue
        if not available:
            raise FileNotFoundError(f"{shard_dir}: no readable shard says which crops it holds (wanted {key})")
        derive.append((key, f"frames_{min((s for s in available if s > side), default=max(available))}"))
    targets = {target for target, _ in derive}
    read = tuple(dict.fromkeys([k for k in keys if k not in targets] + [source for _, source in derive]))
    drop = tuple(dict.fromkeys(source for _, source in derive if source not in keys))
    return DecodeSample(read, tuple(derive), drop)


def log_and_continue(err: Exception) -> bool:
    """webdataset handler: a broken shard or sample is logged (with its source) and skipped."""
    log.warning("skipping unreadable shard data: %s", err)
    return True


@dataclass(frozen=True)
class SelectMembers:
    """Tar member filter: only ``meta.json``, the requested ``<key>.npy`` (frames: ``<key>.jpgs`` or
    ``<key>.npy``) and the ``extra`` members (e.g. ``"audio.wav"``) are read into memory; with
    ``clip_keys``, only of those clips."""

    keys: tuple[str, ...]
    extra: tuple[str, ...] = ()
    clip_keys: frozenset[str] | None = None  # only these clips' members (None: every clip)

    def __call__(self, name: str) -> bool:
        key, _, suffix = name.partition(".")
        if self.clip_keys is not None and key not in self.clip_keys:
            return False
        wanted = {f"{k}.{ext}" for k in self.keys for ext in ("npy", "jpgs")}
        return suffix == "meta.json" or suffix in self.extra or suffix in wanted


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
    """Decode the members listed in ``keys`` (plus ``meta.json``) of a tar sample: ``<key>.npy``
    arrays, or ``<key>.jpgs`` JPEG frames (:func:`primitives.frame_codec.decode_jpeg_frames`).

    ``derive``: ``(target, source)`` pairs of frame keys, e.g. ``("frames_96", "frames_256")``: the
    target crop, which the shards do not hold, is the source crop resized
    (:func:`primitives.geometry.resize_crops`, as the preprocess stage makes its smaller crops);
    the source must be in ``keys`` and is dropped unless also requested (:func:`frame_reads`).

    Returns dicts with ``key`` (str), ``meta`` (dict) and one float32/uint8 array per key; a
    sample lacking a requested member raises ``KeyError`` naming it (handled as a broken sample).
    """

    keys: tuple[str, ...]
    derive: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()

    def __call__(self, sample: dict) -> dict:
        out = self._decode(sample)
        for target, source in self.derive:
            out[target] = resize_crops(out[source], int(target.removeprefix("frames_")))
        for key in self.drop:
            out.pop(key, None)
        return out

    def _decode(self, sample: dict) -> dict:
        out = {"key": sample["__key__"], "meta": json.loads(sample["meta.json"])}
        for key in self.keys:
            if f"{key}.jpgs" in sample:
                out[key] = decode_jpeg_frames(sample[f"{key}.jpgs"])
            elif f"{key}.npy" in sample:
                out[key] = np.load(io.BytesIO(sample[f"{key}.npy"]), allow_pickle=False)
            else:
                raise KeyError(f"sample {sample['__key__']} in {sample.get('__url__')} has no {key}.npy / .jpgs")
        return out


@dataclass(frozen=True)
class ClipWindows:
    """Cut a decoded clip into windows of ``window`` frames.

    ``train=True``: ``per_clip`` windows at random starts drawn by ``np.random.default_rng(seed)``
    (``seed``: an int or a tuple of ints, e.g. ``(seed, epoch, rank, worker)``; the generator is
    created anew on each call, so one call = one reproducible stream); ``train=False``: windows
    every ``stride`` frames (None: ``window``, consecutive non-overlapping windows covering the
    clip; the tail shorter than a window is dropped).
    Every window also carries ``ref_lmk``: the landmarks of the clip's first frame (the reference
    frame of the one-shot protocol).
    """

    window: int
    train: bool
    per_clip: int = 1
    seed: int | tuple[int, ...] = 0
    stride: int | None = None

    def __call__(self, clips):
        rng = np.random.default_rng(self.seed) if self.train else None
        for clip in clips:
            n = len(clip["lmk"])
            if n < self.window:
                continue
            if self.train:
                starts = rng.integers(0, n - self.window + 1, size=self.per_clip)
            else:
                starts = range(0, n - self.window + 1, self.stride or self.window)
            for start in starts:
                item = {"key": f"{clip['key']}@{int(start)}", "speaker": str(clip["meta"].get("speaker", "")),
                        "emotion": clip["meta"]["emotion_id"], "intensity": clip["meta"]["intensity"],
                        "ref_lmk": clip["lmk"][0]}
                for name, value in clip.items():
                    if name in WINDOWED_KEYS:
                        first, rows = int(WINDOWED_KEYS[name] * start), int(WINDOWED_KEYS[name] * self.window)
                        item[name] = value[first: first + rows]
                    elif name.startswith("frames_"):
                        item[name] = value[start: start + self.window]
                yield item


class ResampledShardList(torch.utils.data.IterableDataset):
    """Endless stream of ``{"url": ...}`` drawn with replacement from ``urls`` by
    ``random.Random(seed)`` (``seed`` a str, e.g. ``"0-3-1-0-shards"``): a fresh, reproducible
    stream on every iteration. Replaces ``wds.ResampledShards``, whose epoch counter lives on the
    dataset object and restarts in every DataLoader worker."""

    def __init__(self, urls: tuple[str, ...], seed: str):
        super().__init__()
        self.urls, self.seed = tuple(urls), seed

    def __iter__(self):
        rng = random.Random(self.seed)
        while True:
            yield {"url": rng.choice(self.urls)}


class TrainWindows(torch.utils.data.IterableDataset):
    """The training stream of one rank: exactly ``n_batches`` batches per epoch (``cfg.train_batches``,
    or :meth:`TalkingFaceDataModule.epoch_batches` when that is null).

    Set the epoch with :meth:`set_epoch` (and ``rank`` / ``world_size`` for DDP) in the main
    process before the DataLoader iterator is created. Each DataLoader worker ``w`` of ``W``
    yields ``n_batches // W`` batches (+1 for ``w < n_batches % W``), from a pipeline
    seeded by ``(cfg.seed, epoch, rank, w)``: shard draws, window starts and the shuffle buffer.

    Yields:
        dicts from :func:`collate_windows` with ``cfg.batch_size`` windows each.
    """

    def __init__(self, urls: list[str], cfg: "DataConfig", n_batches: int | None = None):
        super().__init__()
        self.urls, self.cfg = tuple(urls), cfg
        self.n_batches = int(n_batches if n_batches is not None else cfg.train_batches)
        self.decode = frame_reads(cfg.keys, cfg.shard_dir)  # (in the main process: read once, pickled to workers)
        self.epoch, self.rank = 0, 0

    def set_epoch(self, epoch: int, rank: int | None = None) -> None:
        """Select the epoch (and, under DDP, the global rank) whose windows the next iterator yields."""
        self.epoch = int(epoch)
        if rank is not None:
            self.rank = int(rank)

    def __len__(self) -> int:
        return self.n_batches

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    def __iter__(self):
        cfg = self.cfg
        worker, n_workers = self._worker()
        n_batches = self.n_batches // n_workers + (worker < self.n_batches % n_workers)
        tag = f"{cfg.seed}-{self.epoch}-{self.rank}-{worker}"
        pipeline = wds.DataPipeline(
            ResampledShardList(self.urls, f"{tag}-shards"),
            ReadShards(SelectMembers(self.decode.keys)),
            wds.map(self.decode, handler=log_and_continue),
            ClipWindows(cfg.window, True, cfg.windows_per_clip, (cfg.seed, self.epoch, self.rank, worker)),
            wds.shuffle(cfg.shuffle_buffer, initial=min(64, cfg.shuffle_buffer), seed=f"{tag}-shuffle"),
            wds.batched(cfg.batch_size, collation_fn=collate_windows, partial=False),
        )
        return itertools.islice(iter(pipeline), n_batches)


class DataEpochCallback(Callback):
    """Pushes ``trainer.current_epoch`` and the global rank into the DataModule's training stream
    at every epoch start (Lightning creates the epoch's DataLoader iterator after this hook for
    every epoch but the first of a run, which ``TalkingFaceDataModule.train_dataloader`` covers)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, TalkingFaceDataModule):
            datamodule.set_epoch(trainer.current_epoch, trainer.global_rank)


def collate_windows(items: list[dict]) -> dict:
    """Stack windows into a batch.

    Returns:
        dict with ``key``, ``speaker`` (list[str]), ``emotion`` (B,) int64 in [0, 8), ``intensity`` (B,) int64,
        ``ref_lmk`` (B, 68, 2) float32 and, when loaded, ``lmk`` (B, T, 68, 2) float32 (256 px
        crop pixels), ``lmk478`` (B, T, 478, 3), ``mfcc`` (B, T, 28, 12), ``llf`` (B, T, 25), ``phones`` (B, T, 40),
        ``mel`` (B, floor(3.2 T), 80) float32 in [-4, 4], ``frames_<S>`` (B, T, S, S, 3) uint8.
    """
    batch = {"key": [it["key"] for it in items], "speaker": [it.get("speaker", "") for it in items],
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
        train_batches: batches per training epoch and rank (fixed epoch length); ``None``: one pass
            over the training frames per epoch (:meth:`TalkingFaceDataModule.epoch_batches`).
        windows_per_clip: random windows drawn from each training clip visit.
        shuffle_buffer: windows in the training shuffle buffer.
        num_workers: DataLoader worker processes.
        pin_memory: page-locked batches for faster host-to-GPU copies (a GPU run; no effect on results).
        seed: seed of shard resampling, window starts and shuffling.
    """

    shard_dir: str
    keys: tuple[str, ...] = ("lmk", "mfcc", "llf")
    window: int = 25
    batch_size: int = 32
    train_batches: int | None = 100
    windows_per_clip: int = 4
    shuffle_buffer: int = 256
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        for name in ("window", "batch_size", "train_batches", "windows_per_clip", "shuffle_buffer"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
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
        self._epoch, self._rank = 0, 0
        self._train: TrainWindows | None = None

    def urls(self, split: str) -> list[str]:
        return shard_urls(self.cfg.shard_dir, split)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.urls("train"):
            raise FileNotFoundError(f"no train-*.tar shards in {self.cfg.shard_dir}")

    def set_epoch(self, epoch: int, rank: int | None = None) -> None:
        """Select the training epoch (and global rank) of the next ``train_dataloader`` iterator."""
        self._epoch, self._rank = int(epoch), (self._rank if rank is None else int(rank))
        if self._train is not None:
            self._train.set_epoch(self._epoch, self._rank)

    def _eval_pipeline(self, split: str, stride: int | None = None) -> wds.DataPipeline:
        cfg = self.cfg
        urls = self.urls(split)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # fewer shards than ranks: every rank reads all of them (no rank without data)
        source = [wds.SimpleShardList(urls)] + ([wds.split_by_node] if len(urls) >= world else [])
        decode = frame_reads(cfg.keys, cfg.shard_dir)
        return wds.DataPipeline(*source, wds.split_by_worker, ReadShards(SelectMembers(decode.keys)),
                                wds.map(decode, handler=log_and_continue),
                                ClipWindows(cfg.window, False, stride=stride),
                                wds.batched(cfg.batch_size, collation_fn=collate_windows, partial=True))

    def _loader(self, dataset, workers: int) -> torch.utils.data.DataLoader:
        # persistent_workers=False: workers must be re-created (with the new epoch) every epoch
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False,
                                           pin_memory=self.cfg.pin_memory)

    def epoch_batches(self, world_size: int = 1) -> int:
        """Batches per epoch and rank: ``train_batches``, or when it is ``None`` one pass over the
        training data, ``ceil(W / (batch_size * world_size))`` with W the non-overlapping windows
        of ``window`` frames in the training frames (the ``frames`` of every ``train-*.json`` shard
        stats file, floor-divided by ``window``; >= 1).

        Raises:
            FileNotFoundError: ``train_batches`` is ``None`` and a training shard has no stats file.
        """
        cfg = self.cfg
        if cfg.train_batches is not None:
            return cfg.train_batches
        frames = 0
        for url in self.urls("train"):
            stats = Path(url).with_suffix(".json")
            if not stats.is_file():
                raise FileNotFoundError(f"{stats}: no shard stats to count an epoch (train.data.train_batches: null); "
                                        "rebuild the shards or set train_batches")
            frames += int(json.loads(stats.read_text())["frames"])
        return max(1, math.ceil(frames // cfg.window / (cfg.batch_size * max(1, world_size))))

    def train_dataloader(self):
        trainer = getattr(self, "trainer", None)
        world = 1
        if trainer is not None:  # epoch 0, or the epoch a resumed run restarts at
            self._epoch, self._rank, world = trainer.current_epoch, trainer.global_rank, trainer.world_size
        self._train = TrainWindows(self.urls("train"), self.cfg, self.epoch_batches(world))
        self._train.set_epoch(self._epoch, self._rank)
        return self._loader(self._train, self.cfg.num_workers)

    def val_dataloader(self):
        return self._loader(self._eval_pipeline("val"), min(self.cfg.num_workers, len(self.urls("val"))))

    def test_dataloader(self, stride: int | None = None):
        """Every test window (``stride``: one every ``stride`` frames; None: non-overlapping)."""
        return self._loader(self._eval_pipeline("test", stride), min(self.cfg.num_workers, len(self.urls("test"))))

    def _training_clip_ids(self) -> dict[str, list[str]] | None:
        """Training shard URL -> the clips it holds (its stats JSON's ``planned`` minus ``failed``);
        None when a shard has no stats file (shards made elsewhere)."""
        held = {}
        for url in self.urls("train"):
            stats = Path(url).with_suffix(".json")
            if not stats.is_file():
                return None
            data = json.loads(stats.read_text())
            failed = {f["id"] for f in data.get("failed", ())}
            held[url] = [i for i in data.get("planned", ()) if i not in failed]
        return held

    def iter_training_clips(self, keys: tuple[str, ...], max_clips: int | None = 256,
                            clip_keys: frozenset[str] | None = None) -> Iterator[dict]:
        """Whole training clips, streamed (``DecodeSample`` dicts with ``key``, ``meta`` and
        ``keys``): a sample of ``max_clips`` drawn from the whole training split with ``cfg.seed``
        (deterministic, so every DDP rank derives the same ones, and spread over speakers and
        emotions: the first clips in shard order were one corner of the data), or every training
        clip with ``max_clips=None``, or the clips named in ``clip_keys`` (then ``max_clips`` is
        ignored). Without shard stats files: the first ``max_clips`` in shard order. Only ``keys``'
        members are read (the rest of each tar is skipped by seeking)."""
        decode = frame_reads(tuple(keys), self.cfg.shard_dir)
        urls, keep = self.urls("train"), clip_keys
        held = self._training_clip_ids()
        if held is not None and max_clips is not None and keep is None:
            ids = sorted(i for clip_ids in held.values() for i in clip_ids)
            keep = frozenset(random.Random(self.cfg.seed).sample(ids, min(max_clips, len(ids))))
        if held is not None and keep is not None:
            urls = [url for url in urls if keep.intersection(held[url])]
        if clip_keys is not None:
            max_clips = None
        pipeline = wds.DataPipeline(wds.SimpleShardList(urls),
                                    ReadShards(SelectMembers(decode.keys, clip_keys=keep)),
                                    wds.select(lambda sample: keep is None or sample["__key__"] in keep),
                                    wds.map(decode, handler=log_and_continue))
        yield from (pipeline if max_clips is None else itertools.islice(pipeline, max_clips))

    def training_clips(self, keys: tuple[str, ...], max_clips: int = 256) -> list[dict]:
        """:meth:`iter_training_clips` as a list (``max_clips`` of them, for input statistics and backdrops).

        Raises:
            FileNotFoundError: no readable training clip.
        """
        clips = list(self.iter_training_clips(keys, max_clips))
        if not clips:
            raise FileNotFoundError(f"no readable training clips in {self.cfg.shard_dir}")
        return clips

    def training_arrays(self, key: str, max_clips: int = 256) -> np.ndarray:
        """Frames of ``key`` (e.g. ``"llf"`` -> (N, 25)) of :meth:`training_clips`, concatenated."""
        return np.concatenate([clip[key] for clip in self.training_clips((key,), max_clips)])

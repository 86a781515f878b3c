"""Shard planning, atomic shard writing, per-shard stats and resume.

Shard ids are stable: within a split, clips are ordered by a hash of their id (:func:`shard_order`)
and cut into chunks of ``clips_per_shard`` (by default sized to ``shard_target_mb``: :func:`size_shards`); chunk k is ``<split>-<k:06d>.tar``. The hash mixes
speakers, emotions and levels into every shard (ids sort by speaker and emotion: shards of
consecutive ids each held one speaker's one emotion, and a shuffle buffer cannot undo that), and
it depends on the id alone, so plans are the same on every run. A shard is written to a temporary
file and renamed, then its stats JSON is written; a shard whose stats JSON exists and matches the current
params hash and clip list is reused as is, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

SPLITS = ("train", "val", "test")
TAR_MTIME = 0.0
"""Fixed member mtime: the same samples give a byte-identical tar."""


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write.

    Attributes:
        name: ``<split>-<k:06d>`` (the tar is ``<name>.tar``, its stats ``<name>.json``).
        split: train / val / test.
        clip_ids: ids of the clips planned for this shard, sorted.
    """

    name: str
    split: str
    clip_ids: tuple[str, ...]


def shard_order(clip_id: str) -> str:
    """The key clips are ordered by before chunking: SHA-256 of the id (stable, well mixed)."""
    return hashlib.sha256(f"shard-order:{clip_id}".encode()).hexdigest()


def size_shards(rows: list[dict], cfg, base_dir: str | None = None, probes: int = 16) -> int:
    """Clips per shard for shards of about ``cfg.shard_target_mb`` (``cfg.clips_per_shard`` when set).

    The mean clip length comes from the container headers of the first ``probes`` clips in
    :func:`shard_order` (a seeded sample across speakers and emotions, the same on every run);
    clips that cannot be probed are left out (they become recorded failures later), and with none
    left 3 s is assumed. A clip's size is ``seconds x fps x cfg.frame_bytes()``.

    Args:
        rows: manifest rows (``id``, ``video_path``).
        cfg: :class:`pipeline.extract.clip.PreprocessConfig`.
        base_dir: folder relative ``video_path`` values are relative to (None: the working directory).

    Returns:
        clips per shard, >= 1.
    """
    if cfg.clips_per_shard is not None:
        return cfg.clips_per_shard
    from pipeline.extract.errors import ClipFailure
    from pipeline.extract.video import probe_video

    seconds = []
    for row in sorted(rows, key=lambda r: shard_order(str(r["id"])))[:probes]:
        path = str(row["video_path"])
        try:
            probe = probe_video(path if base_dir is None else os.path.join(base_dir, path))
        except ClipFailure:
            continue
        if probe.duration_s > 0:
            seconds.append(min(probe.duration_s, cfg.max_seconds))
    clip_mb = (sum(seconds) / len(seconds) if seconds else 3.0) * cfg.fps * cfg.frame_bytes() / 1e6
    return max(1, round(cfg.shard_target_mb / clip_mb))


def plan_shards(rows: list[dict], clips_per_shard: int, order: str = "hash") -> list[ShardPlan]:
    """Cut manifest rows into shards per split (stable ids; see module docstring).

    Args:
        rows: manifest rows (``id``, ``split``).
        clips_per_shard: clips per shard (the last of a split may hold fewer).
        order: ``"hash"`` (:func:`shard_order`, mixed shards) or ``"id"`` (sorted ids: the layout
            before mixing, kept for ``benchmarks/shard_mix.py``).

    Raises:
        ValueError: a row whose split is not train/val/test, or an unknown ``order``.
    """
    if order not in ("hash", "id"):
        raise ValueError(f"order must be 'hash' or 'id', got {order!r}")
    plans = []
    for split in SPLITS:
        ids = sorted((str(r["id"]) for r in rows if r["split"] == split), key=shard_order if order == "hash" else None)
        for k, start in enumerate(range(0, len(ids), clips_per_shard)):
            plans.append(ShardPlan(f"{split}-{k:06d}", split, tuple(sorted(ids[start:start + clips_per_shard]))))
    unknown = {r["split"] for r in rows} - set(SPLITS)
    if unknown:
        raise ValueError(f"manifest has rows with unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    return plans


def shard_is_done(out_dir: Path, plan: ShardPlan, params_hash: str) -> bool:
    """True when ``plan``'s tar and stats exist, were made from the same clips and params, and no
    clip of it failed for an infrastructure reason (step ``worker``: its task or node died; ``timeout``), which
    the next run retries; bad input fails the same way every time and is not retried."""
    stats_path = out_dir / f"{plan.name}.json"
    if not (out_dir / f"{plan.name}.tar").is_file() or not stats_path.is_file():
        return False
    try:
        stats = json.loads(stats_path.read_text())
    except json.JSONDecodeError:
        return False
    if any(f.get("step") in ("worker", "timeout") for f in stats.get("failed", ())):
        return False
    return stats.get("params_hash") == params_hash and tuple(stats.get("planned", ())) == plan.clip_ids


def write_shard(out_dir: Path, plan: ShardPlan, results: list, params_hash: str, fps: int) -> dict:
    """Write one shard's tar (samples sorted by key) and its stats JSON, atomically.

    Args:
        out_dir: ``shards/<dataset>``.
        plan: the shard.
        results: one ``ClipResult`` per planned clip.
        params_hash: ``PreprocessConfig.content_hash()``, stored for resume checks.
        fps: frames per second, to report seconds.

    Returns:
        The stats dict: ``shard, split, clips, frames, seconds, failures (count), failed (list of
        {id, step, reason}), planned, params_hash``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tar_path = out_dir / f"{plan.name}.tar"
    tmp_path = tar_path.with_suffix(".tar.tmp")
    ok = sorted((r for r in results if r.sample is not None), key=lambda r: r.key)
    with wds.TarWriter(str(tmp_path), encoder=False, mtime=TAR_MTIME, user="", group="") as sink:
        for result in ok:
            sink.write({"__key__": result.key, **result.sample})
    os.replace(tmp_path, tar_path)
    frames = sum(r.n_frames for r in ok)
    stats = {
        "shard": plan.name,
        "split": plan.split,
        "clips": len(ok),
        "frames": frames,
        "seconds": round(frames / fps, 3),
        "failures": len(results) - len(ok),
        "failed": sorted((r.failure for r in results if r.failure is not None), key=lambda f: f["id"]),
        "planned": list(plan.clip_ids),
        "params_hash": params_hash,
    }
    (out_dir / f"{plan.name}.json").write_text(json.dumps(stats, indent=1, sort_keys=True))
    return stats


SUMMARY_FILES = ("stats.json", "failures.jsonl")
"""Folder-level files the preprocess stage writes beside the shards."""


def _own_stats(path: Path) -> bool:
    """A shard stats JSON this stage wrote (:func:`write_shard`): recognised by its content."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(stats, dict) and stats.get("shard") == path.stem and {"params_hash", "planned"} <= set(stats)


def foreign_files(out_dir: Path, plans: list[ShardPlan]) -> list[str]:
    """Names in ``out_dir`` that this stage did not write: anything but the summary files, a shard
    whose stats JSON is one of ours (tar + JSON), and the tar / stats / ``.tar.tmp`` of a shard of
    ``plans`` (a run killed half-way leaves those)."""
    planned = {p.name for p in plans}
    own = {p.stem for p in out_dir.glob("*.json") if _own_stats(p)}
    foreign = []
    for path in sorted(out_dir.iterdir()):
        stem = path.name.split(".", 1)[0]
        ours = path.name in SUMMARY_FILES or (
            path.is_file() and (stem in own or stem in planned)
            and path.name in (f"{stem}.tar", f"{stem}.json", f"{stem}.tar.tmp"))
        if not ours:
            foreign.append(path.name)
    return foreign


def process_shard(job: tuple[ShardPlan, list[dict]], cfg, base_dir: str | None, out_dir: str,
                  params_hash: str) -> dict:
    """One Ray task (or serial step) per shard: process every clip of ``job = (plan, manifest rows)``
    (:func:`pipeline.extract.clip.process_clip`, one after another on this worker's CPU) and write
    the shard's tar and stats JSON into ``out_dir`` from this worker. Only the stats (counts and
    failures, a few hundred bytes) go back to the driver, so no sample's bytes pass through one
    process; ``out_dir`` must be storage every node sees (as the dataset is).

    Returns:
        :func:`write_shard`'s stats dict.
    """
    from pipeline.extract.clip import process_clip

    plan, rows = job
    results = [process_clip(row, cfg, base_dir) for row in rows]
    return write_shard(Path(out_dir), plan, results, params_hash, cfg.fps)


def remove_stale_shards(out_dir: Path, plans: list[ShardPlan]) -> list[str]:
    """Delete the shards of an earlier run that ``plans`` no longer has (a manifest with fewer
    clips): only a tar whose stats JSON this stage wrote (:func:`_own_stats`), never by name alone.
    Returns the names removed."""
    keep = {p.name for p in plans}
    removed = []
    for stats in sorted(out_dir.glob("*.json")):
        if stats.stem not in keep and _own_stats(stats):
            for path in (out_dir / f"{stats.stem}.tar", out_dir / f"{stats.stem}.tar.tmp", stats):
                if path.is_file():
                    path.unlink()
                    removed.append(path.name)
    return removed

"""Reading a split's clips for the protocol: whole clips with their audio, metadata alone, chosen
clips, each speaker's neutral reference frame, and the clip count the shards promise."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile
import webdataset as wds

from datamodules.talking_face import DecodeSample, ReadShards, SelectMembers, frame_reads, shard_urls
from primitives.sync_windows import mel_start


def split_metas(shard_dir: Path, split: str = "test") -> dict[str, dict]:
    """Clip id -> ``meta.json`` of every clip in ``<split>-*.tar``, reading no other member."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, split)), ReadShards(SelectMembers(())))
    return {sample["__key__"]: json.loads(sample["meta.json"]) for sample in pipeline if "meta.json" in sample}


def load_clips(shard_dir: Path, keys: set[str], arrays: tuple[str, ...], split: str = "test") -> dict[str, dict]:
    """The clips ``keys`` of ``split`` with ``arrays`` (e.g. ``frames_128``, ``lmk``) and ``meta``, in one pass.

    Raises:
        FileNotFoundError: a clip of ``keys`` could not be read.
    """
    decode = frame_reads(arrays, shard_dir)
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, split)),
                                ReadShards(SelectMembers(decode.keys, clip_keys=frozenset(keys))),
                                wds.select(lambda sample: sample["__key__"] in keys), wds.map(decode))
    clips = {clip["key"]: clip for clip in pipeline}
    if set(clips) != set(keys):
        raise FileNotFoundError(f"clips not readable from {shard_dir}: {sorted(set(keys) - set(clips))}")
    return clips


def neutral_references(shard_dir: Path, frames_key: str, metas: dict[str, dict] | None = None,
                       split: str = "test") -> dict[str, dict]:
    """Speaker -> its neutral reference in ``split``: the first frame (and its landmarks) of the
    speaker's first neutral clip by id (papers 002 / 004: the generator drives a neutral image of
    the speaker, I_n). Speakers with no neutral clip in the split are absent.

    Returns:
        ``{speaker: {"frame": (S, S, 3) uint8, "lmk": (68, 2) float32, "key": clip id}}``.
    """
    metas = split_metas(shard_dir, split) if metas is None else metas
    first: dict[str, str] = {}
    for key in sorted(metas):
        meta = metas[key]
        if meta["emotion"] == "neutral":
            first.setdefault(str(meta["speaker"]), key)
    clips = load_clips(shard_dir, set(first.values()), (frames_key, "lmk"), split) if first else {}
    return {speaker: {"frame": clips[key][frames_key][0], "lmk": clips[key]["lmk"][0], "key": key}
            for speaker, key in first.items()}


def split_clips(shard_dir: Path, frames_key: str, split: str = "test", extra_keys: tuple[str, ...] = (),
                max_frames: int | None = None):
    """The clips of a split: dicts with ``key``, ``meta``, ``<frames_key>``, ``lmk``, ``mel``,
    ``audio`` and the arrays named in ``extra_keys`` (e.g. ``phones``); whole clips, or their first
    ``max_frames`` frames (:func:`first_frames`)."""
    decode = frame_reads((frames_key, "lmk", "mel", *extra_keys), shard_dir)  # a crop the shards lack: resized
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, split)),
                                ReadShards(SelectMembers(decode.keys, extra=("audio.wav",))),
                                wds.map(_DecodeWithAudio(decode.keys, decode.derive, decode.drop)))
    if max_frames is not None:
        pipeline.append(wds.map(lambda clip: first_frames(clip, frames_key, max_frames)))
    return iter(pipeline)


def first_frames(clip: dict, frames_key: str, n: int) -> dict:
    """The clip's first ``n`` frames (all when it is shorter): every per-frame array ``[:n]``, ``mel``
    (3.2 rows a frame) to the rows before frame ``n``'s (``primitives.sync_windows.mel_start``, the
    windows' own rule), ``audio`` to ``round(n * sample_rate / fps)`` samples; ``meta["n_frames"]``
    updated. The arrays are views."""
    t = len(clip[frames_key])
    if n >= t:
        return clip
    fps = float(clip["meta"]["fps"])
    out = {**clip, "meta": {**clip["meta"], "n_frames": n}}
    for key, value in clip.items():
        if isinstance(value, np.ndarray) and key not in ("mel", "audio") and len(value) == t:
            out[key] = value[:n]
    out["mel"] = clip["mel"][: mel_start(n)]
    if "audio" in clip:
        out["audio"] = clip["audio"][: round(n * float(clip["meta"]["sample_rate"]) / fps)]
    return out


class _DecodeWithAudio(DecodeSample):
    def __call__(self, sample: dict) -> dict:
        out = super().__call__(sample)
        out["audio"], _ = soundfile.read(io.BytesIO(sample["audio.wav"]), dtype="float32")
        return out

def clips_in_shard_stats(shard_dir: Path, split: str) -> int | None:
    """Clips the preprocess stage wrote into ``<split>-*.tar`` (from the per-shard stats json), or
    None when a stats file is missing."""
    total = 0
    for tar in sorted(shard_dir.glob(f"{split}-*.tar")):
        stats = tar.with_suffix(".json")
        if not stats.is_file():
            return None
        total += int(json.loads(stats.read_text())["clips"])
    return total

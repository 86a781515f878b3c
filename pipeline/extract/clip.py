"""The per-clip job: decode -> landmarks -> aligned crops -> audio features -> one shard sample.

``process_clip`` never raises for bad input: a clip that cannot be used comes back as a
``ClipResult`` with ``failure`` set (step + reason), which the stage writes to ``failures.jsonl``.
Everything in a sample is a deterministic function of the clip and the config, so re-running with
the same params gives byte-identical samples.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.extract.align import crop_transforms, transform_points
from primitives.frame_codec import encode_jpeg_frames
from primitives.geometry import resize_crops, warp_frames
from pipeline.extract.audio import (
    AudioConfig, authors_llf, authors_mfcc, check_not_silent, extract_audio_features, fit_to_frames, load_audio, wav_to_bytes,
)
from pipeline.extract.errors import ClipFailure
from pipeline.extract.dlib68 import authors_dlib68
from pipeline.extract.landmarks import detect_face_mesh, fill_missing_faces, mesh_to_68
from pipeline.extract.phones import phone_features
from pipeline.extract.video import decode_video
from primitives.vocab import EMOTION_TO_ID

PREPROCESS_VERSION = "5"
"""Bump when the sample format or an extraction step changes meaning (it enters ``params_hash``)."""


RUN_KEYS = ("ray_address", "num_workers", "max_retries", "clip_timeout_s", "task_memory_mb", "max_failure_fraction",
            "shard_target_mb", "clips_per_shard")
"""Settings of how the stage runs and cuts shards, not of what a sample holds: outside ``content_hash``
(a changed shard size changes the shards' clip lists, which the resume check compares by itself)."""

ARRAY_BYTES_PER_FRAME = {"lmk478": 478 * 3 * 4, "lmk": 68 * 2 * 4, "mel": 1023, "mfcc": 1345, "llf": 101}
"""Bytes per video frame of the float32 arrays in a sample (mel: 80 bins x 3.2 rows, mfcc and llf as
``pipeline.extract.audio`` makes them; measured in the sample's shards)."""
JPEG_BYTES_PER_PIXEL = 0.25
"""Face crops at ``jpeg_quality`` 90, 4:4:4: 0.20 (256 px) - 0.32 (128 px) bytes per pixel on the
sample's CREMA-D crops (``benchmarks/shard_size.py``); used only to size shards."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The ``preprocess`` section of ``params.yaml`` (see the comments there for each field)."""

    ray_address: str | None = None
    num_workers: int = 2
    max_retries: int = 3
    clip_timeout_s: float = 600.0
    task_memory_mb: int = 1024
    max_failure_fraction: float = 0.05
    shard_target_mb: float = 16.0
    clips_per_shard: int | None = None
    fps: int = 25
    decode_max_side: int = 720
    max_seconds: float = 20.0
    crop_sizes: tuple[int, ...] = (256, 128)
    crop_face_scale: float = 0.6
    align: str = "clip"
    max_missing_face: float = 0.2
    sample_rate: int = 16000
    silence_dbfs: float = -55.0
    max_av_mismatch_s: float = 0.5
    frames_format: str = "jpeg"
    jpeg_quality: int = 90
    phones: bool = True
    eapc_authors: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_sizes", tuple(int(s) for s in self.crop_sizes))
        checks = {
            "num_workers": self.num_workers >= 1,
            "max_retries": self.max_retries >= 0,
            "shard_target_mb": self.shard_target_mb > 0,
            "clips_per_shard": self.clips_per_shard is None or self.clips_per_shard >= 1,
            "fps": self.fps > 0,
            "decode_max_side": self.decode_max_side >= 64,
            "max_seconds": self.max_seconds > 0,
            "crop_sizes": len(self.crop_sizes) > 0 and all(s >= 32 for s in self.crop_sizes),
            "crop_face_scale": 0 < self.crop_face_scale <= 1,
            "align": self.align in ("clip", "frame"),
            "max_missing_face": 0 <= self.max_missing_face <= 1,
            "sample_rate": self.sample_rate > 0,
            "max_av_mismatch_s": self.max_av_mismatch_s >= 0,
            "frames_format": self.frames_format in ("jpeg", "npy"),
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
            "phones": isinstance(self.phones, bool),
            "eapc_authors": isinstance(self.eapc_authors, bool),
            "clip_timeout_s": self.clip_timeout_s > 0,
            "task_memory_mb": self.task_memory_mb >= 0,
            "max_failure_fraction": 0 <= self.max_failure_fraction <= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"preprocess.{key}: invalid value {getattr(self, key)!r}")

    @property
    def audio(self) -> AudioConfig:
        return AudioConfig(
            sample_rate=self.sample_rate, fps=self.fps, silence_dbfs=self.silence_dbfs,
            max_av_mismatch_s=self.max_av_mismatch_s,
        )

    def frame_bytes(self) -> float:
        """Estimated bytes one video frame adds to a shard: the crops (JPEG estimate or raw
        uint8), the arrays (:data:`ARRAY_BYTES_PER_FRAME`, phones' 40 float32), 16-bit audio.
        At the defaults 30.7 KB, 7 % above the 28.8 KB per frame of the sample's CREMA-D shards."""
        per_pixel = JPEG_BYTES_PER_PIXEL if self.frames_format == "jpeg" else 3
        crops = sum(per_pixel * s * s for s in self.crop_sizes)
        arrays = sum(ARRAY_BYTES_PER_FRAME.values()) + (40 * 4 if self.phones else 0)
        return crops + arrays + 2 * self.sample_rate / self.fps

    def content_hash(self) -> str:
        """Hash of everything that changes sample bytes (not Ray placement or shard sizes)."""
        content = {k: v for k, v in asdict(self).items() if k not in RUN_KEYS}
        if not self.eapc_authors:  # off: the hash of shards made before the option existed
            content.pop("eapc_authors")
        content["version"] = PREPROCESS_VERSION
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ClipResult:
    """Outcome of one clip.

    Attributes:
        key: the clip id (WebDataset ``__key__``).
        sample: file name -> bytes of the shard sample, or None on failure.
        failure: ``{"id", "step", "reason"}`` or None on success.
        n_frames: frames written (0 on failure).
        timings: seconds spent per step (audio, decode, landmarks, crop, phones, encode), for benchmarks.
    """

    key: str
    sample: dict[str, bytes] | None = None
    failure: dict[str, str] | None = None
    n_frames: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def process_clip(row: dict[str, Any], cfg: PreprocessConfig, base_dir: str | None = None) -> ClipResult:
    """Turn one manifest row into a WebDataset sample.

    Args:
        row: a manifest row (``id, dataset, video_path, audio_path, speaker, sex, emotion,
            intensity, sentence, split``); an empty ``audio_path`` means "use the video's track".
        cfg: preprocessing parameters.
        base_dir: the folder relative paths of ``row`` are relative to: the driver's working
            directory, since a Ray worker's is the folder its node was started in; None: this
            process's. The sample's ``meta.json`` keeps the row's paths as written (same bytes on
            every machine).

    Returns:
        A ``ClipResult``; its sample holds, for T frames at ``cfg.fps``:
        ``frames_<S>.jpgs`` (T, S, S, 3) uint8 RGB aligned crops for each S in ``cfg.crop_sizes``,
        JPEG per frame (:mod:`primitives.frame_codec`; ``frames_<S>.npy`` with ``frames_format: npy``);
        ``lmk.npy`` (T, 68, 2) float32 and ``lmk478.npy`` (T, 478, 3) float32, pixels of the
        largest crop; ``mel.npy`` (floor(3.2 T), 80) float32 in [-4, 4] (80 Hz); ``mfcc.npy`` (T, 28, 12) float32;
        ``llf.npy`` (T, 25) float32; with ``eapc_authors``: ``lmk_dlib68.npy`` (T, 68, 2) float32, the
        EAPC authors' dlib landmarks in each frame's 256 px face box (:mod:`pipeline.extract.dlib68`),
        and ``mfcc_authors.npy`` (T, 28, 12) float32, their MFCCs of each frame's own 40 ms
        (:func:`pipeline.extract.audio.authors_mfcc`), and ``llf_authors.npy`` (T, 25) float32, their LLFs
        (:func:`pipeline.extract.audio.authors_llf`);
        ``phones.npy`` (T, 40) float32 pocketsphinx phone occupancy
        (:mod:`pipeline.extract.phones`, with ``cfg.phones``); ``audio.wav`` (16-bit PCM, ``cfg.sample_rate``, mono,
        exactly T / fps seconds); ``meta.json``.
    """
    # one BLAS/OpenMP thread: a worker owns one CPU, and reductions then sum in the same order in
    # every process (Ray worker or not), so samples are byte-identical wherever they are made
    cv2.setNumThreads(1)  # OpenCV's own pool: one worker, one CPU (Ray tasks request one each)
    with threadpool_limits(limits=1), contextlib.chdir(base_dir or os.curdir):  # a worker runs one task at a time
        return _process_clip(row, cfg)


class _Laps:
    """Seconds per named step, for the benchmark's breakdown (never part of a sample)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._clock
        self._clock = now


def _process_clip(row: dict[str, Any], cfg: PreprocessConfig) -> ClipResult:
    lap = _Laps()
    timings = lap.timings
    key = str(row["id"])

    video_path = row["video_path"]
    audio_source = row.get("audio_path") or row["video_path"]
    try:
        # audio first: it is cheap, and a clip without usable audio fails before the costly steps
        wav, original_rate = load_audio(audio_source, cfg.sample_rate)
        rms_dbfs = check_not_silent(wav, cfg.silence_dbfs)
        lap("audio")

        video = decode_video(video_path, cfg.fps, cfg.decode_max_side, cfg.max_seconds)
        frames = video.frames  # (T, H, W, 3)
        n_frames = len(frames)
        lap("decode")

        faces = detect_face_mesh(frames)  # (T, 478, 3) frame pixels
        found = faces.found
        lmk478 = fill_missing_faces(faces.lmk478, found, cfg.max_missing_face)
        lap("landmarks")

        size = max(cfg.crop_sizes)
        matrices = crop_transforms(mesh_to_68(lmk478), size, cfg.crop_face_scale, cfg.align)  # (T, 2, 3)
        crops = warp_frames(frames, matrices, size)  # (T, size, size, 3)
        sample = {}
        for s in cfg.crop_sizes:
            resized = resize_crops(crops, s)  # (T, s, s, 3)
            if cfg.frames_format == "jpeg":
                sample[f"frames_{s}.jpgs"] = encode_jpeg_frames(resized, cfg.jpeg_quality)
            else:
                sample[f"frames_{s}.npy"] = _npy(resized)
        lmk478_crop = transform_points(lmk478, matrices)  # (T, 478, 3) crop pixels
        sample["lmk.npy"] = _npy(mesh_to_68(lmk478_crop))
        sample["lmk478.npy"] = _npy(lmk478_crop)
        lap("crop")
        if cfg.eapc_authors:  # the EAPC authors' landmarks: dlib 68 in a per-frame 256 px face box
            dlib68 = authors_dlib68(frames)  # (T, 68, 2), NaN where no face
            sample["lmk_dlib68.npy"] = _npy(fill_missing_faces(dlib68, ~np.isnan(dlib68).any(axis=(1, 2)),
                                                               cfg.max_missing_face))
            lap("dlib68")

        wav = fit_to_frames(wav, n_frames, cfg.audio)
        features = extract_audio_features(wav, n_frames, cfg.audio)
        for name in ("mel", "mfcc", "llf"):
            sample[f"{name}.npy"] = _npy(features[name])
        if cfg.eapc_authors:
            sample["mfcc_authors.npy"] = _npy(authors_mfcc(wav, n_frames, cfg.sample_rate, cfg.fps))
            sample["llf_authors.npy"] = _npy(authors_llf(wav, n_frames, cfg.sample_rate, cfg.fps))
        sample["audio.wav"] = wav_to_bytes(wav, cfg.sample_rate)
        lap("audio")
        if cfg.phones:
            sample["phones.npy"] = _npy(phone_features(wav, n_frames, cfg.sample_rate, cfg.fps))
            lap("phones")
    except ClipFailure as failure:
        return ClipResult(key, failure={"id": key, "step": failure.step, "reason": failure.reason}, timings=timings)
    except Exception as err:  # an unexpected bug must not stop the run either: record it loudly
        return ClipResult(key, failure={"id": key, "step": "internal", "reason": f"{type(err).__name__}: {err}"},
                          timings=timings)

    meta = {
        "id": key,
        "dataset": row["dataset"],
        "speaker": str(row["speaker"]),
        "sex": row.get("sex") or "",
        "emotion": row["emotion"],
        "emotion_id": EMOTION_TO_ID[row["emotion"]],
        "intensity": int(row["intensity"]),
        "sentence": str(row.get("sentence") or ""),
        "split": row.get("split") or "",
        "fps": cfg.fps,
        "n_frames": n_frames,
        "sample_rate": cfg.sample_rate,
        "crop_sizes": list(cfg.crop_sizes),
        "lmk_crop_size": size,
        "source_video": row["video_path"],
        "source_audio": audio_source,
        "audio_from_video_track": not row.get("audio_path"),
        "source_fps": round(video.source_fps, 4),
        "source_size": list(video.source_size),
        "audio_original_rate": int(original_rate),
        "audio_rms_dbfs": round(float(rms_dbfs), 2),
        "frames_without_face": int((~found).sum()),
        "faces_seen": faces.faces_seen,
        "preprocess_version": PREPROCESS_VERSION,
        "params_hash": cfg.content_hash(),
    }
    sample["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    lap("encode")
    return ClipResult(key, sample=sample, n_frames=n_frames, timings=timings)

"""Video probing (PyAV) and decoding (decord) at a fixed frame rate and a bounded size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.extract.errors import ClipFailure


@dataclass(frozen=True)
class VideoProbe:
    """What a container declares about its streams (read from the header, nothing decoded).

    Attributes:
        width, height: frame size in pixels.
        fps: average frame rate of the video stream (frames/s).
        frames: number of frames the container declares (0 when it does not say).
        duration_s: declared duration of the video stream in seconds.
        has_audio: whether the container has an audio stream.
    """

    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    has_audio: bool


@dataclass(frozen=True)
class DecodedVideo:
    """Frames resampled to the target frame rate.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB, long side <= the requested ``max_side``.
        fps: the target frame rate the frames are sampled at.
        source_fps: the container's frame rate.
        source_size: (width, height) of the original frames in pixels.
        scale: decoded size / original size (<= 1).
    """

    frames: np.ndarray
    fps: float
    source_fps: float
    source_size: tuple[int, int]
    scale: float


def probe_video(path: str | Path) -> VideoProbe:
    """Read a video's stream metadata with PyAV.

    Raises:
        ClipFailure: ``step="decode"`` when the file is missing, is not a media file, or has no
            video stream.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise ClipFailure("decode", f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipFailure("decode", f"no video stream in {path}")
            stream = container.streams.video[0]
            if not (stream.codec_context.width > 0 and stream.codec_context.height > 0):  # e.g. a text file
                raise ClipFailure("decode", f"no decodable video in {path} (frames of 0 x 0 px)")
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            else:
                duration = 0.0
            return VideoProbe(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=fps,
                frames=int(stream.frames or 0),
                duration_s=duration,
                has_audio=bool(container.streams.audio),
            )
    except ClipFailure:
        raise
    except Exception as err:  # PyAV raises many error types for unreadable input
        raise ClipFailure("decode", f"cannot open {path}: {err}") from err


def resample_indices(n_source: int, source_fps: float, fps: float) -> np.ndarray:
    """Nearest source frame for each output frame at ``fps`` (e.g. 30 -> 25 fps drops every 6th).

    Returns:
        (T,) int64 indices into the source frames, ``T = floor(n_source * fps / source_fps)``.
    """
    n_out = int(math.floor(n_source * fps / source_fps + 1e-6))
    idx = np.floor(np.arange(n_out) * source_fps / fps + 0.5).astype(np.int64)
    return np.minimum(idx, n_source - 1)


def decode_video(
    path: str | Path,
    fps: float = 25.0,
    max_side: int = 720,
    max_seconds: float = 20.0,
    min_decodable: float = 0.98,
) -> DecodedVideo:
    """Decode a clip with decord at ``fps`` and at most ``max_side`` pixels on the long side.

    Decoding at a target size and refusing clips longer than ``max_seconds`` bounds memory
    (decord is known to leak on long or 4K clips): at most ``max_seconds * fps * H * W * 3`` bytes.

    Args:
        path: any container decord reads (MP4, FLV, ...).
        fps: output frame rate (frames/s); both CREMA-D and MEAD are recorded at 30.
        max_side: long-side bound of the decoded frames in pixels.
        max_seconds: longest clip accepted, seconds.
        min_decodable: fraction of the container's declared frames that must decode; fewer means
            the file is truncated (decord silently stops at the cut).

    Raises:
        ClipFailure: ``step="decode"``: missing/unreadable file, truncated file, too long, too short.
    """
    from decord import VideoReader, cpu

    probe = probe_video(path)
    if probe.duration_s > max_seconds:
        raise ClipFailure("decode", f"clip is {probe.duration_s:.1f} s, longer than max_seconds={max_seconds}")
    scale = min(1.0, max_side / max(probe.width, probe.height))
    # even sizes keep the decoder's scaler happy; -1 keeps the original size
    width, height = (2 * round(probe.width * scale / 2), 2 * round(probe.height * scale / 2)) if scale < 1 else (-1, -1)
    try:
        reader = VideoReader(str(path), ctx=cpu(0), width=width, height=height, num_threads=1)
        n_source = len(reader)
        source_fps = float(reader.get_avg_fps()) or probe.fps
        if probe.frames and n_source < min_decodable * probe.frames:
            raise ClipFailure(
                "decode", f"truncated file: {n_source} of {probe.frames} declared frames decodable"
            )
        idx = resample_indices(n_source, source_fps, fps)
        if len(idx) < 2:
            raise ClipFailure("decode", f"too short: {n_source} frames")
        frames = reader.get_batch(idx.tolist()).asnumpy()  # (T, H, W, 3) uint8
        del reader
    except ClipFailure:
        raise
    except Exception as err:  # decord raises DECORDError / RuntimeError on corrupt streams
        raise ClipFailure("decode", f"decord failed on {path}: {err}") from err
    return DecodedVideo(
        frames=np.ascontiguousarray(frames),
        fps=fps,
        source_fps=source_fps,
        source_size=(probe.width, probe.height),
        scale=frames.shape[2] / probe.width,
    )


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, wav: np.ndarray | None = None,
              sample_rate: int = 16000) -> None:
    """Write frames (and optionally mono audio) as an H.264/AAC MP4 with PyAV.

    Args:
        path: output file.
        frames: (T, H, W, 3) uint8 RGB, H and W even.
        fps: frame rate.
        wav: (N,) float32 in [-1, 1] mono audio, or None for a silent video.
        sample_rate: audio rate in Hz.
    """
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        audio = None
        if wav is not None:
            audio = container.add_stream("aac", rate=sample_rate)
            audio.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            block = av.AudioFrame.from_ndarray(wav.astype(np.float32)[None], format="flt", layout="mono")
            block.sample_rate = sample_rate
            container.mux(audio.encode(block))
            container.mux(audio.encode())

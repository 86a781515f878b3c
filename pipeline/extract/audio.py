"""Per-clip audio features, aligned to the video frames of the clip.

Everything here runs once per clip on one CPU core and is deterministic: the same input gives
byte-identical outputs (no randomness, no data-dependent tuning estimation, fixed FFT sizes).

Time alignment (defaults: 16 kHz, 25 fps => ``samples_per_frame`` = 640 samples = 40 ms):

* the audio is first fitted to the video (:func:`fit_to_frames`): exactly ``T * 640`` samples,
  sample ``n`` at time ``n / 16000`` s, video frame ``t`` covering samples ``[640 t, 640 (t + 1))``;
* ``mel``  (:func:`log_mel`): ``(floor(3.2 T), 80)``, 80 Hz (hop 200, Wav2Lip / SadTalker
  convention), mel frame ``k`` centred on sample ``200 k``, so video frame ``t`` starts at mel
  frame ``int(3.2 t)`` (Wav2Lip's ``int(80 * t / fps)``) and 5 video frames span 16 mel frames;
* ``mfcc`` (:func:`mfcc_windows`): ``(T, 28, 12)``, for each video frame the 28 MFCC frames
  (100 Hz) around its centre, as in ATVGnet and EAPC (paper 001, §3.2);
* ``llf``  (:func:`low_level_features`): ``(T, 25)``, EAPC's low-level features computed on
  exactly the 640 samples of each video frame (paper 001, §3.2-3.3), columns in :data:`LLF_NAMES`.

Note on the mel hop: Wav2Lip's hparams use ``hop_size=200`` at 16 kHz (80 mel frames/s, 3.2 per
video frame at 25 fps), which SyncNet-style experts trained on Wav2Lip's features expect; the
mel is therefore indexed by time (``mel_fps``), not by an integer count per video frame.

Bad input raises :class:`~pipeline.extract.errors.ClipFailure` with ``step="audio"``; wrong
arguments from the caller (programming errors) raise ``ValueError``.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import librosa
import numpy as np
import python_speech_features
import soundfile as sf

from pipeline.extract.errors import ClipFailure

__all__ = [
    "AudioConfig",
    "LLF_NAMES",
    "load_audio",
    "check_not_silent",
    "rms_dbfs",
    "fit_to_frames",
    "log_mel",
    "mfcc_windows",
    "low_level_features",
    "extract_audio_features",
    "wav_to_bytes",
]

STEP = "audio"

# Wav2Lip hparams (audio.py / hparams.py): fixed by the convention, not tunable.
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
N_CONTRAST_BANDS = 6  # librosa default: 6 octave bands + 1 residual row = 7 contrast values

#: Column order of :func:`low_level_features` (25 columns).  Units: ``rms`` linear amplitude
#: (full scale 1.0); ``chroma_*`` in [0, 1] (each frame divided by its maximum); centroid,
#: bandwidth and rolloff in Hz; ``spectral_flatness`` in [0, 1]; ``zero_crossing_rate`` crossings
#: per sample in [0, 1]; ``spectral_contrast_*`` in dB (band 0 lowest).
LLF_NAMES: tuple[str, ...] = (
    ("rms",)
    + tuple(f"chroma_{p}" for p in PITCH_CLASSES)
    + (
        "spectral_centroid_hz",
        "spectral_bandwidth_hz",
        "spectral_rolloff_hz",
        "spectral_flatness",
        "zero_crossing_rate",
    )
    + tuple(f"spectral_contrast_{b}" for b in range(N_CONTRAST_BANDS + 1))
)
assert len(LLF_NAMES) == 25

# Extensions read with soundfile (libsndfile); anything else goes through decord (FFmpeg).
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc"})
# Common rates: the original rate of a container's audio is snapped to one of these.
STANDARD_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
SILENCE_FLOOR_DBFS = -200.0  # RMS of digital silence is reported as this instead of -inf


@dataclass(frozen=True)
class AudioConfig:
    """Audio feature parameters (defaults: 16 kHz audio, 25 fps video, 640 samples per frame).

    Mel (Wav2Lip / SadTalker convention, see the module docstring for the hop):
        sample_rate, n_mels, n_fft, hop_length, win_length, fmin, fmax, preemphasis.
    MFCC (EAPC paper 001 §3.2, ATVGnet layout; computed by ``python_speech_features.mfcc``):
        n_mfcc: output coefficients per MFCC frame (c1..c12; c0 is computed and dropped).
        mfcc_hop: MFCC hop in samples (160 = 100 Hz, 4 per video frame).
        mfcc_window: MFCC frames per video frame window (28 = 7 video frames = 280 ms).
        mfcc_n_fft, mfcc_win_length (400 = 25 ms), mfcc_n_mels (26 HTK filters), mfcc_lifter (22).
    Low-level features (paper 001 §3.2-3.3):
        llf_n_fft: zero-padded FFT size of the one-video-frame (640-sample) analysis window; must
        be at least ``samples_per_frame`` (the padding only interpolates the spectrum, which makes
        the chroma mapping of low pitches finer).
    Checks:
        silence_dbfs: clips whose RMS level is below this are a failure.
        max_av_mismatch_s: audio and video durations may differ by at most this (pad/trim).

    Raises:
        ValueError: naming the field, for non-positive sizes, an ``fps`` that does not divide
            ``sample_rate``, a ``hop_length``/``mfcc_hop`` that does not divide the samples per
            frame, and other inconsistent values.
    """

    sample_rate: int = 16000
    fps: int = 25
    n_mels: int = 80
    n_fft: int = 800
    hop_length: int = 200
    win_length: int = 800
    fmin: float = 55.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    n_mfcc: int = 12
    mfcc_hop: int = 160
    mfcc_window: int = 28
    mfcc_n_fft: int = 512
    mfcc_win_length: int = 400
    mfcc_n_mels: int = 26
    mfcc_lifter: int = 22
    llf_n_fft: int = 2048
    silence_dbfs: float = -55.0
    max_av_mismatch_s: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"AudioConfig.{f.name} must be an int, got {value!r}")
                if f.name != "mfcc_lifter" and value <= 0:
                    raise ValueError(f"AudioConfig.{f.name} must be positive, got {value}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                    raise ValueError(f"AudioConfig.{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"AudioConfig.{f.name} must be finite, got {value}")
        if self.mfcc_lifter < 0:
            raise ValueError(f"AudioConfig.mfcc_lifter must be >= 0, got {self.mfcc_lifter}")
        if self.sample_rate % self.fps:
            raise ValueError(
                f"AudioConfig.fps={self.fps} must divide sample_rate={self.sample_rate} "
                "into an integer number of samples per frame"
            )
        spf = self.sample_rate // self.fps
        if spf % self.mfcc_hop:
            raise ValueError(
                f"AudioConfig.mfcc_hop={self.mfcc_hop} must divide the {spf} samples per video frame"
            )
        if self.win_length > self.n_fft:
            raise ValueError(f"AudioConfig.win_length={self.win_length} must be <= n_fft={self.n_fft}")
        if self.mfcc_win_length > self.mfcc_n_fft:
            raise ValueError(
                f"AudioConfig.mfcc_win_length={self.mfcc_win_length} must be <= "
                f"mfcc_n_fft={self.mfcc_n_fft}"
            )
        if self.n_mfcc + 1 > self.mfcc_n_mels:
            raise ValueError(
                f"AudioConfig.n_mfcc={self.n_mfcc} needs n_mfcc + 1 <= mfcc_n_mels={self.mfcc_n_mels}"
            )
        if self.llf_n_fft < spf or (self.llf_n_fft - spf) % 2:
            raise ValueError(
                f"AudioConfig.llf_n_fft={self.llf_n_fft} must be >= the {spf} samples per frame "
                "and differ from it by an even number"
            )
        if not 0.0 <= self.fmin < self.fmax:
            raise ValueError(f"AudioConfig.fmin={self.fmin} must satisfy 0 <= fmin < fmax={self.fmax}")
        if self.fmax > self.sample_rate / 2:
            raise ValueError(
                f"AudioConfig.fmax={self.fmax} must be <= Nyquist ({self.sample_rate / 2})"
            )
        if not 0.0 <= self.preemphasis < 1.0:
            raise ValueError(f"AudioConfig.preemphasis={self.preemphasis} must be in [0, 1)")
        if self.silence_dbfs >= 0:
            raise ValueError(f"AudioConfig.silence_dbfs={self.silence_dbfs} must be negative")
        if self.max_av_mismatch_s < 0:
            raise ValueError(
                f"AudioConfig.max_av_mismatch_s={self.max_av_mismatch_s} must be >= 0"
            )

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 at 16 kHz / 25 fps)."""
        return self.sample_rate // self.fps

    @property
    def mel_fps(self) -> float:
        """Mel frames per second (80 with the defaults: 3.2 per video frame at 25 fps)."""
        return self.sample_rate / self.hop_length

    @property
    def mfcc_frames_per_frame(self) -> int:
        """MFCC frames per video frame (4 with the defaults)."""
        return self.samples_per_frame // self.mfcc_hop


# --------------------------------------------------------------------------------------------
# Loading and checks
# --------------------------------------------------------------------------------------------


def _decord_message(exc: BaseException) -> str:
    """Decord's error text without its ``[hh:mm:ss] /path/file.cc:123:`` prefix."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", msg)[:300]


def _snap_rate(estimate: float) -> int:
    nearest = min(STANDARD_RATES, key=lambda r: abs(r - estimate))
    if abs(nearest - estimate) <= 0.002 * nearest:
        return int(nearest)
    return int(round(estimate))


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wav, dtype=np.float32), int(rate)


def _read_decord(path: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with decord at its own rate (mono downmix).

    decord 0.6 does not expose the stream's sample rate, so the file is opened a second time
    with decord resampling to ``sample_rate`` and the original rate is the ratio of the two
    sample counts, snapped to the nearest common rate (within 0.2 %).  The samples are padded at
    the start by decord's ``add_padding`` count so that sample 0 is container time 0 (streams that
    start late, e.g. 240 samples = 5 ms in evp/M030_angry.m4a).
    """
    import decord  # imported lazily: heavy, and not needed for WAV input

    try:
        native = decord.AudioReader(str(path), sample_rate=-1, mono=True)
        n_native = int(native.shape[1])
        wav = native[:].asnumpy().reshape(-1).astype(np.float32, copy=False) if n_native else None
    except Exception as exc:  # decord raises DECORDError / RuntimeError for every kind of failure
        msg = _decord_message(exc)
        if "find audio stream" in msg.lower():
            raise ClipFailure(STEP, f"no audio stream in {path}") from None
        raise ClipFailure(STEP, f"unreadable audio in {path}: {msg}") from None
    if wav is None or wav.size == 0:
        raise ClipFailure(STEP, f"empty audio: 0 samples in {path}")
    try:
        n_pad = int(native.add_padding())  # read samples first: add_padding breaks native[:]
    except Exception:
        n_pad = 0
    del native
    if n_pad > 0:
        wav = np.concatenate([np.zeros(n_pad, np.float32), wav])
    try:
        resampled = decord.AudioReader(str(path), sample_rate=int(sample_rate), mono=True)
        n_target = int(resampled.shape[1])
        del resampled
    except Exception as exc:
        raise ClipFailure(STEP, f"unreadable audio in {path}: {_decord_message(exc)}") from None
    if n_target <= 0:
        raise ClipFailure(STEP, f"empty audio: 0 samples in {path}")
    return wav, _snap_rate(n_native * sample_rate / n_target)


def load_audio(path: str | os.PathLike, sample_rate: int) -> tuple[np.ndarray, int]:
    """Load the audio of a file as mono float32 at ``sample_rate``.

    WAV/FLAC/OGG/AIFF are read with soundfile (channels averaged); other files (mp4, m4a, flv,
    ...) with ``decord.AudioReader(..., mono=True)``, which reads the first audio stream of the
    container through FFmpeg (AAC, MP3, ...).  A sound file soundfile cannot parse is retried
    with decord before it is declared unreadable.  When the file's rate differs from
    ``sample_rate`` the samples are resampled with ``librosa.resample`` (soxr, "soxr_hq"; output
    length ``ceil(N * sample_rate / original_rate)``).  Samples are clipped to [-1, 1].

    Args:
        path: audio file or audio/video container.
        sample_rate: target rate in Hz (e.g. ``AudioConfig.sample_rate``).

    Returns:
        ``(wav, original_rate)``: ``wav`` float32 ``(N,)`` in [-1, 1] at ``sample_rate``;
        ``original_rate`` the file's own rate in Hz (equal to ``sample_rate`` when no resampling
        was done), to be recorded in the clip's metadata.

    Raises:
        ClipFailure("audio", ...): ``"audio file not found: <path>"``; ``"no audio stream in
            <path>"`` (e.g. talking-clips/eamm/video_happy.mp4); ``"unreadable audio ..."`` for
            a corrupt/unsupported file; ``"empty audio: 0 samples ..."``; ``"non-finite
            samples ..."``.
        ValueError: ``sample_rate`` is not a positive int.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    p = Path(path)
    if not p.exists():
        raise ClipFailure(STEP, f"audio file not found: {p}")
    if not p.is_file():
        raise ClipFailure(STEP, f"not a regular file: {p}")
    if p.stat().st_size == 0:
        raise ClipFailure(STEP, f"unreadable audio in {p}: file is empty (0 bytes)")

    if p.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            wav, rate = _read_soundfile(p)
        except Exception as sf_exc:  # LibsndfileError, RuntimeError, ... on a corrupt file
            sf_msg = str(sf_exc).strip() or type(sf_exc).__name__
            try:
                wav, rate = _read_decord(p, sample_rate)
            except ClipFailure as dec_exc:
                if dec_exc.reason.startswith("empty audio"):
                    raise
                dec_msg = dec_exc.reason.replace(f"unreadable audio in {p}: ", "")
                raise ClipFailure(
                    STEP, f"unreadable audio in {p}: {sf_msg} (decord: {dec_msg})"
                ) from None
    else:
        wav, rate = _read_decord(p, sample_rate)

    if wav.size == 0:
        raise ClipFailure(STEP, f"empty audio: 0 samples in {p}")
    if not np.isfinite(wav).all():
        raise ClipFailure(STEP, f"non-finite samples (NaN/inf) in {p}")
    if rate != sample_rate:
        wav = librosa.resample(wav, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
        if wav.size == 0:
            raise ClipFailure(STEP, f"empty audio: too short to resample ({p})")
    wav = np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)
    return np.ascontiguousarray(wav), int(rate)


def audio_lag(reference: np.ndarray, other: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Delay of ``other`` relative to ``reference`` by cross-correlation (e.g. a CREMA-D WAV vs the
    FLV's own audio track).

    Args:
        reference, other: mono float waveforms ``(N,)``, ``(M,)`` at the same ``sample_rate`` (Hz).

    Returns:
        ``(lag_s, ncc)``: seconds by which ``other`` lags ``reference`` (positive: ``other``
        starts later; whole samples) and the normalised cross-correlation at that lag, in [-1, 1].

    Raises:
        ValueError: an empty or all-zero waveform.
    """
    from scipy import signal

    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    energy = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if a.size == 0 or b.size == 0 or energy == 0.0:
        raise ValueError("audio_lag needs two non-empty, non-silent waveforms")
    corr = signal.correlate(b, a, mode="full", method="fft")
    best = int(np.argmax(corr))
    lag = int(signal.correlation_lags(b.size, a.size, mode="full")[best])
    return lag / sample_rate, float(corr[best]) / energy


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level of ``wav`` in dBFS (0 dBFS = RMS 1.0, i.e. a full-scale square wave).

    ``20 * log10(sqrt(mean(wav**2)))`` in float64; digital silence gives ``SILENCE_FLOOR_DBFS``
    (-200) instead of ``-inf``.
    """
    x = np.asarray(wav, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    if rms <= 10.0 ** (SILENCE_FLOOR_DBFS / 20.0):
        return SILENCE_FLOOR_DBFS
    return 20.0 * math.log10(rms)


def check_not_silent(wav: np.ndarray, silence_dbfs: float) -> float:
    """Reject silent audio.

    Args:
        wav: float ``(N,)`` samples in [-1, 1].
        silence_dbfs: threshold in dBFS (``AudioConfig.silence_dbfs``, -55 by default).

    Returns:
        The clip's RMS level in dBFS (float, <= 0; -200 for digital silence).

    Raises:
        ClipFailure("audio", "silent audio: RMS -91.2 dBFS < -55.0 dBFS") when the level is below
            ``silence_dbfs`` (e.g. the silent AAC tracks of talking-clips/eamm/video_disgusted.mp4,
            crema-d-layout/AudioWAV/9902_*.wav); ``"empty audio ..."`` for 0 samples.
    """
    x = np.asarray(wav)
    if x.size == 0:
        raise ClipFailure(STEP, "empty audio: 0 samples")
    level = rms_dbfs(x)
    if level < silence_dbfs:
        raise ClipFailure(STEP, f"silent audio: RMS {level:.1f} dBFS < {silence_dbfs:.1f} dBFS")
    return level


def fit_to_frames(wav: np.ndarray, n_frames: int, cfg: AudioConfig) -> np.ndarray:
    """Make the audio exactly as long as the video: ``n_frames * cfg.samples_per_frame`` samples.

    The audio is assumed to start with the video (sample 0 = frame 0); missing samples are
    zero-padded at the end, extra samples trimmed from the end.

    Args:
        wav: float ``(N,)`` at ``cfg.sample_rate``.
        n_frames: number of video frames ``T`` (>= 1) at ``cfg.fps``.
        cfg: audio configuration.

    Returns:
        float32 ``(T * samples_per_frame,)`` (a new array).

    Raises:
        ClipFailure("audio", "audio/video duration mismatch: ..."): when
            ``|N / sample_rate - T / fps| > cfg.max_av_mismatch_s``.
        ValueError: ``n_frames < 1`` or ``wav`` not 1-D.
    """
    n_frames = _check_n_frames(n_frames)
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"wav must be 1-D, got shape {x.shape}")
    target = n_frames * cfg.samples_per_frame
    audio_s = x.size / cfg.sample_rate
    video_s = n_frames / cfg.fps
    if abs(audio_s - video_s) > cfg.max_av_mismatch_s:
        raise ClipFailure(
            STEP,
            f"audio/video duration mismatch: audio {audio_s:.3f} s vs video {video_s:.3f} s "
            f"({n_frames} frames at {cfg.fps} fps), |diff| {abs(audio_s - video_s):.3f} s > "
            f"{cfg.max_av_mismatch_s} s",
        )
    out = np.zeros(target, dtype=np.float32)
    n = min(target, x.size)
    out[:n] = x[:n]
    return out


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _check_n_frames(n_frames: int) -> int:
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
    return int(n_frames)


def _check_fitted(wav: np.ndarray, n_frames: int, cfg: AudioConfig) -> np.ndarray:
    n_frames = _check_n_frames(n_frames)
    x = np.ascontiguousarray(wav, dtype=np.float32)
    if x.ndim != 1 or x.size != n_frames * cfg.samples_per_frame:
        raise ValueError(
            f"wav must be 1-D with n_frames * samples_per_frame = "
            f"{n_frames * cfg.samples_per_frame} samples (use fit_to_frames), got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("wav contains non-finite samples")
    return x


def _preemphasis(x: np.ndarray, k: float) -> np.ndarray:
    """``scipy.signal.lfilter([1, -k], [1], x)``: y[0] = x[0], y[n] = x[n] - k x[n-1]."""
    y = np.empty_like(x)
    y[0] = x[0]
    y[1:] = x[1:] - np.float32(k) * x[:-1]
    return y


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool) -> np.ndarray:
    basis = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
        norm=None if htk else "slaney", dtype=np.float32,
    )
    basis.setflags(write=False)
    return basis


def log_mel(wav: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Wav2Lip / SadTalker normalised log-mel spectrogram, 80 frames per second.

    Convention (Wav2Lip ``audio.melspectrogram`` with its hparams, signal_normalization,
    symmetric_mels, allow_clipping_in_normalization): pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]``;
    ``|STFT|`` (n_fft = win_length = 800 hann, hop ``cfg.hop_length``); 80-band mel filterbank
    ``librosa.filters.mel(fmin=55, fmax=7600, htk=False, norm="slaney")``; amplitude to dB
    ``20 log10(max(1e-5, m))`` minus ``ref_level_db`` 20; normalised with ``min_level_db`` -100
    to ``clip(8 * (S + 100) / 100 - 4, -4, 4)``.

    Framing: the STFT is centred (``center=True``, ``pad_mode="reflect"`` as in Wav2Lip's librosa
    0.7), so mel frame ``k`` is centred on sample ``k * hop_length``; the last of the
    ``N / hop + 1`` centred frames (centred on the clip's end) is dropped, leaving
    ``floor(N / hop)`` frames.  Video frame ``t`` starts at mel frame ``int(t * mel_fps / fps)``
    (3.2 t with the defaults), as in Wav2Lip.

    Args:
        wav: float32 ``(T * samples_per_frame,)`` from :func:`fit_to_frames`.
        cfg: audio configuration.

    Returns:
        float32 ``(floor(T * samples_per_frame / hop_length), n_mels)`` = ``(floor(3.2 T), 80)``,
        values in [-4, 4]
        (-4 = at or below -100 dB relative to ref level, 4 = at or above 0 dB).

    Raises:
        ValueError: ``wav`` is not 1-D with a whole number of video frames.
    """
    spf = cfg.samples_per_frame
    if np.ndim(wav) != 1 or np.size(wav) == 0 or np.size(wav) % spf:
        raise ValueError(f"wav must be 1-D with a positive multiple of {spf} samples (use fit_to_frames)")
    x = _check_fitted(wav, np.size(wav) // spf, cfg)
    y = _preemphasis(x, cfg.preemphasis)
    spec = np.abs(
        librosa.stft(
            y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
            window="hann", center=True, pad_mode="reflect",
        )
    )
    n_out = x.size // cfg.hop_length
    spec = spec[:, :n_out]
    mel = _mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax), False) @ spec
    min_level = np.float32(10.0 ** (MIN_LEVEL_DB / 20.0))
    s_db = 20.0 * np.log10(np.maximum(min_level, mel)) - np.float32(REF_LEVEL_DB)
    norm = (2.0 * MAX_ABS_VALUE) * ((s_db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    norm = np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return np.ascontiguousarray(norm.T, dtype=np.float32)


def _mfcc_frames(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """``python_speech_features.mfcc`` c1..c12 at 100 Hz: ``(4 T - 1, n_mfcc)`` float32; frame
    ``j`` covers samples ``[j * mfcc_hop, j * mfcc_hop + mfcc_win_length)``."""
    sr = cfg.sample_rate
    cep = python_speech_features.mfcc(
        x.astype(np.float64), samplerate=sr, winlen=cfg.mfcc_win_length / sr, winstep=cfg.mfcc_hop / sr,
        numcep=cfg.n_mfcc + 1, nfilt=cfg.mfcc_n_mels, nfft=cfg.mfcc_n_fft, preemph=cfg.preemphasis,
        ceplifter=cfg.mfcc_lifter,
    )  # (frames, 13); column 0 is psf's log frame energy (appendEnergy), dropped below
    return np.ascontiguousarray(cep[:, 1:], dtype=np.float32)


def mfcc_windows(wav: np.ndarray, n_frames: int, cfg: AudioConfig) -> np.ndarray:
    """EAPC's per-frame MFCC input: 28 x 12 MFCCs around each video frame (paper 001 §3.2).

    MFCCs: ``python_speech_features.mfcc`` (psf 0.6, used by the ATVGnet/EVP/EAPC code) with its
    defaults at 16 kHz: pre-emphasis 0.97; rectangular (no) window of 25 ms (400 samples, FFT 512)
    every 10 ms (160 samples), frames starting at sample 0 (frame ``j`` covers samples
    ``160 j .. 160 j + 399``; the last frame is zero-padded); power spectrum / 512; 26 psf mel
    filters 0-8000 Hz; natural log; DCT-II (orthonormal); 13 cepstra liftered with L = 22; c0
    (psf replaces it by the log frame energy) is dropped, as ATVGnet's ``mfcc[..., 1:]``, leaving
    ``cfg.n_mfcc`` = 12 coefficients c1..c12. Dropping c0 makes the features independent of gain.

    Windows: video frame ``t``'s window is MFCC frames ``4 t - 12 .. 4 t + 15`` (280 ms, exactly
    ATVGnet's ``mfcc[(ind - 3) * 4:(ind + 4) * 4]`` rows), whose centre lies 7.5 ms after the
    video frame's centre. Frames before the start or after the end of the clip replicate the
    first/last MFCC frame (ATVGnet pads 120 ms of zeros instead).

    Args:
        wav: float32 ``(T * samples_per_frame,)`` from :func:`fit_to_frames`.
        n_frames: ``T``.
        cfg: audio configuration.

    Returns:
        float32 ``(T, cfg.mfcc_window, cfg.n_mfcc)`` = ``(T, 28, 12)``, unitless cepstra
        (roughly within +-50).

    Raises:
        ValueError: ``wav`` does not have ``T * samples_per_frame`` samples.
    """
    x = _check_fitted(wav, n_frames, cfg)
    frames = _mfcc_frames(x, cfg)  # (k T - 1, 12)
    k = cfg.mfcc_frames_per_frame
    first = np.arange(n_frames) * k - (cfg.mfcc_window // 2 - k // 2)  # 4 t - 12
    idx = np.clip(first[:, None] + np.arange(cfg.mfcc_window)[None, :], 0, frames.shape[0] - 1)
    return np.ascontiguousarray(frames[idx], dtype=np.float32)


def low_level_features(wav: np.ndarray, n_frames: int, cfg: AudioConfig) -> np.ndarray:
    """EAPC's low-level features (LLFs), one 25-dim row per video frame (paper 001 §3.2-3.3).

    The paper lists RMS energy, chroma, spectral centroid, bandwidth, rolloff, zero-crossing rate
    and spectral flatness (1 + 12 + 1 + 1 + 1 + 1 + 1 = 18 values) but states a 25-dimensional
    vector; the 7 missing values are filled with librosa's spectral contrast (6 octave bands +
    1 residual row), a common companion of these features.  Column order: :data:`LLF_NAMES`.

    Analysis frames: frame ``t`` covers exactly the samples of video frame ``t``
    (``[640 t, 640 (t + 1))``, hop 640, no overlap).  RMS and ZCR are computed on those samples;
    the spectral features share ONE magnitude spectrogram (640-sample hann window zero-padded to
    ``cfg.llf_n_fft`` = 2048 points) reused for chroma (``S**2``, ``tuning=0``, per-frame max
    norm), centroid, bandwidth (p = 2), rolloff (85 %), flatness (power 2) and contrast
    (fmin 200 Hz, 6 bands).  The signal is not pre-emphasised.  Values are raw (no standardisation
    -- that is the model's job): see :data:`LLF_NAMES` for units (RMS linear amplitude, Hz for
    centroid/bandwidth/rolloff, dB for contrast).  Silent frames give 0 for RMS, chroma,
    centroid, bandwidth, rolloff and ZCR, 1 for flatness.

    Args:
        wav: float32 ``(T * samples_per_frame,)`` from :func:`fit_to_frames`.
        n_frames: ``T``.
        cfg: audio configuration.

    Returns:
        float32 ``(T, 25)``, finite.

    Raises:
        ValueError: ``wav`` does not have ``T * samples_per_frame`` samples.
    """
    x = _check_fitted(wav, n_frames, cfg)
    sr = cfg.sample_rate
    spf = cfg.samples_per_frame
    n_fft = cfg.llf_n_fft
    pad = (n_fft - spf) // 2
    # Zero-pad so that, with center=False, frame t's (centred) 640-sample window lies exactly on
    # samples [640 t, 640 t + 640) of the clip.
    y_pad = np.pad(x, (pad, pad))
    mag = np.abs(
        librosa.stft(y_pad, n_fft=n_fft, hop_length=spf, win_length=spf, window="hann", center=False)
    )
    mag = mag[:, :n_frames]
    rms = librosa.feature.rms(y=x, frame_length=spf, hop_length=spf, center=False)[0]
    zcr = librosa.feature.zero_crossing_rate(x, frame_length=spf, hop_length=spf, center=False)[0]
    chroma = librosa.feature.chroma_stft(S=mag**2, sr=sr, n_fft=n_fft, tuning=0.0, n_chroma=12)
    centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=n_fft)
    bandwidth = librosa.feature.spectral_bandwidth(S=mag, sr=sr, n_fft=n_fft, centroid=centroid, p=2)
    rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr, n_fft=n_fft, roll_percent=0.85)
    flatness = librosa.feature.spectral_flatness(S=mag, n_fft=n_fft, power=2.0)
    contrast = librosa.feature.spectral_contrast(S=mag, sr=sr, n_fft=n_fft, n_bands=N_CONTRAST_BANDS)
    out = np.concatenate(
        [rms[None], chroma, centroid, bandwidth, rolloff, flatness, zcr[None], contrast], axis=0
    ).T
    out = np.nan_to_num(out.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = LLF_NAMES.index("spectral_flatness")
    out[:, flat] = np.clip(out[:, flat], 0.0, 1.0)  # float32 rounding gives 1.0000007 on silence
    assert out.shape == (n_frames, len(LLF_NAMES)), out.shape
    return np.ascontiguousarray(out)


def extract_audio_features(wav: np.ndarray, n_frames: int, cfg: AudioConfig) -> dict[str, np.ndarray]:
    """All audio features of one clip (call :func:`fit_to_frames` first).

    Args:
        wav: float32 ``(T * samples_per_frame,)``.
        n_frames: ``T``.
        cfg: audio configuration.

    Returns:
        ``{"mel": (floor(3.2 T), 80) float32 in [-4, 4]`` (:func:`log_mel`, Wav2Lip convention),
        ``"mfcc": (T, 28, 12) float32`` (:func:`mfcc_windows`, paper 001 §3.2),
        ``"llf": (T, 25) float32`` (:func:`low_level_features`, paper 001 §3.2-3.3)``}``.

    Raises:
        ValueError: ``wav`` does not have ``T * samples_per_frame`` samples.
    """
    x = _check_fitted(wav, n_frames, cfg)
    return {
        "mel": log_mel(x, cfg),
        "mfcc": mfcc_windows(x, n_frames, cfg),
        "llf": low_level_features(x, n_frames, cfg),
    }


def authors_mfcc(wav: np.ndarray, n_frames: int, sample_rate: int = 16000, fps: int = 25) -> np.ndarray:
    """The EAPC authors' MFCC per video frame (``../shared/reference/README.md``, "eapc-authors/"):
    ``python_speech_features.mfcc`` of the frame's own ``sample_rate / fps`` samples only (40 ms at
    16 kHz and 25 fps) with 10 ms windows every 1 ms, rows 1..28 and coefficients c1..c12 (paper
    001 §3.2's "28 x 12"; ours, :func:`mfcc_windows`, centres 280 ms of context on each frame).

    Args:
        wav: float32 ``(n_frames * sample_rate / fps,)`` (after :func:`fit_to_frames`).

    Returns:
        (n_frames, 28, 12) float32, raw values (not standardised, as theirs).

    Raises:
        ValueError: ``wav`` is shorter than ``n_frames`` frames, or a frame gives fewer than 31 MFCC rows.
    """
    import python_speech_features as psf

    step = sample_rate // fps
    if len(wav) < n_frames * step:
        raise ValueError(f"wav has {len(wav)} samples, {n_frames} frames need {n_frames * step}")
    out = np.empty((n_frames, 28, 12), dtype=np.float32)
    for i in range(n_frames):
        rows = psf.mfcc(wav[i * step:(i + 1) * step], sample_rate, winlen=0.010, winstep=0.001)  # (31, 13)
        if len(rows) < 31:
            raise ValueError(f"frame {i}: {len(rows)} MFCC rows from {step} samples, their layout needs 31")
        out[i] = rows[1:29, 1:13]  # their mfcc[1:-2, 1:] of the 31 rows
    return out


def authors_llf(wav: np.ndarray, n_frames: int, sample_rate: int = 16000, fps: int = 25) -> np.ndarray:
    """The EAPC authors' 25 LLFs per video frame (``../shared/reference/README.md``, "eapc-authors/";
    their MEAD feature script, read not copied): librosa on the whole clip with hop = frame length
    = ``sample_rate / fps`` (640 samples) and librosa's defaults otherwise, so analysis frame ``t``
    is CENTRED on video frame ``t``'s first sample (``center=True``, 2048-point FFT for the spectral
    features) where ours (:func:`low_level_features`) covers the frame's own samples; chroma is the
    CQT chroma of the harmonic part (``librosa.effects.harmonic``) where ours is STFT chroma; values
    raw. Column order theirs: RMS, chroma (12), centroid, bandwidth, contrast (7), flatness,
    rolloff, ZCR (ours: :data:`LLF_NAMES`).

    Args:
        wav: float32 ``(n_frames * sample_rate / fps,)`` (after :func:`fit_to_frames`).

    Returns:
        (n_frames, 25) float32, finite (NaN from a silent frame -> 0).

    Raises:
        ValueError: ``wav`` is shorter than ``n_frames`` frames.
    """
    hop = sample_rate // fps
    if len(wav) < n_frames * hop:
        raise ValueError(f"wav has {len(wav)} samples, {n_frames} frames need {n_frames * hop}")
    y = np.asarray(wav[:n_frames * hop], dtype=np.float32)
    spectral = {"y": y, "sr": sample_rate, "win_length": hop, "hop_length": hop}
    rows = [
        librosa.feature.rms(y=y, frame_length=hop, hop_length=hop),
        librosa.feature.chroma_cqt(y=librosa.effects.harmonic(y), sr=sample_rate, hop_length=hop),
        librosa.feature.spectral_centroid(**spectral),
        librosa.feature.spectral_bandwidth(**spectral),
        librosa.feature.spectral_contrast(**spectral),
        librosa.feature.spectral_flatness(y=y, win_length=hop, hop_length=hop),
        librosa.feature.spectral_rolloff(**spectral),
        librosa.feature.zero_crossing_rate(y=y, frame_length=hop, hop_length=hop),
    ]
    out = np.concatenate([r[:, :n_frames] for r in rows], axis=0).T  # librosa gives n_frames + 1 columns
    return np.ascontiguousarray(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), dtype=np.float32)


def wav_to_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """Encode mono audio as a 16-bit PCM WAV file (the shard's ``audio.wav``).

    Args:
        wav: float ``(N,)`` in [-1, 1] (clipped to that range before quantisation).
        sample_rate: rate in Hz written to the header.

    Returns:
        The bytes of a RIFF/WAVE file, PCM_16, 1 channel; deterministic for a given input.

    Raises:
        ValueError: ``wav`` is not 1-D or ``sample_rate`` is not a positive int.
    """
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"wav must be 1-D, got shape {x.shape}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), int(sample_rate), format="WAV", subtype="PCM_16")
    return buf.getvalue()

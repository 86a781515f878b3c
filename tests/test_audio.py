"""Tests of pipeline.extract.audio on the real sample clips (and a few signals the tests make)."""

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.extract.audio import (
    LLF_NAMES,
    AudioConfig,
    check_not_silent,
    extract_audio_features,
    fit_to_frames,
    load_audio,
    log_mel,
    low_level_features,
    mfcc_windows,
    wav_to_bytes,
)
from pipeline.extract.errors import ClipFailure

CFG = AudioConfig()
SR = CFG.sample_rate
SPF = CFG.samples_per_frame
PITCH_A = 9  # chroma column order C, C#, D, D#, E, F, F#, G, G#, A, A#, B


@pytest.fixture(scope="module")
def crema_wav(shared_datasets: Path) -> Path:
    return shared_datasets / "crema-d-layout" / "AudioWAV" / "9901_IEO_SAD_HI.wav"


@pytest.fixture(scope="module")
def speech(crema_wav: Path) -> np.ndarray:
    wav, rate = load_audio(crema_wav, SR)
    assert rate == SR
    return wav


def _tone(freq: float, n_frames: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n_frames * SPF) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# AudioConfig
# ------------------------------------------------------------------------------------------


def test_config_defaults():
    assert CFG.samples_per_frame == 640
    assert CFG.mel_fps == 80.0 and CFG.hop_length == 200  # Wav2Lip's hparams
    assert CFG.mfcc_frames_per_frame == 4
    assert (CFG.n_mels, CFG.n_fft, CFG.win_length, CFG.fmin, CFG.fmax) == (80, 800, 800, 55.0, 7600.0)
    assert (CFG.n_mfcc, CFG.mfcc_hop, CFG.mfcc_window) == (12, 160, 28)
    with pytest.raises(Exception):
        CFG.fps = 30  # frozen


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"sample_rate": 0}, "sample_rate"),
        ({"n_mels": -1}, "n_mels"),
        ({"fps": 7}, "fps"),  # 16000 / 7 is not an integer
        ({"hop_length": 0}, "hop_length"),
        ({"mfcc_hop": 300}, "mfcc_hop"),
        ({"n_fft": 2.5}, "n_fft"),
        ({"mfcc_window": True}, "mfcc_window"),
        ({"win_length": 1024}, "win_length"),  # > n_fft
        ({"fmax": 9000.0}, "fmax"),  # > Nyquist
        ({"preemphasis": 1.5}, "preemphasis"),
        ({"max_av_mismatch_s": -1.0}, "max_av_mismatch_s"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AudioConfig(**kwargs)


# ------------------------------------------------------------------------------------------
# load_audio on real clips
# ------------------------------------------------------------------------------------------


def test_load_real_wav(crema_wav, speech):
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert speech.size == sf.info(str(crema_wav)).frames  # 16 kHz file: no resampling
    assert np.abs(speech).max() <= 1.0
    level = check_not_silent(speech, CFG.silence_dbfs)
    assert -40.0 < level < -10.0  # real speech


def test_load_mead_m4a(shared_datasets, speech):
    wav, rate = load_audio(shared_datasets / "mead-layout/M030/audio/sad/level_3/001.m4a", SR)
    assert rate == 48000  # AAC 48 kHz, resampled
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.abs(wav).max() <= 1.0
    assert abs(wav.size / SR - 3.69) < 0.05
    check_not_silent(wav, CFG.silence_dbfs)


def test_load_flv_mp3_track(shared_datasets, speech):
    wav, rate = load_audio(shared_datasets / "crema-d-layout/VideoFlash/9901_IEO_SAD_HI.flv", SR)
    assert rate == 44100  # the FLV's MP3 track
    assert wav.dtype == np.float32 and wav.ndim == 1
    # same recording as the CREMA-D-layout WAV: same duration (MP3 adds a few ms of padding)
    assert abs(wav.size - speech.size) / SR < 0.1
    check_not_silent(wav, CFG.silence_dbfs)


def test_no_audio_stream(talking_clips):
    path = talking_clips / "eamm" / "video_happy.mp4"
    with pytest.raises(ClipFailure) as exc:
        load_audio(path, SR)
    assert exc.value.step == "audio"
    assert "audio stream" in exc.value.reason and str(path) in exc.value.reason


@pytest.mark.parametrize(
    "rel", ["talking-clips/eamm/video_disgusted.mp4", "crema-d-layout/AudioWAV/9902_TIE_DIS_XX.wav"]
)
def test_silent_audio(shared_datasets, rel):
    wav, _ = load_audio(shared_datasets / rel, SR)
    assert wav.size > SR  # decodes fine ...
    with pytest.raises(ClipFailure) as exc:  # ... but is silent
        check_not_silent(wav, CFG.silence_dbfs)
    assert exc.value.step == "audio"
    assert exc.value.reason.startswith("silent audio: RMS ")
    assert "dBFS < -55.0 dBFS" in exc.value.reason


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(ClipFailure) as exc:
        load_audio(path, SR)
    assert exc.value.step == "audio"
    assert exc.value.reason == f"audio file not found: {path}"


def test_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    random_bytes = tmp_path / "random.wav"
    random_bytes.write_bytes(rng.bytes(4096))
    good = io.BytesIO()
    sf.write(good, rng.uniform(-0.5, 0.5, SR).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    truncated = tmp_path / "truncated_header.wav"
    truncated.write_bytes(good.getvalue()[:30])  # RIFF header cut before the data chunk
    garbage_mp4 = tmp_path / "garbage.mp4"
    garbage_mp4.write_bytes(rng.bytes(4096))
    for path in (random_bytes, truncated, garbage_mp4):
        with pytest.raises(ClipFailure) as exc:
            load_audio(path, SR)
        assert exc.value.step == "audio"
        assert exc.value.reason.startswith(f"unreadable audio in {path}")


def test_empty_files(tmp_path):
    zero_bytes = tmp_path / "zero_bytes.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(ClipFailure, match="empty"):
        load_audio(zero_bytes, SR)
    no_samples = tmp_path / "no_samples.wav"
    sf.write(str(no_samples), np.zeros(0, np.float32), SR, subtype="PCM_16")
    with pytest.raises(ClipFailure, match="empty audio"):
        load_audio(no_samples, SR)
    with pytest.raises(ClipFailure, match="empty audio"):
        check_not_silent(np.zeros(0, np.float32), CFG.silence_dbfs)


def test_resample_44k_stereo(tmp_path):
    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "tone44k.wav"
    sf.write(str(path), np.stack([left, left], axis=1).astype(np.float32), rate, subtype="PCM_16")
    wav, original = load_audio(path, SR)
    assert original == rate
    assert wav.dtype == np.float32 and wav.shape == (int(1.5 * SR),)
    # still a 440 Hz tone of amplitude 0.5 after downmix + resampling
    n_frames = wav.size // SPF
    llf = low_level_features(wav[: n_frames * SPF], n_frames, CFG)
    zcr = llf[2:-2, LLF_NAMES.index("zero_crossing_rate")]
    assert np.allclose(zcr, 2 * 440 / SR, atol=0.004)
    assert abs(np.sqrt(np.mean(wav[SR // 10 : -SR // 10] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


# ------------------------------------------------------------------------------------------
# fit_to_frames
# ------------------------------------------------------------------------------------------


def test_fit_to_frames_pad_trim_mismatch():
    rng = np.random.default_rng(1)
    wav = rng.uniform(-0.5, 0.5, 50 * SPF + 123).astype(np.float32)
    trimmed = fit_to_frames(wav, 50, CFG)
    assert trimmed.shape == (50 * SPF,) and trimmed.dtype == np.float32
    assert np.array_equal(trimmed, wav[: 50 * SPF])
    padded = fit_to_frames(wav, 55, CFG)  # 0.2 s longer video: zero-padded at the end
    assert padded.shape == (55 * SPF,)
    assert np.array_equal(padded[: wav.size], wav) and not padded[wav.size :].any()
    assert fit_to_frames(wav, 50, CFG) is not wav
    with pytest.raises(ClipFailure) as exc:
        fit_to_frames(wav, 70, CFG)  # 2.8 s video vs 2.0 s audio
    assert exc.value.step == "audio" and "mismatch" in exc.value.reason
    with pytest.raises(ClipFailure):
        fit_to_frames(wav, 30, CFG)  # audio 0.8 s too long
    with pytest.raises(ValueError):
        fit_to_frames(wav, 0, CFG)


# ------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------


def test_feature_shapes_real_speech(speech):
    n_frames = 90  # 3.6 s of the 3.69 s clip
    wav = fit_to_frames(speech, n_frames, CFG)
    feats = extract_audio_features(wav, n_frames, CFG)
    assert set(feats) == {"mel", "mfcc", "llf"}
    assert feats["mel"].shape == (n_frames * 640 // 200, 80)
    assert feats["mfcc"].shape == (n_frames, 28, 12)
    assert feats["llf"].shape == (n_frames, 25)
    for value in feats.values():
        assert value.dtype == np.float32 and value.flags.c_contiguous
        assert np.isfinite(value).all()
    assert feats["mel"].min() >= -4.0 and feats["mel"].max() <= 4.0
    assert feats["mel"].max() > 0.0  # real speech reaches well above the floor
    # the parts agree with the single functions
    assert np.array_equal(feats["mel"], log_mel(wav, CFG))
    assert np.array_equal(feats["mfcc"], mfcc_windows(wav, n_frames, CFG))
    assert np.array_equal(feats["llf"], low_level_features(wav, n_frames, CFG))


def test_llf_names():
    assert len(LLF_NAMES) == 25 and len(set(LLF_NAMES)) == 25
    assert LLF_NAMES[0] == "rms" and LLF_NAMES[10] == "chroma_A"


def test_known_answer_440hz_tone():
    n_frames = 25
    llf = low_level_features(_tone(440.0, n_frames), n_frames, CFG)
    col = {name: llf[:, i] for i, name in enumerate(LLF_NAMES)}
    chroma = llf[:, 1:13]
    assert (chroma.argmax(axis=1) == PITCH_A).all()
    assert np.allclose(col["spectral_centroid_hz"], 440.0, atol=10.0)
    assert (col["spectral_bandwidth_hz"] < 100.0).all()
    assert np.allclose(col["spectral_rolloff_hz"], 440.0, atol=50.0)
    assert (col["spectral_flatness"] < 0.01).all()
    assert np.allclose(col["zero_crossing_rate"], 2 * 440 / SR, atol=0.002)
    assert np.allclose(col["rms"], 0.5 / np.sqrt(2), rtol=0.01)
    quiet = low_level_features(_tone(440.0, n_frames, amp=0.05), n_frames, CFG)
    assert (quiet[:, 0] < col["rms"]).all()
    # white noise: flat, bright spectrum
    noise = np.random.default_rng(2).uniform(-0.5, 0.5, n_frames * SPF).astype(np.float32)
    nl = low_level_features(noise, n_frames, CFG)
    assert (nl[:, LLF_NAMES.index("spectral_flatness")] > 0.3).all()
    assert (nl[:, LLF_NAMES.index("spectral_centroid_hz")] > 3000.0).all()


def test_frame_alignment_of_a_burst():
    """Sound only in video frame 10: the LLF row 10, mel rows around 42 and the MFCC windows of
    frames 6..14 (the ones whose 280 ms window reaches into frame 10) see it."""
    n_frames = 25
    wav = np.zeros(n_frames * SPF, np.float32)
    wav[10 * SPF : 11 * SPF] = np.random.default_rng(3).uniform(-0.5, 0.5, SPF)
    llf = low_level_features(wav, n_frames, CFG)
    assert np.nonzero(llf[:, 0])[0].tolist() == [10]
    energy = log_mel(wav, CFG).mean(axis=1)
    # mel frame k is centred on sample 200 k with a 800-sample window: the burst [6400, 7040) is
    # centred on frame 33.6 and reaches frames 31..37 only
    assert int(np.argmax(energy)) in (33, 34)
    assert (energy[:30] == -4.0).all() and (energy[39:] == -4.0).all()
    mfcc = mfcc_windows(wav, n_frames, CFG)
    changed = [t for t in range(n_frames) if not np.allclose(mfcc[t], mfcc[0])]
    # MFCC frames j = 38..44 (samples 160 j .. 160 j + 399) overlap samples [6400, 7041) (the
    # pre-emphasis carries the burst one sample on); the window of video frame t holds MFCC
    # frames 4 t - 12 .. 4 t + 15, so t = 6..14 see the burst
    assert changed == list(range(6, 15))


def test_mfcc_is_python_speech_features_on_a_real_clip(speech):
    """Known answer: the rows of frame t's window are psf.mfcc's default MFCCs (c1..c12) of the
    whole clip, rows 4 t - 12 .. 4 t + 15 (ATVGnet's indexing), edges replicated."""
    import python_speech_features

    n_frames = 90
    wav = fit_to_frames(speech, n_frames, CFG)
    ref = python_speech_features.mfcc(wav.astype(np.float64), samplerate=16000)[:, 1:]  # psf defaults, 13 cepstra
    assert ref.shape == (4 * n_frames - 1, 12)
    got = mfcc_windows(wav, n_frames, CFG)
    for t in (3, 40, 89):
        rows = np.clip(np.arange(4 * t - 12, 4 * t + 16), 0, len(ref) - 1)
        np.testing.assert_allclose(got[t], ref[rows], rtol=1e-5, atol=1e-4)


def test_silence_features_are_finite():
    n_frames = 10
    wav = np.zeros(n_frames * SPF, np.float32)
    feats = extract_audio_features(wav, n_frames, CFG)
    assert (feats["mel"] == -4.0).all()
    assert all(np.isfinite(v).all() for v in feats.values())
    assert (feats["llf"][:, LLF_NAMES.index("spectral_flatness")] <= 1.0).all()


def test_features_reject_unfitted_audio():
    wav = np.zeros(10 * SPF + 5, np.float32)
    with pytest.raises(ValueError):
        extract_audio_features(wav, 10, CFG)
    with pytest.raises(ValueError):
        log_mel(wav, CFG)
    with pytest.raises(ValueError):
        mfcc_windows(np.zeros(10 * SPF, np.float32), 11, CFG)


def test_determinism(crema_wav):
    def run() -> tuple[bytes, ...]:
        wav, _ = load_audio(crema_wav, SR)
        wav = fit_to_frames(wav, 90, CFG)
        feats = extract_audio_features(wav, 90, CFG)
        return (wav_to_bytes(wav, SR),) + tuple(feats[k].tobytes() for k in ("mel", "mfcc", "llf"))

    assert run() == run()


def test_wav_to_bytes_roundtrip(speech):
    data = wav_to_bytes(speech, SR)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", speech.size)
    back, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert np.abs(back - speech).max() <= 1.0 / 32768 + 1e-7
    loud = wav_to_bytes(np.array([2.0, -2.0, 0.0], np.float32), SR)  # clipped, not wrapped
    back, _ = sf.read(io.BytesIO(loud), dtype="float32")
    assert back[0] > 0.99 and back[1] < -0.99


def test_audio_lag_recovers_a_known_shift(speech):
    from pipeline.extract.audio import audio_lag

    wav = speech
    shifted = np.concatenate([np.zeros(123, np.float32), wav])[: len(wav)]
    lag, ncc = audio_lag(wav, shifted, SR)
    assert lag == 123 / SR and ncc > 0.99
    assert audio_lag(shifted, wav, SR)[0] == -123 / SR
    with pytest.raises(ValueError, match="non-silent"):
        audio_lag(wav, np.zeros(100, np.float32), SR)


def test_real_crema_d_wav_starts_with_its_flv(shared_datasets):
    """CREMA-D's AudioWAV files against the audio track of the original VP6F/MP3 FLVs: no offset."""
    from pipeline.extract.audio import audio_lag

    root = shared_datasets / "crema-d-real"
    flvs = sorted((root / "VideoFlash").glob("*.flv"))
    assert len(flvs) == 6
    for flv in flvs:
        wav, _ = load_audio(root / "AudioWAV" / f"{flv.stem}.wav", SR)
        track, rate = load_audio(flv, SR)
        assert rate == 44100
        lag, ncc = audio_lag(wav, track, SR)
        assert abs(lag) <= 1 / SR and ncc > 0.99, flv.name

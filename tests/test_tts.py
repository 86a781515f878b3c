"""Offline TTS (pipeline.tts) is intelligible: Whisper tiny.en word error rate on a few sentences."""

import numpy as np
import pytest

from eval_metrics.intelligibility import normalise, word_error_rate, transcribe
from pipeline.tts import synthesize

SENTENCES = ["Don't forget a jacket.", "The weather is lovely today, let's go for a walk.",
             "I would like a cup of coffee with milk, please."]


def test_word_error_rate_counts_edits_after_normalising():
    assert normalise("Don't   forget, a JACKET!") == "don't forget a jacket"
    assert word_error_rate(["the cat sat"], ["the cat sat on"]) == pytest.approx(0.25)  # one deletion / 4 words
    assert word_error_rate(["a b c"], ["a x c"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("engine, max_wer", [("hibari", 0.1), ("espeak-ng", 0.35)])  # measured: 0.0 and 0.17
def test_engines_are_intelligible(engine, max_wer):
    speech = [synthesize(s, engine) for s in SENTENCES]
    assert all(w.dtype == np.float32 and w.ndim == 1 and np.abs(w).max() <= 1 for w in speech)
    assert all(0.8 < len(w) / 16000 < 8 for w in speech)  # 16 kHz, a plausible duration
    assert word_error_rate([transcribe(w) for w in speech], SENTENCES) <= max_wer


def test_hibari_is_deterministic_and_bad_text_is_refused():
    assert np.array_equal(synthesize("Hello there.", "hibari"), synthesize("Hello there.", "hibari"))
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ")
    for text in ("!!! ... ?", "你好，世界", "\U0001F600\U0001F622"):  # nothing an English voice can say
        with pytest.raises(ValueError, match="no English word to speak .the voice speaks English only"):
            synthesize(text)
    with pytest.raises(ValueError, match="unknown TTS engine"):
        synthesize("Hello", "festival")

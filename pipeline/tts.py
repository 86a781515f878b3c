"""Offline text-to-speech for ``generate --text`` (papers 000 §4 and 003: text or audio in).

Engines (``engine``):

* ``hibari`` (default): hibari-tts 0.2.1 (Apache-2.0), a small neural voice distilled from Kokoro
  (its bundled American voice ``heart``; other voices download on first use and do not work
  offline). ``pip install hibari-tts==0.2.1``.
* ``espeak-ng``: the Debian package (GPL-3), formant synthesis: instant, robotic, always
  intelligible. ``apt-get install espeak-ng``.

Both return mono float32 at the project's 16 kHz (resampled with soxr through librosa).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

ENGINES = ("hibari", "espeak-ng")
MAX_CHARACTERS = 2000


class TTSError(RuntimeError):
    """The engine is missing or failed; the message says what to install or what went wrong."""


@lru_cache(maxsize=1)
def _hibari():
    try:
        from hibari import Hibari
    except ImportError as err:
        raise TTSError("the hibari engine needs `pip install hibari-tts==0.2.1` (or use --tts-engine espeak-ng)") from err
    return Hibari(threads=1)


def _espeak(text: str) -> tuple[np.ndarray, int]:
    import soundfile

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TTSError("the espeak-ng engine needs the system package: `apt-get install espeak-ng`")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        run = subprocess.run([exe, "-v", "en-us", "-w", str(out), "--", text], capture_output=True, text=True)
        if run.returncode != 0 or not out.is_file():
            raise TTSError(f"espeak-ng failed: {run.stderr.strip() or run.returncode}")
        wav, rate = soundfile.read(out, dtype="float32")
    return wav, rate


def synthesize(text: str, engine: str = "hibari", sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text``.

    Args:
        text: 1..``MAX_CHARACTERS`` characters, not only whitespace.
        engine: one of ``ENGINES``.
        sample_rate: output rate in Hz.

    Returns:
        (N,) float32 mono in [-1, 1] at ``sample_rate``; deterministic for a given text and engine
        (hibari runs with seed 0).

    Raises:
        ValueError: empty or over-long text, text without an English (Latin-letter) word (the voices
            speak English only: Chinese or emoji text is refused, not rendered as silence), unknown engine.
        TTSError: the engine is not installed or failed.
    """
    import librosa

    if engine not in ENGINES:
        raise ValueError(f"unknown TTS engine {engine!r} (known: {', '.join(ENGINES)})")
    text = " ".join(str(text).split())
    if not text:
        raise ValueError("the text is empty")
    if not re.search(r"[A-Za-z0-9]", text):
        raise ValueError(f"the text {text[:40]!r} has no English word to speak (the voice speaks English only)")
    if len(text) > MAX_CHARACTERS:
        raise ValueError(f"the text has {len(text)} characters; at most {MAX_CHARACTERS}")
    if engine == "hibari":
        tts = _hibari()
        wav, rate = np.asarray(tts(text, seed=0), dtype=np.float32), int(tts.sample_rate)
    else:
        wav, rate = _espeak(text)
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if rate != sample_rate:
        wav = librosa.resample(wav, orig_sr=rate, target_sr=sample_rate)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)

"""The bad-input corpus: inputs made by the tests from the real clips in ``../shared/datasets``,
each with the outcome every user entry point must give (``generate`` on the command line, a row
of a jobs file, the web endpoint): refused with one line containing the words below, no video.

``CORPUS[name] = (make(tmp, photo, speech) -> inputs, words)``; ``inputs`` has ``image``, ``audio``
or ``text``, ``emotion`` and optionally ``intensity``. Entry-point-only cases (a checkpoint, an
``--out``, a duplicate row, an upload's size) live with their entry point's tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


def blank_image(tmp: Path) -> Path:
    import cv2

    path = tmp / "wall.png"
    cv2.imwrite(str(path), np.full((240, 320, 3), 128, np.uint8))
    return path


def huge_png(tmp: Path) -> Path:
    """A small file of a 7200 x 7200 px (51.8 MP) image: refused from its header, never decoded."""
    from PIL import Image

    path = tmp / "huge.png"
    Image.new("L", (7200, 7200)).save(path)
    return path


def text_file(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_text("not media")
    return path


def tone_wav(tmp: Path, name: str, seconds: float, amplitude: float) -> Path:
    path = tmp / name
    t = np.arange(int(16000 * seconds)) / 16000
    soundfile.write(path, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path


def _inputs(photo, speech, **changes):
    return {"image": photo, "audio": speech, "text": None, "emotion": "happy", "intensity": None, **changes}


CORPUS = {
    "no face": (lambda tmp, photo, speech: _inputs(photo, speech, image=blank_image(tmp)), "no face"),
    "unreadable image": (lambda tmp, photo, speech: _inputs(photo, speech, image=text_file(tmp, "face.jpg")),
                         "cannot read"),
    "decompression bomb": (lambda tmp, photo, speech: _inputs(photo, speech, image=huge_png(tmp)),
                           "at most 50 megapixels"),
    "unreadable audio": (lambda tmp, photo, speech: _inputs(photo, speech, audio=text_file(tmp, "speech.wav")),
                         "unreadable audio"),
    "silent audio": (lambda tmp, photo, speech: _inputs(photo, speech, audio=tone_wav(tmp, "silent.wav", 2.0, 0.0)),
                     "silent"),
    "too short audio": (lambda tmp, photo, speech: _inputs(photo, speech, audio=tone_wav(tmp, "blip.wav", 0.2, 0.3)),
                        "at least 0.5 s of speech"),
    "punctuation-only text": (lambda tmp, photo, speech: _inputs(photo, None, text="!!! ... ?"), "no English word"),
    "Chinese text": (lambda tmp, photo, speech: _inputs(photo, None, text="你好，世界"), "speaks English only"),
    "emoji text": (lambda tmp, photo, speech: _inputs(photo, None, text="\U0001F600 \U0001F622"), "speaks English only"),
    "unknown emotion": (lambda tmp, photo, speech: _inputs(photo, speech, emotion="ecstatic"), "unknown emotion"),
    "intensity out of range": (lambda tmp, photo, speech: _inputs(photo, speech, intensity="7"),
                               "intensity must be 1 (low), 2 (medium) or 3 (high)"),
    "intensity not a number": (lambda tmp, photo, speech: _inputs(photo, speech, intensity="high"),
                               "intensity must be 1 (low), 2 (medium) or 3 (high)"),
}

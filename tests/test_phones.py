"""pocketsphinx phone features (pipeline.extract.phones) on real CREMA-D speech."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.extract.audio import load_audio
from pipeline.extract.phones import PHONE_INDEX, PHONES, PhoneSegment, decode_phones, phone_features, phone_occupancy

WAVS = Path(os.environ.get("SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")) / "crema-d-real" / "AudioWAV"


def test_occupancy_counts_10ms_steps_per_frame():
    # 3 frames at 25 fps = 12 steps of 10 ms: SIL 0-2, AA 3-6, B 7-9, the last 2 steps undecoded (SIL)
    occ = phone_occupancy([PhoneSegment("SIL", 0, 2), PhoneSegment("AA", 3, 6), PhoneSegment("B", 7, 9)], 3, 25)
    expected = np.zeros((3, len(PHONES)), np.float32)
    expected[0, [PHONE_INDEX["SIL"], PHONE_INDEX["AA"]]] = [0.75, 0.25]
    expected[1, [PHONE_INDEX["AA"], PHONE_INDEX["B"]]] = [0.75, 0.25]
    expected[2, [PHONE_INDEX["B"], PHONE_INDEX["SIL"]]] = [0.5, 0.5]
    np.testing.assert_allclose(occ, expected)


def test_decodes_the_sentence_and_is_deterministic_across_clips():
    # "Don't forget a jacket" (CREMA-D DFA); CMUdict: D OW N T F ER G EH T AH JH AE K AH T
    wav, rate = load_audio(WAVS / "1001_DFA_ANG_XX.wav", 16000)
    first = decode_phones(wav, rate)
    spoken = iter(s.phone for s in first if s.phone != "SIL")
    assert all(p in spoken for p in ["D", "OW", "ER", "G", "EH", "JH", "AE"])  # in this order
    for other in sorted(WAVS.glob("100*_DFA_*.wav")):  # other utterances first: a decoder must not carry state
        decode_phones(load_audio(other, 16000)[0], 16000)
    again = decode_phones(wav, rate)
    fresh_process = subprocess.run(
        [sys.executable, "-c", "import sys; from pipeline.extract.audio import load_audio; "
         "from pipeline.extract.phones import decode_phones; "
         "print(repr([(s.phone, s.start, s.end) for s in decode_phones(load_audio(sys.argv[1], 16000)[0], 16000)]))",
         str(WAVS / "1001_DFA_ANG_XX.wav")], capture_output=True, text=True, check=True).stdout
    assert again == first and repr([(s.phone, s.start, s.end) for s in again]) == fresh_process.strip()
    features = phone_features(wav, len(wav) // 640, rate, 25)
    assert features.shape == (len(wav) // 640, 40) and features.dtype == np.float32
    np.testing.assert_allclose(features.sum(1), 1.0, rtol=1e-6)
    assert features[0, PHONE_INDEX["SIL"]] == 1.0  # the clip starts in silence


def test_rejects_stereo():
    with pytest.raises(ValueError, match="1-D"):
        decode_phones(np.zeros((2, 1600), np.float32), 16000)


def test_dictionary_free_decoder_gives_the_default_configurations_phones():
    # _decoder skips the word dictionary (12x faster set-up); the phones must not change
    from pocketsphinx import Decoder, get_model_path

    model = get_model_path()
    default = Decoder(hmm=os.path.join(model, "en-us", "en-us"), allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                      lw=2.0, beam=1e-20, pbeam=1e-20, loglevel="FATAL")
    assert default.config["dict"]  # the default configuration names CMUdict
    for path in sorted(WAVS.glob("*.wav"))[:3]:
        wav = load_audio(path, 16000)[0]
        default.reinit()  # a fresh state per clip, as decode_phones has
        default.start_utt()
        default.process_raw((np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        default.end_utt()
        expected = [(s.word if s.word in PHONE_INDEX else "SIL", s.start_frame, s.end_frame) for s in default.seg()]
        assert [(s.phone, s.start, s.end) for s in decode_phones(wav, 16000)] == expected

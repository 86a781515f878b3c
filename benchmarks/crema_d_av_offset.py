"""Audio/video start alignment of CREMA-D files: each ``AudioWAV/<clip>.wav`` against the audio
track of ``VideoFlash/<clip>.flv`` (whose video frames share the container clock).

    python benchmarks/crema_d_av_offset.py [--root ../shared/datasets/crema-d-real]

Prints, per clip, the lag of the FLV's track behind the WAV (cross-correlation at 16 kHz, whole
samples) and the normalised correlation at that lag. A lag of ~0 means the WAV the pipeline reads
starts with the video; otherwise preprocessing would have to shift it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.extract.audio import audio_lag, load_audio

SAMPLE_RATE = 16000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/datasets/crema-d-real"))
    args = parser.parse_args(argv)
    print(f"{'clip':20s} {'wav s':>6s} {'flv s':>6s} {'lag ms':>7s} {'ncc':>6s}")
    for flv in sorted((args.root / "VideoFlash").glob("*.flv")):
        wav_path = args.root / "AudioWAV" / f"{flv.stem}.wav"
        if not wav_path.is_file():
            print(f"{flv.stem:20s} no WAV")
            continue
        wav, _ = load_audio(wav_path, SAMPLE_RATE)
        track, _ = load_audio(flv, SAMPLE_RATE)
        lag, ncc = audio_lag(wav, track, SAMPLE_RATE)
        print(f"{flv.stem:20s} {len(wav) / SAMPLE_RATE:6.3f} {len(track) / SAMPLE_RATE:6.3f} {1000 * lag:7.2f} {ncc:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

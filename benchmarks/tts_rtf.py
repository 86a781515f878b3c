"""Real-time factor and intelligibility of each offline TTS engine (``pipeline.tts``).

RTF = synthesis seconds / audio seconds (below 1: faster than real time), warm (after one
utterance), one thread; WER by Whisper tiny.en (``eval_metrics.intelligibility``).

    python benchmarks/tts_rtf.py [--engines hibari espeak-ng]

``--docs`` also writes the printout to ``docs/figures/tts_rtf.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import time

from eval_metrics.intelligibility import WHISPER_LABEL, transcribe, word_error_rate
from pipeline.tts import synthesize
from figures import docs_figure  # benchmarks/figures.py, beside this script

SENTENCES = [
    "Don't forget a jacket.",
    "The weather is lovely today, let's go for a walk.",
    "I would like a cup of coffee with milk, please.",
    "It is eleven o'clock and the meeting has not started yet.",
    "We talked about the results of the experiment for an hour.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["hibari", "espeak-ng"])
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/tts_rtf.md")
    args = parser.parse_args()
    with docs_figure("tts_rtf", args.docs):
        print(f"{len(SENTENCES)} sentences; WER by {WHISPER_LABEL}")
        print(f"{'engine':10s} {'audio s':>8s} {'synth s':>8s} {'RTF':>7s} {'WER':>6s}")
        for engine in args.engines:
            synthesize("Warm up.", engine)
            audio_s = synth_s = 0.0
            hypotheses = []
            for sentence in SENTENCES:
                start = time.perf_counter()
                wav = synthesize(sentence, engine)
                synth_s += time.perf_counter() - start
                audio_s += len(wav) / 16000
                hypotheses.append(transcribe(wav))
            print(f"{engine:10s} {audio_s:8.2f} {synth_s:8.3f} {synth_s / audio_s:7.4f} "
                  f"{word_error_rate(hypotheses, SENTENCES):6.3f}")


if __name__ == "__main__":
    main()

"""Is ``generate`` real time? Time to the first frame and end-to-end frames/s at batch 1 (paper 000's title).

Per method with a checkpoint in ``models/<method>/<dataset>/``, on one photo and one WAV, after a
warm-up job: seconds per step (face detection + alignment, audio features, rendering, paste-back,
H.264/AAC encoding), the time until the first frame exists (everything before the encoder: the
methods render the whole clip in one call, there is no streaming yet) and frames/s end to end,
against the 25 fps a live video needs.

    python benchmarks/generate_realtime.py [--methods cvae sinha] [--image PHOTO] [--audio WAV] [--repeats 3]

``--docs`` also writes the printout to ``docs/figures/generate_realtime.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from pipeline.generate import FPS, GenerateConfig, Job, load_method, run_job
from figures import docs_figure  # benchmarks/figures.py, beside this script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def timed_job(model, job: Job, cfg: GenerateConfig) -> dict[str, float]:
    """``run_job`` with the seconds of each of its steps."""
    laps, clock = {}, [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        laps[step], clock[0] = now - clock[0], now

    run_job(model, job, cfg, log=lambda message: None, lap=lap)
    return laps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["cvae", "sinha", "two_stage"])
    parser.add_argument("--dataset", default="crema_d")
    parser.add_argument("--image", default=str(SHARED / "talking-clips/pcavs/Input/517600055/000000.jpg"))
    parser.add_argument("--audio", default=str(SHARED / "talking-clips/retalking/audio_1.wav"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/generate_realtime.md")
    args = parser.parse_args()
    with docs_figure("generate_realtime", args.docs):
        cfg = GenerateConfig()
        device = "cuda" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
        print(f"device: {device}; photo {Path(args.image).name}, audio {Path(args.audio).name}; median of {args.repeats}")
        print(f"{'method':8s} {'frames':>6s} {'face':>6s} {'audio':>6s} {'render':>7s} {'paste':>6s} {'encode':>7s} "
              f"{'first frame':>11s} {'fps':>6s} {'x real time':>11s}")
        for method in args.methods:
            model = load_method(method, Path("models") / method / args.dataset / "last.ckpt")
            with tempfile.TemporaryDirectory() as tmp:
                job = Job(image=args.image, emotion="happy", out=str(Path(tmp) / "out.mp4"), audio=args.audio)
                timed_job(model, job, cfg)  # warm-up
                runs = [timed_job(model, job, cfg) for _ in range(args.repeats)]
                with av.open(job.out) as container:
                    n = container.streams.video[0].frames
            laps = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            first = laps["face"] + laps["audio"] + laps["render"]
            total = sum(laps.values())
            print(f"{method:8s} {n:6d} {laps['face']:6.2f} {laps['audio']:6.2f} {laps['render']:7.2f} {laps['paste']:6.2f} "
                  f"{laps['encode']:7.2f} {first:10.2f}s {n / total:6.1f} {n / total / FPS:10.2f}x")


if __name__ == "__main__":
    main()

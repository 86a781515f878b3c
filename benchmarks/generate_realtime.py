"""Is ``generate`` real time? Time to the first frame and end-to-end frames/s at batch 1 (paper 000's title).

Per method with a checkpoint in ``models/<method>/<dataset>/``, on one photo and one WAV, after a
warm-up job: seconds per step (face detection + alignment, audio features, rendering, paste-back,
H.264/AAC encoding), the time until the first frame exists (everything before the encoder: the
methods render the whole clip in one call, there is no streaming yet) and frames/s end to end,
against the 25 fps a live video needs.

    python benchmarks/generate_realtime.py [--methods cvae sinha] [--image PHOTO] [--audio WAV] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.extract.video import write_mp4
from pipeline.generate import FPS, SAMPLE_RATE, GenerateConfig, Job, load_method, method_inputs, read_audio
from pipeline.photo import paste_back, prepare_face, read_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def timed_job(model, job: Job, cfg: GenerateConfig, out: Path) -> tuple[dict[str, float], int]:
    """One ``run_job`` split into its steps; returns seconds per step and the frame count."""
    laps, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        laps[name], clock = now - clock, now

    face = prepare_face(read_image(job.image), int(model.net_cfg.crop_size), cfg.lmk_size, cfg.face_scale)
    lap("face")
    wav = read_audio(job, cfg)
    args, kwargs = method_inputs(model, face, wav, job, cfg.replace_background)
    lap("audio")
    with torch.no_grad():
        crops = model.generate(*args, **kwargs)[0].cpu().numpy()
    lap("render")
    frames = paste_back(face, crops)
    lap("paste")
    write_mp4(out, frames, FPS, wav[: len(crops) * SAMPLE_RATE // FPS], SAMPLE_RATE)
    lap("encode")
    return laps, len(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["cvae", "sinha"])
    parser.add_argument("--dataset", default="crema_d")
    parser.add_argument("--image", default=str(SHARED / "talking-clips/pcavs/Input/517600055/000000.jpg"))
    parser.add_argument("--audio", default=str(SHARED / "talking-clips/retalking/audio_1.wav"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = GenerateConfig()
    device = "cuda" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; photo {Path(args.image).name}, audio {Path(args.audio).name}; median of {args.repeats}")
    print(f"{'method':8s} {'frames':>6s} {'face':>6s} {'audio':>6s} {'render':>7s} {'paste':>6s} {'encode':>7s} "
          f"{'first frame':>11s} {'fps':>6s} {'x real time':>11s}")
    for method in args.methods:
        model = load_method(method, Path("models") / method / args.dataset / "last.ckpt")
        job = Job(image=args.image, emotion="happy", out="", audio=args.audio)
        with tempfile.TemporaryDirectory() as tmp:
            timed_job(model, job, cfg, Path(tmp) / "warmup.mp4")
            runs = [timed_job(model, job, cfg, Path(tmp) / f"{i}.mp4") for i in range(args.repeats)]
        n = runs[0][1]
        laps = {k: float(np.median([r[0][k] for r in runs])) for k in runs[0][0]}
        first = laps["face"] + laps["audio"] + laps["render"]
        total = sum(laps.values())
        print(f"{method:8s} {n:6d} {laps['face']:6.2f} {laps['audio']:6.2f} {laps['render']:7.2f} {laps['paste']:6.2f} "
              f"{laps['encode']:7.2f} {first:10.2f}s {n / total:6.1f} {n / total / FPS:10.2f}x")


if __name__ == "__main__":
    main()

"""Preprocessing throughput on the sample data (a benchmark script, not a test).

    python benchmarks/preprocess_throughput.py [--shared ../shared/datasets] [--docs]

Prints, per worker: frames/s and clips/s of the whole per-clip job (decode + landmarks + crops +
audio features + encoding) and of mediapipe landmark detection alone on the same frames, their
ratio, the time per step, the speed-up of 2 Ray workers over 1, and the 1080p MEAD clip on its own.
Targets: whole job <= 1.3x landmarks alone on the CREMA-D-layout sample (issue #11; #2 asked <= 2x);
2 workers >= 1.7x. ``--docs`` also writes the printout to ``docs/figures/preprocess_throughput.md``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from figures import docs_figure
from pipeline.datasets.crema_d import read_crema_d
from pipeline.extract.clip import PreprocessConfig, process_clip
from pipeline.extract.distribute import RayDistributor
from pipeline.extract.landmarks import detect_face_mesh
from pipeline.extract.video import decode_video


def crema_rows(root: Path) -> list[dict]:
    """Manifest rows of the CREMA-D-layout clips with speech (9902_* are silent and fail early)."""
    rows, _ = read_crema_d(root)
    return [asdict(r) for r in rows if not r.id.startswith("9902_")]


def serial_job(rows: list[dict], cfg: PreprocessConfig) -> tuple[float, int, dict]:
    """Whole per-clip job in this process: (seconds, frames, seconds per step)."""
    steps: dict[str, float] = defaultdict(float)
    frames = 0
    start = time.perf_counter()
    for row in rows:
        result = process_clip(row, cfg)
        if result.failure:
            raise RuntimeError(f"benchmark clip failed: {result.failure}")
        frames += result.n_frames
        for step, seconds in result.timings.items():
            steps[step] += seconds
    return time.perf_counter() - start, frames, dict(steps)


def landmarks_alone(rows: list[dict], cfg: PreprocessConfig) -> tuple[float, int]:
    """mediapipe face mesh alone on the same decoded frames: (seconds, frames)."""
    clips = [decode_video(r["video_path"], cfg.fps, cfg.decode_max_side).frames for r in rows]
    start = time.perf_counter()
    for frames in clips:
        detect_face_mesh(frames)
    return time.perf_counter() - start, sum(len(c) for c in clips)


def ray_job(rows: list[dict], cfg: PreprocessConfig, workers: int) -> float:
    """Wall seconds for the whole job on ``workers`` Ray workers (Ray start-up excluded)."""
    distributor = RayDistributor(None, workers, 0)
    try:
        list(distributor.imap_unordered(process_clip, rows[:workers], cfg))  # warm the workers up
        start = time.perf_counter()
        for _, result in distributor.imap_unordered(process_clip, rows, cfg):
            assert getattr(result, "failure", None) is None, result
        return time.perf_counter() - start
    finally:
        distributor.close()


def report(name: str, seconds: float, frames: int, clips: int) -> None:
    print(f"  {name:<28} {frames / seconds:8.1f} frames/s  {clips / seconds:6.2f} clips/s  ({seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--no-ray", action="store_true", help="skip the 1-vs-2 worker measurement")
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/preprocess_throughput.md")
    args = parser.parse_args()
    with docs_figure("preprocess_throughput" + ("_no_ray" if args.no_ray else ""), args.docs):
        measure(args)


def measure(args) -> None:
    cfg = PreprocessConfig()
    rows = crema_rows(args.shared / "crema-d-layout")
    process_clip(rows[0], cfg)  # warm-up: imports, mediapipe graph

    print(f"CREMA-D layout sample: {len(rows)} clips (480x360 FLV, 30 -> 25 fps), one worker")
    job_s, crema_frames, steps = serial_job(rows, cfg)
    lmk_s, lmk_frames = landmarks_alone(rows, cfg)
    report("whole per-clip job", job_s, crema_frames, len(rows))
    report("landmarks alone", lmk_s, lmk_frames, len(rows))
    print(f"  ratio whole / landmarks: {job_s / lmk_s:.2f}x   (target <= 1.3x)")
    print("  time per step: " + ", ".join(f"{k} {v / job_s:.0%}" for k, v in steps.items()))

    mead = args.shared / "mead-layout" / "M030"
    row = {"id": "M030_sad_3_001", "dataset": "mead", "video_path": str(mead / "video/front/sad/level_3/001.mp4"),
           "audio_path": str(mead / "audio/sad/level_3/001.m4a"), "speaker": "M030", "sex": "male",
           "emotion": "sad", "intensity": 3, "sentence": "001", "split": "train"}
    print(f"MEAD 1080p clip (decoded at <= {cfg.decode_max_side} px long side)")
    job_s, frames, steps = serial_job([row], cfg)
    lmk_s, lmk_frames = landmarks_alone([row], cfg)
    report("whole per-clip job", job_s, frames, 1)
    report("landmarks alone", lmk_s, lmk_frames, 1)
    print(f"  ratio whole / landmarks: {job_s / lmk_s:.2f}x")
    print("  time per step: " + ", ".join(f"{k} {v:.2f} s ({v / job_s:.0%})" for k, v in steps.items()))

    if not args.no_ray:
        print("Ray, CREMA-D layout sample x2 (whole job)")
        work = rows * 2
        one = ray_job(work, cfg, 1)
        two = ray_job(work, cfg, 2)
        report("1 worker", one, 2 * crema_frames, len(work))
        report("2 workers", two, 2 * crema_frames, len(work))
        print(f"  speed-up 2 vs 1 workers: {one / two:.2f}x   (target >= 1.7x)")


if __name__ == "__main__":
    main()

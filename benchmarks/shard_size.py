"""Shard size of the face crops: JPEG frames vs raw arrays (a benchmark script, not a test).

    python benchmarks/shard_size.py [--shared ../shared/datasets] [--quality 90]

Runs the per-clip job on real clips (original CREMA-D VP6F files, a CREMA-D-layout re-encode, the
1080p MEAD clip) with raw ``.npy`` crops, then encodes every crop size as ``preprocess`` does
(``frames_format: jpeg``) and prints, per clip and crop size: KB per frame (JPEG vs raw), PSNR of
the decoded frames against the raw crops, and encode / decode milliseconds per frame.
Targets: <= 25 KB per 256 px frame, >= 38 dB.

``--docs`` also writes the printout to ``docs/figures/shard_size.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import time
from pathlib import Path

import numpy as np

from pipeline.extract.clip import PreprocessConfig, process_clip
from primitives.frame_codec import decode_jpeg_frames, encode_jpeg_frames
from figures import docs_figure  # benchmarks/figures.py, beside this script

CLIPS = ("crema-d-real/VideoFlash/1001_DFA_ANG_XX.flv", "crema-d-real/VideoFlash/1001_DFA_HAP_XX.flv",
         "crema-d-layout/VideoFlash/9901_IEO_SAD_HI.flv", "talking-clips/eamm/crop_M030_sad_3_001.mp4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--quality", type=int, default=PreprocessConfig.jpeg_quality)
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/shard_size.md")
    args = parser.parse_args(argv)
    with docs_figure("shard_size", args.docs):
        cfg = dataclasses.replace(PreprocessConfig(), frames_format="npy")
        print(f"JPEG quality {args.quality}, 4:4:4; crops {cfg.crop_sizes}")
        print(f"{'clip':34s} {'S':>4s} {'KB/frame':>9s} {'raw KB':>7s} {'PSNR dB':>8s} {'enc ms':>7s} {'dec ms':>7s}")
        for rel in CLIPS:
            path = args.shared / rel
            row = {"id": path.stem, "dataset": "bench", "video_path": str(path), "audio_path": "", "speaker": "x",
                   "sex": "", "emotion": "neutral", "intensity": 0, "sentence": "", "split": "train"}
            result = process_clip(row, cfg)
            if result.failure:
                print(f"{path.name:34s} failed: {result.failure}")
                continue
            for size in cfg.crop_sizes:
                raw = np.load(io.BytesIO(result.sample[f"frames_{size}.npy"]))
                start = time.perf_counter()
                blob = encode_jpeg_frames(raw, args.quality)
                encode_s = time.perf_counter() - start
                start = time.perf_counter()
                decoded = decode_jpeg_frames(blob)
                decode_s = time.perf_counter() - start
                mse = float(np.mean((decoded.astype(np.float64) - raw) ** 2))
                n = len(raw)
                print(f"{path.name:34s} {size:4d} {len(blob) / n / 1024:9.1f} {raw.nbytes / n / 1024:7.1f} "
                      f"{10 * np.log10(255 ** 2 / mse):8.2f} {1000 * encode_s / n:7.2f} {1000 * decode_s / n:7.2f}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

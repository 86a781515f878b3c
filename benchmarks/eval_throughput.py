"""Evaluation throughput of each metric on CPU (a benchmark script, not a test).

    python benchmarks/eval_throughput.py [--frames 64] [--size 128]

Scores real aligned crops (decoded from a sample clip, resized to --size) against a noisy copy
and prints frames/s per metric. LSE (own expert and the public syncnet_v2 port), EmoAcc (own
classifier) and ArcFace CSIM use freshly initialised networks of the params.yaml / published sizes (throughput
does not depend on the weights).

``--docs`` also writes the printout to ``docs/figures/eval_throughput.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from eval_metrics.arcface import ArcFaceEmbedder, IResNet
from eval_metrics.emotion import EmotionAccuracy
from eval_metrics.cpbd import CPBD
from eval_metrics.image import FramePSNR, FrameSSIM, fid_metric
from eval_metrics.landmarks import LandmarkMetrics
from eval_metrics.identity import CSIM
from eval_metrics.sync import LSEC, LSED, SyncEvaluator
from eval_metrics.syncnet_v2 import SyncNetV2
from lightning_modules.networks.emotion import EmotionClassifier, EmotionClassifierConfig
from lightning_modules.networks.syncnet import SyncNet, SyncNetConfig
from pipeline.extract.video import decode_video
from figures import docs_figure  # benchmarks/figures.py, beside this script


def timed(name: str, n_frames: int, fn) -> None:
    fn()  # warm-up
    gc.collect()  # a full collection of the earlier evaluators' objects must not land in a fast metric's time
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"  {name:<10} {n_frames / seconds:9.1f} frames/s  ({seconds:.2f} s for {n_frames} frames)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/eval_throughput.md")
    args = parser.parse_args()
    with docs_figure("eval_throughput", args.docs):
        methods = yaml.safe_load(open("params.yaml"))["train"]["methods"]
        torch.manual_seed(0)

        clip = decode_video(args.shared / "talking-clips/sadtalker/WDA_KatieHill_000.mp4").frames[: args.frames]
        real = torch.from_numpy(np.stack([cv2.resize(f, (args.size, args.size), interpolation=cv2.INTER_AREA)
                                          for f in clip]))  # (N, S, S, 3) uint8
        noise = torch.randint(-12, 13, real.shape, generator=torch.Generator().manual_seed(0))
        fake = (real.int() + noise).clamp(0, 255).to(torch.uint8)
        n = len(real)
        real_chw, fake_chw = real.permute(0, 3, 1, 2), fake.permute(0, 3, 1, 2)
        mel = torch.rand(n * 16 // 5 + 16, 80) * 8 - 4
        print(f"{n} frames of {args.size}x{args.size}, {torch.get_num_threads()} torch threads")

        timed("PSNR", n, lambda: FramePSNR().update(fake_chw, real_chw))
        timed("SSIM", n, lambda: FrameSSIM().update(fake_chw.float() / 255, real_chw.float() / 255))
        timed("CPBD", n, lambda: CPBD().update(fake_chw))
        try:
            fid = fid_metric()
            timed("FID", 2 * n, lambda: (fid.update(real_chw, real=True), fid.update(fake_chw, real=False)))
        except FileNotFoundError as err:
            print(f"  FID      missing: {err}")
        sync = SyncEvaluator(SyncNet(SyncNetConfig.from_dict({**methods["syncnet"]["net"], "crop_size": args.size})),
                             "untrained SyncNet (timing only)")
        timed("LSE", n, lambda: sync.update([LSED(), LSEC()], fake, mel))
        public = SyncEvaluator(SyncNetV2(), "untrained syncnet_v2 (timing only)", chunk=20, inputs="waveform")
        audio = torch.rand(n * 640) * 0.2 - 0.1  # 16 kHz, n frames at 25 fps
        timed("LSE v2", n, lambda: public.update([LSED(max_offset=min(15, n - 6)), LSEC(max_offset=min(15, n - 6))],
                                                 fake, audio=audio))
        classifier = EmotionClassifier(EmotionClassifierConfig.from_dict(methods["emotion_classifier"]["net"])).eval()
        timed("EmoAcc", n, lambda: EmotionAccuracy(classifier.predict_proba, "untrained").update([fake], torch.tensor([0])))
        try:
            from eval_metrics.emotion_fer import FerEmotionClassifier

            fer = FerEmotionClassifier()
            timed("EmoAcc FER", n, lambda: EmotionAccuracy(fer, fer.evaluator).update([fake], torch.tensor([0])))
        except (FileNotFoundError, ImportError) as err:
            print(f"  EmoAcc FER missing: {err}")
        try:
            from eval_metrics.identity import DlibFaceEmbedder

            csim = CSIM(DlibFaceEmbedder())
            timed("CSIM dlib", n, lambda: csim.update(fake[None], real[:1]))
        except (FileNotFoundError, ImportError) as err:
            print(f"  CSIM     missing: {err}")
        with tempfile.TemporaryDirectory() as tmp:  # the real embedder class, on an untrained r50 file
            torch.save(IResNet.from_arch("r50").state_dict(), Path(tmp) / "backbone.pth")
            arcface = CSIM(ArcFaceEmbedder(Path(tmp) / "backbone.pth", arch="r50"))
        timed("ArcFace", n, lambda: arcface.update(fake[None], real[:1]))
        lmk = torch.rand(1, n, 68, 2) * args.size
        timed("LD/LVD", n, lambda: LandmarkMetrics().update(lmk + torch.randn_like(lmk), lmk))


if __name__ == "__main__":
    main()

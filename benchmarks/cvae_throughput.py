"""CVAE (paper 000) generation speed: frames/s at batch 1 and 32 vs the 25 fps of real time.

    python benchmarks/cvae_throughput.py [--crop-size 128] [--params-size] [--device cuda]

The paper's title promises real time. Uses the default (paper-sized, 9.3M-param) network unless
--params-size takes params.yaml's CPU-sized one; weights are random (speed does not depend on them).

``--docs`` also writes the printout to ``docs/figures/cvae_throughput.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from lightning_modules.cvae import CVAEModule
from figures import docs_figure  # benchmarks/figures.py, beside this script


@torch.no_grad()
def frames_per_second(model: CVAEModule, batch: int, n_frames: int, size: int, device: str) -> float:
    reference = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8, device=device)
    mel = torch.rand(batch, n_frames * 16 // 5 + 16, 80, device=device) * 8 - 4
    emotion = torch.zeros(batch, dtype=torch.int64, device=device)
    model.generate(reference, mel, emotion, 5)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(reference, mel, emotion, n_frames)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * n_frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--params-size", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/cvae_throughput.md")
    args = parser.parse_args()
    with docs_figure("cvae_throughput", args.docs):
        net = yaml.safe_load(open("params.yaml"))["train"]["methods"]["cvae"]["net"] if args.params_size else {}
        model = CVAEModule(net={**net, "crop_size": args.crop_size}, optim={"augment": False}).to(args.device).eval()
        n_params = sum(p.numel() for p in model.net.parameters())
        print(f"CVAE {args.crop_size}x{args.crop_size}, {n_params / 1e6:.1f} M params, {args.device}, "
              f"{torch.get_num_threads()} threads")
        for batch in (1, 32):
            fps = frames_per_second(model, batch, args.frames, args.crop_size, args.device)
            print(f"  batch {batch:>2}: {fps:8.1f} frames/s  ({fps / 25:.2f}x real time at 25 fps)")


if __name__ == "__main__":
    main()

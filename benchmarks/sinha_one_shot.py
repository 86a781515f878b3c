"""Time of Sinha et al.'s one-shot fine-tuning (paper 002 §4.1: up to 5 iterations, "around 3-4
seconds" on a P5000) and of rendering, at paper width (256 px, E_T 64/128/256, motion 512/1024/1024)
and at the sample's CPU width, on this machine's CPU (and CUDA when present).

    python benchmarks/sinha_one_shot.py [--steps 5] [--frames 25]

Untrained weights: the timing does not depend on them. Prints seconds per one-shot run and
rendered frames/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_modules.sinha import CANONICAL_NEUTRAL, SinhaModule

SAMPLE = {"landmark": {"audio_hidden": 64, "dim": 32},
          "texture": {"crop_size": 128, "encoder_widths": [16, 32, 64], "motion_widths": [64, 128, 128],
                      "emotion_dim": 32, "lmk_size": 256}}


def measure(net: dict, steps: int, frames: int, device: str) -> tuple[float, float, int]:
    model = SinhaModule(net=net, optim={"one_shot_steps": steps}).to(device).eval()
    s = model.texture_cfg.crop_size
    lmk = torch.tensor(CANONICAL_NEUTRAL, dtype=torch.float32)[None] * 60 + 128
    image = torch.rand(1, 3, s, s, device=device)
    model.one_shot(image, lmk.to(device))  # warm-up
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    model.one_shot(image, lmk.to(device))
    sync()
    one_shot_s = time.perf_counter() - start
    reference = (torch.rand(1, s, s, 3) * 255).byte()
    mel = torch.randn(1, int(3.2 * frames) + 1, 80).clamp(-4, 4)
    start = time.perf_counter()
    model.generate(reference, mel, torch.tensor([5]), frames, ref_lmk=lmk)
    sync()
    generate_s = time.perf_counter() - start
    return one_shot_s, frames / generate_s, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name, net in (("paper width, 256 px", {"texture": {"lmk_size": 256}}), ("sample width, 128 px", SAMPLE)):
            one_shot_s, fps, n_params = measure(net, args.steps, args.frames, device)
            print(f"{device} {name} ({n_params / 1e6:.1f}M params): one-shot {args.steps} steps {one_shot_s:.2f} s; "
                  f"generate (one-shot included) {fps:.1f} frames/s over {args.frames} frames")


if __name__ == "__main__":
    main()

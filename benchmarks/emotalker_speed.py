"""Seconds per generated frame of ``emotalker`` for DDIM step counts (paper 004 samples with DDIM).

    python benchmarks/emotalker_speed.py                       # params.yaml's CPU-sized UNet, untrained
    python benchmarks/emotalker_speed.py --checkpoint models/emotalker/crema_d/last.ckpt --frames 50
    python benchmarks/emotalker_speed.py --device cuda --preset emotalker   # presets/emotalker.yaml: DiffTalk's UNet
    python benchmarks/emotalker_speed.py --frames 10 --clips 4   # 4 short clips per generate call

All frames of a clip (of ``--clips`` clips) go through each denoising step together
(``sampling.chunk`` frames per clip), as in ``evaluate_video``.
``--preset emotalker`` builds the preset's networks (DiffTalk's UNet: model_channels 256 x (1, 2,
3, 4), 2 res blocks, 32-d heads, context 128, at 256 px with an f4 autoencoder: 530 M parameters
with the condition encoders) to show what the faithful model costs; weights are random (speed
only). Prints one line per step count: steps, frames, seconds, seconds per frame, and the UNet's
parameter count.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_modules.emotalker import EmoTalkerModule

def build(args) -> EmoTalkerModule:
    if args.checkpoint:
        return EmoTalkerModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    import yaml

    from pipeline.preset import Preset, apply, build_method, overrides_for

    params = yaml.safe_load(open(args.params))
    if args.preset:
        params = apply(params, overrides_for(Preset.load(args.preset)))
    # untrained, from configs alone (no file is read); speed does not depend on weights
    return build_method(params, "emotalker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 200])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="a presets/ name on top of --params, e.g. emotalker")
    parser.add_argument("--clips", type=int, default=1,
                        help="clips per generate call (evaluate.clips_per_forward), each --frames long")
    args = parser.parse_args(argv)
    model = build(args).to(args.device).eval()
    s = model.net_cfg.crop_size
    b = args.clips
    reference = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8)
    lmk = torch.rand(b, 68, 2) * 256
    phones = torch.rand(b, args.frames, model.net_cfg.speech_dim)
    n_params = sum(p.numel() for p in model.unet.parameters())
    print(f"device {args.device}, crop {s}, latent {model.latent_size}, UNet {n_params / 1e6:.1f} M parameters, "
          f"{b} clip(s) of {args.frames} frames per generate call")
    for steps in args.steps:
        model.configure_sampling({"ddim_steps": steps})
        start = time.perf_counter()
        model.generate(reference, torch.zeros(b, 4 * args.frames, 80), torch.tensor([5] * b), args.frames,
                       ref_lmk=lmk, phones=phones)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        n = b * args.frames
        print(f"DDIM {steps:4d} steps: {seconds:7.2f} s for {n} frames = {seconds / n:.3f} s/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

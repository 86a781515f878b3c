"""Seconds per generated frame of ``emotalker`` for DDIM step counts (paper 004 samples with DDIM).

    python benchmarks/emotalker_speed.py                       # params.yaml's CPU-sized UNet, untrained
    python benchmarks/emotalker_speed.py --checkpoint models/emotalker/crema_d/last.ckpt --frames 50
    python benchmarks/emotalker_speed.py --device cuda --paper-size
    python benchmarks/emotalker_speed.py --frames 10 --clips 4   # 4 short clips per generate call

All frames of a clip (of ``--clips`` clips) go through each denoising step together
(``sampling.chunk`` frames per clip), as in ``evaluate_video``.
``--paper-size`` builds a DiffTalk-size UNet (LDM f4 widths 192 x (1, 2, 3, 5),
2 layers per block, 32-d heads: several hundred million parameters; printed) to show what the
faithful model costs; weights are random (speed only). Prints one line per step count:
steps, frames, seconds, seconds per frame, and the UNet's parameter count.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_modules.emotalker import EmoTalkerModule

PAPER_UNET = {"block_out_channels": [192, 384, 576, 960], "layers_per_block": 2, "attention_head_dim": 32,
              "norm_num_groups": 32, "cross_attention_dim": 512}
"""A DiffTalk / LDM-f4-size denoiser (``ldm/models/diffusion/ddpm_talking`` configs: model_channels
192, channel_mult 1, 2, 3, 5)."""


def build(args) -> EmoTalkerModule:
    if args.checkpoint:
        return EmoTalkerModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    import yaml

    section = yaml.safe_load(open(args.params))["train"]["methods"]
    net = dict(section["emotalker"]["net"])
    if args.paper_size:
        net.update(PAPER_UNET)
    # untrained, from configs alone (autoencoder_net given: no file is read); speed does not depend on weights
    return EmoTalkerModule(net=net, optim={"autoencoder_path": "unused", "autoencoder_scaling": 1.0},
                           autoencoder_net=section["autoencoder"]["net"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 200])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper-size", action="store_true")
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

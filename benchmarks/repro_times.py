"""Seconds per DVC stage of the sample run (the README's main job; budget: 20 min on 2 CPU cores).

    python benchmarks/repro_times.py [--docs]            # runs `dvc repro` here, timing each stage
    python benchmarks/repro_times.py --log repro.log     # a log whose lines start with HH:MM:SS

Run from a fresh clone (or after ``dvc repro --force``) for the whole run: an up-to-date pipeline
runs nothing. Prints one Markdown row per stage, slowest first, and the total; ``--docs`` also
writes ``docs/figures/repro_times.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

from figures import docs_figure  # benchmarks/figures.py, beside this script

STAGE = re.compile(r"^(\d\d:\d\d:\d\d) Running stage '([^']+)'")


def timestamped_run(log: Path) -> int:
    """``dvc repro`` with each output line prefixed by the time it arrived (also written to ``log``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # dvc's lines as they come (a pipe is block-buffered)
    with subprocess.Popen(["dvc", "repro"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc, \
            log.open("w") as out:
        for line in proc.stdout:
            out.write(f"{dt.datetime.now():%H:%M:%S} {line}")
        out.write(f"{dt.datetime.now():%H:%M:%S} done\n")  # the end of the last stage
    return proc.returncode


def stage_seconds(lines: list[str]) -> list[tuple[str, float]]:
    """(stage, seconds) from a timestamped log: each stage lasts until the next one starts (the last
    until the log's last line)."""
    marks = [(m.group(2), m.group(1)) for m in map(STAGE.match, lines) if m]
    end = lines[-1][:8]
    times = [dt.datetime.strptime(t, "%H:%M:%S") for _, t in marks] + [dt.datetime.strptime(end, "%H:%M:%S")]
    return [(name, ((b - a) % dt.timedelta(days=1)).total_seconds())
            for (name, _), a, b in zip(marks, times, times[1:])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, help="read this timestamped log instead of running dvc repro")
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/repro_times.md")
    args = parser.parse_args()
    log, rc = args.log, 0
    if log is None:
        log = Path("repro_times.log")
        rc = timestamped_run(log)
    stages = stage_seconds(log.read_text().splitlines())
    if not stages:
        print(f"no 'Running stage' lines in {log}: the pipeline was up to date", file=sys.stderr)
        return 1
    with docs_figure("repro_times", args.docs, markdown=True):
        total = sum(s for _, s in stages)
        print(f"`dvc repro`: {len(stages)} stages, {total / 60:.1f} min{'' if rc == 0 else f' (exit status {rc})'}\n")
        print("| stage | s | share |\n|---|---:|---:|")
        for name, seconds in sorted(stages, key=lambda s: -s[1]):
            print(f"| `{name}` | {seconds:.0f} | {seconds / total:.0%} |")
    return rc


if __name__ == "__main__":
    sys.exit(main())

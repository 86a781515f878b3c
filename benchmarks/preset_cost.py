"""FLOPs per step and H100 GPU-hours of every paper preset at its own size (``python -m
pipeline.preset cost``), as a docs figure.

    python benchmarks/preset_cost.py [--params params.yaml] [--docs]

Slow on a CPU: it builds every preset's networks at their own size (12 min alone on 2 cores,
2026-12-07).

``--docs`` also writes the table to ``docs/figures/preset_cost.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.params import load_params
from pipeline.preset import Preset, cost_rows, cost_table, names
from figures import docs_figure  # benchmarks/figures.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--docs", action="store_true", help="also write docs/figures/preset_cost.md")
    args = parser.parse_args()
    params = load_params(args.params)
    rows = [row for name in names() for row in cost_rows(Preset.load(name), params)]
    with docs_figure("preset_cost", args.docs, markdown=True):
        print(cost_table(rows))


if __name__ == "__main__":
    main()

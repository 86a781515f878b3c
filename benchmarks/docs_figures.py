"""Write the figures the docs include from the files the benchmark scripts leave, never retyped.

    python benchmarks/docs_figures.py [--results benchmarks/results] [--out docs/figures]

Copies every ``<results>/learning-*/learning_check.json`` (``benchmarks/learning_check.py``; results
are not in git) to ``<out>/learning_checks/<run>.json``, where the records stay in git (a run
replaces its own record, the other runs' stay), and writes ``<out>/learning_checks.md`` from all of
them: one row per run with its command, date and machine, the training it got, its scores beside
``copy_reference`` and its checks. The docs page includes that file (``--8<--`` snippet), so a re-run
of the script is what changes a figure in the docs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def keep_records(results: Path, records: Path) -> int:
    """Copy each ``results/<run>/learning_check.json`` to ``records/<run>.json``; returns how many."""
    found = sorted(results.glob("learning-*/learning_check.json"))
    records.mkdir(parents=True, exist_ok=True)
    for path in found:
        (records / f"{path.parent.name}.json").write_text(path.read_text())
    return len(found)


def learning_rows(records: Path) -> list[dict]:
    """The learning-check records ``records/<run>.json``, by method then run."""
    rows = [json.loads(p.read_text()) | {"run": p.stem} for p in sorted(records.glob("learning-*.json"))]
    return sorted(rows, key=lambda r: (r["method"], r["run"]))


def learning_table(records: list[dict]) -> str:
    """Markdown: one row per learning check."""
    lines = ["| method | command | steps (min) | PSNR ours / copy | LSE-D ours / copy | emotion rows (whole / upper half; closest pair) "
             "| checks | result | date, machine |", "|---|---|---:|---|---|---|---|---|---|"]
    for r in records:
        ours, copy = r["scores"][r["method"]], r["scores"]["copy_reference"]
        mad = r.get("emotion_row_mad") or {}
        upper = r.get("emotion_row_mad_upper_half") or {}
        rows = (f"{sum(mad.values()) / len(mad):.2f} / {sum(upper.values()) / len(upper):.2f}; {min(mad.values()):.2f}"
                if mad and upper else "—")
        psnr = f"{ours['psnr']:.2f} / {copy['psnr']:.2f}"
        source = r["scores"].get(f"{r['method']} from source")
        if source is not None:  # trained from a speaker-neutral reference: scored from it too
            psnr += f" (from its training source: {source['psnr']:.2f} / {r['scores']['copy_source']['psnr']:.2f})"
        resumed = f", resumed at step {r['resumed_from_step']:,}" if r.get("resumed_from_step") is not None else ""
        checks = ", ".join(f"{k} {'pass' if v else 'fail'}" for k, v in r["checks"].items() if k in r["required"])
        lines.append(f"| {r['method']} | `{r.get('command', 'not recorded')}` | {r['steps']:,} ({r['train_minutes']:.1f}{resumed}) "
                     f"| {psnr} | {ours['lse_d']:.3f} / {copy['lse_d']:.3f} | {rows} "
                     f"| {checks} | {'PASS' if r['passed'] else 'FAIL'} "
                     f"| {r.get('date', 'not recorded')}, {r.get('machine', 'not recorded')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    print(f"{keep_records(args.results, args.out / 'learning_checks')} new records from {args.results}")
    records = learning_rows(args.out / "learning_checks")
    if not records:
        print(f"no learning_check.json under {args.results} or {args.out / 'learning_checks'}", file=sys.stderr)
        return 1
    (args.out / "learning_checks.md").write_text(
        "<!-- written by benchmarks/docs_figures.py from the records in learning_checks/ "
        "(benchmarks/learning_check.py's learning_check.json): do not edit -->\n\n" + learning_table(records))
    print(f"{len(records)} learning checks -> {args.out / 'learning_checks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

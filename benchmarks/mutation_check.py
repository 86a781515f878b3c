"""Plant named bugs one at a time and check that the tests guarding each catch it (not a test).

    python benchmarks/mutation_check.py                    # every mutation in benchmarks/mutations.yaml
    python benchmarks/mutation_check.py --only mse_on_unit_range window_mel_lags_one_frame
    python benchmarks/mutation_check.py --list

The checkout's tracked and untracked-but-not-ignored files are copied into a scratch folder once
(nothing here is modified). First the guarding tests run unmutated and must pass; then, for each
mutation, ``old`` (which must occur exactly once in ``file``) is replaced by ``new``, its ``tests``
run with ``pytest -x`` in the copy, and the file is restored. A mutation whose tests still pass
SURVIVED: the behaviour it breaks is unguarded. Prints one line per mutation and exits 1 when any
survived (or a mutation no longer applies: the code it names changed).

Needs ``SHARED_DATASETS`` like the tests. Minutes per mutation: the guarding tests build their own
fixtures (the protocol tests preprocess six real clips).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MUTATIONS = Path(__file__).with_name("mutations.yaml")


def load_mutations(path: Path = MUTATIONS) -> list[dict]:
    """The mutation list; raises ``ValueError`` for an entry without name / file / old / new / tests."""
    entries = yaml.safe_load(path.read_text())
    for entry in entries:
        missing = {"name", "file", "old", "new", "tests"} - set(entry)
        if missing:
            raise ValueError(f"{path.name}: {entry.get('name', entry)} lacks {sorted(missing)}")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"{path.name}: duplicate names")
    return entries


def copy_checkout(target: Path) -> None:
    """Tracked and untracked, not ignored files of this checkout -> ``target``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[bool, float, str]:
    """(passed, seconds, last output lines) of ``pytest -x tests`` in ``copy``."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        passed, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-600:]
    except subprocess.TimeoutExpired:
        passed, tail = False, f"timed out after {timeout} s"
    return passed, time.perf_counter() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="mutation names")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)
    mutations = load_mutations()
    if args.list:
        for m in mutations:
            print(f"{m['name']:50s} {m['file']}  ({m['guards']})")
        return 0
    if args.only:
        unknown = set(args.only) - {m["name"] for m in mutations}
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        mutations = [m for m in mutations if m["name"] in args.only]
    with tempfile.TemporaryDirectory(prefix="mutation_check-") as scratch:
        copy = Path(scratch)
        copy_checkout(copy)
        guards = sorted({t for m in mutations for t in m["tests"]})
        passed, seconds, tail = run_tests(copy, guards, args.timeout)
        print(f"unmutated: guarding tests {'pass' if passed else 'FAIL'} ({seconds:.0f} s)", flush=True)
        if not passed:
            print(tail)
            return 1
        survivors, stale = [], []
        for m in mutations:
            path = copy / m["file"]
            original = path.read_text()
            if original.count(m["old"]) != 1:
                stale.append(m["name"])
                print(f"STALE     {m['name']}: `old` occurs {original.count(m['old'])} times in {m['file']}", flush=True)
                continue
            path.write_text(original.replace(m["old"], m["new"]))
            try:
                passed, seconds, _ = run_tests(copy, m["tests"], args.timeout)
            finally:
                path.write_text(original)
            if passed:
                survivors.append(m["name"])
            print(f"{'SURVIVED' if passed else 'caught  '}  {m['name']:50s} {seconds:5.0f} s  ({m['guards']})", flush=True)
    print(f"{len(mutations)} mutations: {len(mutations) - len(survivors) - len(stale)} caught, "
          f"{len(survivors)} survived, {len(stale)} stale")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

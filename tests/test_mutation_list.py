"""benchmarks/mutations.yaml stays applicable: every planted bug names code that exists exactly
once, and tests that exist (the mutation check itself is run by hand: benchmarks/mutation_check.py)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from mutation_check import load_mutations  # noqa: E402


def test_every_mutation_applies_once_and_names_existing_tests():
    mutations = load_mutations()
    assert len(mutations) >= 20
    for m in mutations:
        source = (REPO / m["file"]).read_text()
        assert source.count(m["old"]) == 1, f"{m['name']}: `old` occurs {source.count(m['old'])} times in {m['file']}"
        assert m["new"] != m["old"]
        for test in m["tests"]:
            path, _, name = test.partition("::")
            assert (REPO / path).is_file(), f"{m['name']}: no {path}"
            assert not name or f"def {name}(" in (REPO / path).read_text(), f"{m['name']}: no test {name} in {path}"

"""Imports point one way: pipeline/ -> datamodules/, lightning_modules/, eval_metrics/ -> primitives/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "primitives": {"pipeline", "datamodules", "lightning_modules", "eval_metrics"},
    "eval_metrics": {"pipeline", "datamodules", "lightning_modules"},
    "datamodules": {"pipeline", "lightning_modules", "eval_metrics"},
    "lightning_modules": {"pipeline", "datamodules"},
    "lightning_modules/networks": {"pipeline", "datamodules", "eval_metrics", "lightning"},
}


def project_imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_one_way(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no modules under {layer}/"
    bad = {str(f.relative_to(ROOT)): sorted(project_imports(f) & FORBIDDEN[layer]) for f in files}
    assert not {f: names for f, names in bad.items() if names}


def test_import_scanner_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from pipeline.vocab import EMOTIONS\n    import lightning.pytorch as pl\n")
    assert project_imports(module) == {"os", "pipeline", "lightning"}

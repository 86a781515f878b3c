"""The two files every evaluation stage writes into ``eval/<method>/<dataset>/``.

* ``metrics.json`` -- numbers only (the metrics, clip / window counts, skipped and unreadable clip
  counts), so ``dvc metrics show``, ``dvc metrics diff`` and ``dvc exp show`` fit a terminal. It
  is tracked in git (not git-ignored), so ``dvc exp`` experiments keep it.
* ``provenance.json`` -- what produced the numbers: method, dataset, split, the evaluator behind
  each metric, missing metrics with the reason and what to download, the protocol, the checkpoint
  and MLflow run ids. The report and MLflow read it.
"""

from __future__ import annotations

import json
from pathlib import Path

CROSS_DATASET_MARK = ".trained_on_"
"""``eval/<method>/<test dataset>.trained_on_<train dataset>/``: a cross-dataset evaluation's folder."""

NUMERIC_FIELDS = ("metrics", "n_clips", "n_windows", "skipped_clips", "unreadable_clips")


def write_eval_outputs(out_dir: Path, result: dict) -> tuple[Path, Path]:
    """Split ``result`` into ``metrics.json`` (:data:`NUMERIC_FIELDS`) and ``provenance.json`` (the rest).

    Returns:
        The two paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    numeric = {k: result[k] for k in NUMERIC_FIELDS if k in result}
    provenance = {k: v for k, v in result.items() if k not in NUMERIC_FIELDS}
    metrics_path, provenance_path = out_dir / "metrics.json", out_dir / "provenance.json"
    metrics_path.write_text(json.dumps(numeric, indent=1, sort_keys=True))
    provenance_path.write_text(json.dumps(provenance, indent=1, sort_keys=True))
    return metrics_path, provenance_path

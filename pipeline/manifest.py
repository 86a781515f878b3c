"""DVC stage ``manifest``: dataset folder -> one parquet row per clip, with splits and an issue log.

    python -m pipeline.manifest --dataset crema_d [--params params.yaml] --out data/manifest/crema_d.parquet

Reads ``manifest.datasets.<dataset>`` of the params file (all of it is validated before any file is
read; errors name the dotted key) and writes, next to each other:

* ``<out>``: the manifest (columns = :class:`~pipeline.datasets.ClipRow` fields, rows sorted by id);
* ``<out stem>.issues.jsonl``: one JSON object per problem (path, problem, message, kept, clip_id);
  every row the reader dropped has one;
* ``<out stem>.summary.json``: clips and speakers per split, dropped / kept-with-issue counts by problem.

Relative paths in params are relative to the working directory (the repository root under DVC)
and are stored as given, so manifests built in different clones are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.datasets import ClipRow, ManifestIssue
from pipeline.datasets.crema_d import CROWD_FILTERS, read_crema_d
from pipeline.datasets.csv_list import read_csv_list
from pipeline.datasets.mead import read_mead
from pipeline.params import ParamsError, error_line, get, load_params
from pipeline.splits import (SPLITS, assign_listed_splits, assign_sentence_splits, assign_speaker_splits,
                             eapc_authors_crema_d_lists, read_split_lists, validate_fractions)

FORMATS: tuple[str, ...] = ("crema_d", "mead", "csv")
SPLIT_MODES: tuple[str, ...] = ("speaker", "sentence", "lists", "eapc_authors")
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ClipRow))
_KEYS = {
    "common": ("format", "root", "split", "speaker_splits", "test_sentences", "val_sentences", "split_lists"),
    "crema_d": ("demographics", "summary_table", "crowd_filter", "parts"),
    "mead": ("view",),
    "csv": (),
}


class ManifestError(RuntimeError):
    """The manifest cannot be used (e.g. no clip in the train split)."""


@dataclass(frozen=True)
class DatasetConfig:
    """Validated ``manifest.datasets.<name>`` section plus the global split settings.

    Attributes:
        name: the dataset's key under ``manifest.datasets`` (also ``ClipRow.dataset``).
        format: ``crema_d`` | ``mead`` | ``csv``.
        root: dataset folder (``csv``: the CSV list file).
        demographics, summary_table, crowd_filter: CREMA-D metadata and crowd-vote filter.
        parts: CREMA-D trees under ``root`` read as one dataset (``("",)``: root itself).
        view: MEAD camera view.
        split: ``speaker`` (stratified by sex) | ``sentence`` (MEAD protocol) | ``lists`` (the files
            in ``split_lists``) | ``eapc_authors`` (paper 001's authors' CREMA-D rule over
            ``summary_table``, :func:`pipeline.splits.eapc_authors_crema_d_lists`).
        split_lists: with ``split=lists``, split -> file of clip ids (one per line).
        speaker_splits: with ``split=speaker``, speaker -> split for speakers placed by hand (the
            rest are drawn as usual).
        test_sentences, val_sentences: per-group fractions for ``split=sentence``.
        seed: ``manifest.seed``.
        split_fractions: ``manifest.split_fractions`` (validated).
    """

    name: str
    format: str
    root: str
    demographics: str | None = None
    summary_table: str | None = None
    crowd_filter: str = "none"
    parts: tuple[str, ...] = ("",)
    view: str = "front"
    split: str = "speaker"
    split_lists: dict[str, str] = dataclasses.field(default_factory=dict)
    speaker_splits: dict[str, str] = dataclasses.field(default_factory=dict)
    test_sentences: float = 0.1
    val_sentences: float = 0.1
    seed: int = 0
    split_fractions: dict[str, float] = dataclasses.field(default_factory=lambda: {"train": 1.0})


def dataset_config(params: dict, name: str) -> DatasetConfig:
    """Validate ``manifest.*`` for dataset ``name``; reads no dataset file.

    Args:
        params: the loaded params mapping.
        name: key under ``manifest.datasets``.

    Returns:
        The validated config.

    Raises:
        ParamsError: an unknown dataset, format, key or value; the message names the dotted key.
    """
    datasets = get(params, "manifest.datasets", dict)
    key = f"manifest.datasets.{name}"
    if name not in datasets:
        raise ParamsError(f"{key}: no such dataset (configured: {', '.join(map(str, datasets)) or 'none'})")
    section = get(params, key, dict)
    fmt = get(params, f"{key}.format", str, choices=FORMATS)
    allowed = _KEYS["common"] + _KEYS[fmt]
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ParamsError(f"{key}.{unknown[0]}: unknown key for format {fmt} (allowed: {', '.join(allowed)})")
    root = get(params, f"{key}.root", str)
    if not root.strip():
        raise ParamsError(f"{key}.root: must not be empty")
    crowd_filter = get(params, f"{key}.crowd_filter", str, default="none", choices=tuple(CROWD_FILTERS))
    parts = tuple(get(params, f"{key}.parts", list, default=[""]))
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ParamsError(f"{key}.parts: must be a non-empty list of folder names under root, got {parts!r}")
    summary_table = get(params, f"{key}.summary_table", str, default=None)
    if crowd_filter != "none" and summary_table is None:
        raise ParamsError(f"{key}.summary_table: required when crowd_filter is {crowd_filter!r}")
    speaker_splits = {str(k): v for k, v in get(params, f"{key}.speaker_splits", dict, default={}).items()}
    for speaker, split in speaker_splits.items():
        if split not in SPLITS:
            raise ParamsError(f"{key}.speaker_splits.{speaker}: must be one of {', '.join(SPLITS)}, got {split!r}")
    test = get(params, f"{key}.test_sentences", float, default=0.1)
    val = get(params, f"{key}.val_sentences", float, default=test)
    for field, value in (("test_sentences", test), ("val_sentences", val)):
        if not 0 <= value < 1:
            raise ParamsError(f"{key}.{field}: must be in [0, 1), got {value!r}")
    if test + val >= 1:
        raise ParamsError(f"{key}.val_sentences: test_sentences + val_sentences must be < 1 (got {test} + {val})")
    seed = get(params, "manifest.seed", int, default=0)
    if seed < 0:
        raise ParamsError(f"manifest.seed: must be >= 0, got {seed}")
    split = get(params, f"{key}.split", str, default="speaker", choices=SPLIT_MODES)
    split_lists = {str(k): str(v) for k, v in get(params, f"{key}.split_lists", dict, default={}).items()}
    if split == "lists" and not split_lists:
        raise ParamsError(f"{key}.split_lists: required with split: lists (split -> file of clip ids)")
    if split == "eapc_authors" and (fmt != "crema_d" or summary_table is None):
        raise ParamsError(f"{key}.split: eapc_authors is the authors' CREMA-D rule: needs format crema_d and summary_table")
    return DatasetConfig(
        name=name, format=fmt, root=root, demographics=get(params, f"{key}.demographics", str, default=None),
        summary_table=summary_table, crowd_filter=crowd_filter, parts=parts, view=get(params, f"{key}.view", str, default="front"),
        split=split, split_lists=split_lists, speaker_splits=speaker_splits,
        test_sentences=test, val_sentences=val, seed=seed,
        split_fractions=validate_fractions(get(params, "manifest.split_fractions", dict)))


def build_manifest(config: DatasetConfig) -> tuple[list[ClipRow], list[ManifestIssue]]:
    """Read the dataset and assign splits.

    Args:
        config: a validated config (see :func:`dataset_config`).

    Returns:
        ``(rows, issues)``: rows sorted by id with ``split`` set; issues sorted by path.

    Raises:
        FileNotFoundError: the dataset root (or a required metadata file) is missing.
        ValueError: a metadata / CSV list file lacks a required column.
    """
    if config.format == "crema_d":
        rows, issues = read_crema_d(config.root, config.demographics, config.summary_table, config.crowd_filter,
                                    dataset=config.name, parts=config.parts)
    elif config.format == "mead":
        rows, issues = read_mead(config.root, config.view, dataset=config.name)
    else:
        rows, issues = read_csv_list(config.root, dataset=config.name)
    if config.split == "sentence":
        rows = assign_sentence_splits(rows, config.test_sentences, config.val_sentences, config.seed)
    elif config.split in ("lists", "eapc_authors"):
        lists = read_split_lists(config.split_lists) if config.split == "lists" else \
            eapc_authors_crema_d_lists(config.summary_table)
        rows, unlisted = assign_listed_splits(rows, lists)
        issues = sorted(issues + [ManifestIssue(r.video_path, "not_in_split_lists",
                                                f"{r.video_path}: clip {r.id} is in no list of split {config.split}; dropped",
                                                False, r.id) for r in unlisted], key=lambda i: i.path)
    else:
        rows = assign_speaker_splits(rows, config.split_fractions, config.seed, config.speaker_splits)
    return rows, issues


def summarize(rows: list[ClipRow], issues: list[ManifestIssue], config: DatasetConfig) -> dict:
    """Counts for ``<out stem>.summary.json``.

    Returns:
        ``{dataset, format, split_mode, clips, speakers, issues, clips_per_split, speakers_per_split,
        clips_per_emotion, clips_unknown_sex, clips_without_audio_file, rows_dropped_by_problem,
        rows_kept_with_issues_by_problem}``; per-split counts list every split in SPLITS.
        "Dropped" counts the ``kept=False`` issues (one per dropped file); "kept with issues" counts
        distinct manifest rows per problem (file-level issues, without a clip id, count as 1).
    """
    kept_ids: dict[str, set[str]] = {}
    for issue in issues:
        if issue.kept:
            kept_ids.setdefault(issue.problem, set()).add(issue.clip_id or issue.path)
    return {
        "dataset": config.name, "format": config.format, "split_mode": config.split,
        "clips": len(rows), "speakers": len({r.speaker for r in rows}), "issues": len(issues),
        "clips_per_split": {s: sum(r.split == s for r in rows) for s in SPLITS},
        "speakers_per_split": {s: len({r.speaker for r in rows if r.split == s}) for s in SPLITS},
        "clips_per_emotion": dict(sorted(Counter(r.emotion for r in rows).items())),
        "clips_unknown_sex": sum(not r.sex for r in rows),
        "clips_without_audio_file": sum(not r.audio_path for r in rows),
        "rows_dropped_by_problem": dict(sorted(Counter(i.problem for i in issues if not i.kept).items())),
        "rows_kept_with_issues_by_problem": {p: len(ids) for p, ids in sorted(kept_ids.items())},
    }


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder, then rename (no half-written outputs)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def output_paths(out: Path) -> tuple[Path, Path]:
    """``(<out stem>.issues.jsonl, <out stem>.summary.json)`` next to ``out``."""
    return out.with_name(f"{out.stem}.issues.jsonl"), out.with_name(f"{out.stem}.summary.json")


def write_outputs(out: Path, rows: list[ClipRow] | None, issues: list[ManifestIssue], summary: dict) -> None:
    """Write the issues JSONL and summary JSON, and the parquet unless ``rows`` is None.

    Args:
        out: the parquet path; its folder is created if needed.
        rows: manifest rows (written in id order), or None to write only the logs.
        issues: problems found.
        summary: see :func:`summarize`.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    issues_path, summary_path = output_paths(out)
    lines = "".join(json.dumps(dataclasses.asdict(i), sort_keys=True) + "\n" for i in issues)
    _write_atomic(issues_path, lambda p: p.write_text(lines))
    _write_atomic(summary_path, lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
    if rows is not None:
        frame = pd.DataFrame([dataclasses.asdict(r) for r in sorted(rows, key=lambda r: r.id)], columns=list(COLUMNS))
        frame = frame.astype({c: "int64" if c == "intensity" else "object" for c in COLUMNS})
        _write_atomic(out, lambda p: frame.to_parquet(p, index=False, engine="pyarrow"))


def read_manifest(path: str | Path) -> list[ClipRow]:
    """Load a manifest parquet written by this stage back into rows.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a column is missing or a row is invalid.
    """
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing manifest column(s) {missing}")
    return [ClipRow(**{**rec, "intensity": int(rec["intensity"])}) for rec in frame[list(COLUMNS)].to_dict("records")]


def _report(summary: dict, out: Path) -> str:
    """One line for stderr: clips/speakers per split, issues, dropped and kept-with-issue counts."""
    def counts(by_problem: dict[str, int]) -> str:
        return ", ".join(f"{p} {n}" for p, n in by_problem.items()) or "none"

    per_split = ", ".join(f"{s} {summary['clips_per_split'][s]} clips/{summary['speakers_per_split'][s]} speakers"
                          for s in SPLITS)
    return (f"manifest {summary['dataset']}: {summary['clips']} clips, {summary['speakers']} speakers ({per_split}); "
            f"{summary['issues']} issues (dropped: {counts(summary['rows_dropped_by_problem'])}; kept with issues: "
            f"{counts(summary['rows_kept_with_issues_by_problem'])}) -> {out}, see {output_paths(out)[0]}")


def main(argv: list[str] | None = None) -> int:
    """Run the stage (see the module docstring).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success.

    Raises:
        SystemExit: with a one-line message on a params error, a missing dataset folder or file,
            a malformed metadata file, or a manifest without train clips.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="key under manifest.datasets in the params file")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--out", type=Path, help="parquet path (default data/manifest/<dataset>.parquet)")
    args = parser.parse_args(argv)
    out = args.out or Path("data/manifest") / f"{args.dataset}.parquet"
    try:
        config = dataset_config(load_params(args.params), args.dataset)
    except ParamsError as err:
        raise SystemExit(error_line("manifest", args.params, err)) from None
    try:
        rows, issues = build_manifest(config)
        summary = summarize(rows, issues, config)
        train = summary["clips_per_split"]["train"]
        write_outputs(out, rows if train else None, issues, summary)
        print(_report(summary, out), file=sys.stderr)
        for split in SPLITS:
            if train and config.split == "speaker" and config.split_fractions.get(split, 0) > 0 \
                    and not summary["clips_per_split"][split]:
                print(f"manifest {config.name}: warning: split {split!r} is empty (too few speakers)", file=sys.stderr)
        if not train:
            out.unlink(missing_ok=True)
            raise ManifestError(f"no clips in the train split of {config.name} ({len(rows)} clips kept, "
                                f"{summary['rows_dropped_by_problem'] or 'none'} dropped); see {output_paths(out)[0]}")
    except (ValueError, FileNotFoundError, ManifestError) as err:
        raise SystemExit(f"manifest: error: {err}") from err
    return 0


if __name__ == "__main__":
    sys.exit(main())

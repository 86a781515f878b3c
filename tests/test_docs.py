"""The documentation site: ``mkdocs build --strict`` (no broken link, anchor, snippet or docstring
reference) and its pages reached from the nav in a real browser (headless Chromium), with
screenshots of the home page and a method page in ``test-artifacts/``."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _nav_pages(nav) -> list[str]:
    """Every Markdown file of mkdocs.yml's nav, in order."""
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_strict_build_renders_every_nav_page_and_the_api_from_docstrings(site):
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    pages = _nav_pages(config["nav"])
    assert len(pages) >= 15 and "methods/emotalker.md" in pages
    for page in pages:
        html = site / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert html.is_file(), page
    api = (site / "api/protocol/index.html").read_text()
    assert "EmotionControl" in api and "emo_acc_all" in api  # from pipeline/protocol/emotion_control.py
    figures = (site / "benchmarks/index.html").read_text()
    assert "docs_figures.py" in figures  # the learning-check table is included from docs/figures/


def test_site_navigates_in_a_real_browser(site):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "the browser test needs the system Chromium: apt-get install chromium (.ci/install.sh does)"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base)
            assert "Emotional talking-face benchmark" in page.title()
            page.screenshot(path=str(ARTIFACTS / "docs_home.png"))
            links = page.eval_on_selector_all("nav.md-nav--primary a.md-nav__link[href]",
                                              "els => els.map(e => e.href)")
            pages = sorted({link.split("#")[0] for link in links if link.startswith(base)})
            assert len(pages) >= 15
            for url in pages:  # every page of the nav loads with its own heading
                response = page.goto(url)
                assert response is not None and response.ok, url
                assert page.locator("article h1").count() >= 1, url
            page.goto(base + "methods/sinha/")
            page.get_by_text("Readings", exact=False).first.wait_for()
            assert page.locator("article table").count() >= 1  # the readings table
            page.screenshot(path=str(ARTIFACTS / "docs_method_sinha.png"), full_page=False)
            browser.close()
    finally:
        server.shutdown()
    assert (ARTIFACTS / "docs_home.png").stat().st_size > 10_000


def _learning_record(method: str, psnr: float, date: str) -> dict:
    scores = {method: {"psnr": psnr, "lse_d": 0.8}, "copy_reference": {"psnr": 21.0, "lse_d": 0.833}}
    return {"method": method, "command": f"python benchmarks/learning_check.py --method {method}", "steps": 1234,
            "train_minutes": 14.04, "scores": scores, "checks": {"psnr": psnr > 21.0, "lse": False},
            "required": ["psnr"], "passed": psnr > 21.0, "date": date, "machine": "2 CPU cores"}


def test_learning_check_table_shows_the_training_source_score_and_the_closest_emotion_rows():
    """A model trained from a speaker-neutral reference: its row gives the PSNR from that source beside
    copying it (what its psnr check compares), and the closest pair of emotion rows (the check's value)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import docs_figures

    record = _learning_record("cvae", 20.5, "2026-12-07")
    record["scores"] |= {"cvae from source": {"psnr": 19.25, "lse_d": 0.8}, "copy_source": {"psnr": 18.5, "lse_d": 0.8}}
    record |= {"emotion_row_mad": {"angry-sad": 0.75, "angry-happy": 2.25}, "emotion_row_mad_upper_half": {"angry-sad": 1.0,
                                                                                                             "angry-happy": 2.0}}
    row = docs_figures.learning_table([record]).splitlines()[2]
    assert "| 20.50 / 21.00 (from its training source: 19.25 / 18.50) |" in row
    assert "| 1.50 / 1.50; 0.75 |" in row


def test_learning_check_figures_keep_every_run_in_git_and_a_rerun_replaces_its_own(tmp_path):
    """docs_figures copies the runs' learning_check.json (benchmarks/results/, not in git) into
    docs/figures/learning_checks/: a run not repeated keeps its row, a repeated one is replaced."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import docs_figures

    results, out = tmp_path / "results", tmp_path / "figures"
    for run, record in (("learning-cvae-crema_d", _learning_record("cvae", 20.9, "2026-12-06")),
                        ("learning-sinha-crema_d", _learning_record("sinha", 21.5, "2026-12-06"))):
        (results / run).mkdir(parents=True)
        (results / run / "learning_check.json").write_text(json.dumps(record))
    assert docs_figures.main(["--results", str(results), "--out", str(out)]) == 0
    shutil.rmtree(results)  # a later session: only cvae re-run
    (results / "learning-cvae-crema_d").mkdir(parents=True)
    rerun = _learning_record("cvae", 21.4, "2026-12-07") | {"resumed_from_step": 1684}  # went on from the first run
    (results / "learning-cvae-crema_d/learning_check.json").write_text(json.dumps(rerun))
    assert docs_figures.main(["--results", str(results), "--out", str(out)]) == 0
    rows = [line for line in (out / "learning_checks.md").read_text().splitlines() if line.startswith("| cvae")
            or line.startswith("| sinha")]
    assert len(rows) == 2
    assert "| 21.40 / 21.00 |" in rows[0] and "| PASS |" in rows[0] and "2026-12-07" in rows[0]
    assert "1,234 (14.0, resumed at step 1,684)" in rows[0]
    assert "| 21.50 / 21.00 |" in rows[1] and "1,234 (14.0)" in rows[1] and "psnr pass" in rows[1]
    assert sorted(p.name for p in (out / "learning_checks").iterdir()) == ["learning-cvae-crema_d.json",
                                                                          "learning-sinha-crema_d.json"]


def test_reproducing_page_states_each_presets_trainable_parameters_as_the_preset_does():
    """Each method's trainable count written in a preset (which tests/test_presets.py checks against the
    built networks) is an "<x> M" of that preset's row in reproducing.md's table, to its printed
    digits: a resized network cannot leave the page behind."""
    import re
    from decimal import Decimal

    from pipeline.preset import Preset, names

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \|[^|]*\|([^|]*)\|", (REPO / "docs/reproducing.md")
                                                        .read_text(), re.M)}
    assert set(rows) == set(names())
    for name in names():
        figures = [Decimal(x) for x in re.findall(r"(\d+(?:\.\d+)?) M\b", rows[name])]
        for count in Preset.load(name).trained.values():
            match = [f for f in figures if abs(Decimal(count) / 10**6 - f) <= Decimal("0.5") * Decimal(10) ** f.as_tuple().exponent]
            assert match, f"{name}: no figure in {rows[name]!r} is {count:,d} parameters"

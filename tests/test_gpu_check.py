"""``benchmarks/gpu_check.py`` on the CPU (a smoke test of the script; its figures come from a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_trains_renders_and_writes_its_table_on_cpu(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--accelerator", "cpu", "--devices", "1",
           "--steps", "2", "--warmup", "1", "--methods", "syncnet,cvae", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads((tmp_path / "out/gpu_check.json").read_text())["rows"]}
    assert set(rows) == {"syncnet", "cvae"} and not any("error" in r for r in rows.values())
    assert rows["syncnet"]["batches_per_s"] > 0 and "render_fps" not in rows["syncnet"]  # not a video method
    assert rows["cvae"]["render_fps"] > 0 and rows["cvae"]["world"] == 1
    assert "| cvae | 1 |" in (tmp_path / "out/gpu_check.md").read_text()

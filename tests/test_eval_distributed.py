"""The video protocol as two processes (torchrun, gloo) reading the cached real-frame statistics
(``pipeline.real_stats``), and as one process computing everything itself: the same metrics.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _workdir(root: Path, crema_shards: Path, tiny_models: Path, tiny_inception: str) -> Path:
    """Two test clips (the fixture's test and val clips), the tiny cvae, tiny-crop params."""
    shards = root / "shards" / "crema_d"
    shards.mkdir(parents=True)
    src = crema_shards / "shards" / "crema_d"
    for i, name in enumerate(("test-000000", "val-000000")):
        for suffix in (".tar", ".json"):
            shutil.copy(src / f"{name}{suffix}", shards / f"test-00000{i}{suffix}")
    (root / "models").symlink_to(tiny_models, target_is_directory=True)
    params = {"evaluate": {"crop_size": 64, "n_videos": 1, "device": "auto", "fid_sha256": None,
                           "fid_weights": tiny_inception, "protocol": {"max_frames": 40}},
              "mlflow": {"tracking_uri": f"sqlite:///{root / 'eval.db'}", "experiment": "eval"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _evaluate(root: Path, processes: int) -> dict:
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    proc = subprocess.run([*launcher, "-m", "pipeline.evaluate_video", "--method", "cvae", "--dataset", "crema_d"],
                          cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    out = root / "eval" / "cvae" / "crema_d"
    return {"metrics": json.loads((out / "metrics.json").read_text()),
            "provenance": json.loads((out / "provenance.json").read_text()),
            "videos": sorted(p.name for p in (out / "videos").glob("*.mp4"))}


@pytest.mark.slow
def test_two_processes_with_cached_real_frames_give_the_metrics_of_one(crema_shards, tiny_models, tiny_inception,
                                                                       tmp_path):
    one = _evaluate(_workdir(tmp_path / "one", crema_shards, tiny_models, tiny_inception), 1)
    cached = _workdir(tmp_path / "two", crema_shards, tiny_models, tiny_inception)
    proc = subprocess.run([sys.executable, "-m", "pipeline.real_stats", "--dataset", "crema_d"], cwd=cached, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _evaluate(cached, 2)
    assert one["provenance"]["processes"] == 1 and two["provenance"]["processes"] == 2
    assert "not found" in one["provenance"]["real_frames"] and "read from" in two["provenance"]["real_frames"]
    assert one["metrics"]["n_clips"] == two["metrics"]["n_clips"] == 2
    assert {"fid", "psnr", "ssim", "csim_dlib", "redetected_mouth_ld"} <= set(one["metrics"]["metrics"])
    assert set(two["metrics"]["metrics"]) == set(one["metrics"]["metrics"])
    for key, value in one["metrics"]["metrics"].items():  # sums in another order: float tolerance
        assert two["metrics"]["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert two["metrics"]["skipped_clips"] == one["metrics"]["skipped_clips"]
    assert two["videos"] == one["videos"] == ["9906_IOM_NEU_XX.mp4"]  # rank 0 writes the first clip's MP4


def test_real_stats_of_other_shards_are_not_reused(crema_shards, tiny_models, tiny_inception, tmp_path, monkeypatch):
    import torch

    from pipeline.real_stats import load_real_stats, real_stats_path, stats_key

    root = _workdir(tmp_path, crema_shards, tiny_models, tiny_inception)
    monkeypatch.chdir(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert load_real_stats(params, "crema_d")[0] is None
    real_stats_path("crema_d").parent.mkdir(parents=True)
    torch.save({"key": stats_key(params, "crema_d"), "fid": None, "landmarks": {}}, real_stats_path("crema_d"))
    assert load_real_stats(params, "crema_d")[0] is not None
    shutil.copy(root / "shards/crema_d/test-000000.tar", root / "shards/crema_d/test-000002.tar")  # the split changed
    stats, why = load_real_stats(params, "crema_d")
    assert stats is None and "other shards" in why
    os.remove(root / "shards/crema_d/test-000002.tar")
    assert load_real_stats(params, "crema_d")[0] is not None
    params["evaluate"]["protocol"] = {"max_frames": 7}
    assert load_real_stats(params, "crema_d")[0] is None  # other frames
    params["evaluate"]["protocol"] = {"max_frames": 40}
    assert load_real_stats(params, "crema_d")[0] is not None
    params["evaluate"]["crop_size"] = 128
    assert load_real_stats(params, "crema_d")[0] is None  # another crop


def test_real_stats_hold_the_fid_states_of_the_scored_and_of_all_frames(crema_shards, tiny_models, tiny_inception,
                                                                        tmp_path, monkeypatch):
    """Each frame goes through Inception once; "scored" (frames 1..n-1) and "all" (0..n-1), n =
    min(T, evaluate.protocol.max_frames), still equal torchmetrics' own states over those frames."""
    import torch

    from pipeline.protocol.clips import split_clips
    from pipeline.protocol.evaluators import fid_from_params
    from pipeline.real_stats import FID_STATES, compute_real_stats, fid_states

    root = _workdir(tmp_path, crema_shards, tiny_models, tiny_inception)
    monkeypatch.chdir(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["protocol"] = {"max_frames": 30}
    stats = compute_real_stats(params, "crema_d")
    direct = {"scored": fid_from_params(params, "cpu"), "all": fid_from_params(params, "cpu")}
    for clip in split_clips(root / "shards/crema_d", "frames_64"):
        assert len(clip["frames_64"]) > 30
        real = torch.from_numpy(clip["frames_64"][:30]).permute(0, 3, 1, 2)
        direct["scored"].update(real[1:], real=True)
        direct["all"].update(real, real=True)
    for name, metric in direct.items():
        expected = fid_states(metric)
        for state in FID_STATES:
            torch.testing.assert_close(stats["fid"][name][state], expected[state], rtol=1e-5, atol=1e-6)  # float32 features
    assert int(stats["fid"]["all"]["real_features_num_samples"]) == 2 * 30
    assert int(stats["fid"]["scored"]["real_features_num_samples"]) == 2 * 29
    assert all(len(lmk) == 29 for lmk in stats["landmarks"].values())


@pytest.mark.slow
def test_slurm_evaluation_script_splits_the_clips_between_its_tasks(crema_shards, tiny_models, tiny_inception,
                                                                    slurm_env, tmp_path):
    """cluster/evaluate.slurm under a SLURM environment (two tasks, srun stand-in): the ranks come
    from SLURM_PROCID / SLURM_NTASKS, both clips are scored once, task 0 writes the outputs."""
    root = _workdir(tmp_path / "work", crema_shards, tiny_models, tiny_inception)
    env = {**slurm_env, "SLURM_SUBMIT_DIR": str(root)}
    proc = subprocess.run(["bash", str(REPO / "cluster/evaluate.slurm"), "copy_reference", "crema_d"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = root / "eval" / "copy_reference" / "crema_d"
    assert json.loads((out / "provenance.json").read_text())["processes"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_clips"] == 2 and metrics["metrics"]["csim_dlib"] == pytest.approx(1.0, abs=1e-4)


def test_unknown_evaluate_device_is_a_params_error(tmp_path, monkeypatch, capsys):
    """A typo in ``evaluate.device`` ends with one line naming the key (exit 2), before any model loads."""
    from pipeline import evaluate_video

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"device": "gpu"}}))
    monkeypatch.chdir(tmp_path)
    assert evaluate_video.main(["--method", "copy_reference", "--dataset", "crema_d"]) == 2
    assert "evaluate.device: must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err

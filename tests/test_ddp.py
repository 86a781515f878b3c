"""Every trainable method through ``pipeline.train`` under DDP (two gloo processes, torchrun) and
with ``precision: bf16-mixed`` (the autocast path a GPU run takes), on tiny networks and real shards.

The workers (``tests/ddp_worker.py``) write each rank's initial and final parameters. The ranks saw
different windows (the DataModule seeds them by rank; test_train checks that for eapc), so equal
final parameters mean the gradients were averaged across ranks; eapc, whose steps draw no random
numbers, is also checked against a single process replaying both ranks' batches (test_train).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from ddp_worker import TINY

REPO = Path(__file__).resolve().parents[1]
ORDER = ["syncnet", "syncnet_eval", "emotion_classifier", "emotion_classifier_eval", "autoencoder", "eapc", "cvae",
         "sinha", "two_stage", "eapc_vid2vid", "emotalker"]  # loss networks before the generators that load them
VAL_EMOTIONS = (3, 5)  # the two val shards' labels (disgusted, happy): one per rank
TRAIN_EMOTIONS = (1, 5)  # the two train shards' labels (angry, happy): each rank may see only one


def test_every_trainable_method_is_covered():
    from lightning_modules import METHODS

    assert set(ORDER) == set(METHODS) == set(TINY)


def _relabelled(src: Path, dst: Path, emotion_id: int) -> None:
    """Copy a shard with every sample's ``meta.json`` emotion set to ``emotion_id``."""
    from primitives.vocab import EMOTIONS

    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read()
            if member.name.endswith(".meta.json"):
                meta = json.loads(data)
                meta.update(emotion_id=emotion_id, emotion=EMOTIONS[emotion_id])
                data = json.dumps(meta).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def _workdir(crema_shards: Path, root: Path) -> Path:
    """The fixture's train shards relabelled one emotion each (TRAIN_EMOTIONS: two_stage's edits
    target emotions of the training data) plus two val shards of one clip with different emotions."""
    shards = root / "shards" / "crema_d"
    shards.mkdir(parents=True)
    src = crema_shards / "shards" / "crema_d"
    for path, emotion_id in zip(sorted(src.glob("train-*.tar")), TRAIN_EMOTIONS, strict=True):
        _relabelled(path, shards / path.name, emotion_id)
        shutil.copy(path.with_suffix(".json"), shards / path.with_suffix(".json").name)
    for i, emotion_id in enumerate(VAL_EMOTIONS):
        _relabelled(src / "val-000000.tar", shards / f"val-00000{i}.tar", emotion_id)
    return root


def _run(args: list[str], cwd: Path, timeout: int = 900) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def ddp_run(crema_shards, tmp_path_factory):
    work = _workdir(crema_shards, tmp_path_factory.mktemp("ddp"))
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(REPO / "tests/ddp_worker.py"),
          str(work), str(work / "out"), *ORDER], work)
    return work


@pytest.fixture(scope="module")
def bf16_run(crema_shards, tmp_path_factory):
    work = _workdir(crema_shards, tmp_path_factory.mktemp("bf16"))
    _run([sys.executable, str(REPO / "tests/ddp_worker.py"), str(work), str(work / "out"), *ORDER,
          "--precision", "bf16-mixed", "--devices", "1", "--epochs", "1"], work)
    return work


def _load(work: Path, method: str, rank: int) -> dict:
    return torch.load(work / "out" / method / f"rank{rank}.pt", map_location="cpu", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ORDER)
def test_ddp_two_ranks_end_with_the_same_trained_parameters(ddp_run, method):
    ranks = [_load(ddp_run, method, r) for r in (0, 1)]
    assert ranks[0]["global_step"] >= 4  # 2 epochs x 2 batches (manual optimisation counts each optimizer step)
    moved = [k for k, v in ranks[0]["params"].items() if not torch.equal(v, ranks[0]["init"][k])]
    assert moved, "no parameter changed: nothing was trained"
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0, msg=name)
    saved = torch.load(ddp_run / "models" / method / "crema_d" / "last.ckpt", map_location="cpu", weights_only=False)
    for name, value in ranks[0]["params"].items():  # the checkpoint is the ranks' shared state
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_two_stage_per_emotion_validation_keys_equal_one_process(ddp_run, monkeypatch):
    """Each rank validated one clip of its own emotion: the logged per-emotion edit accuracies are
    those of one process validating both clips with the saved weights."""
    import lightning as L
    from mlflow import MlflowClient

    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules.two_stage import TwoStageModule
    from primitives.vocab import EMOTIONS

    client = MlflowClient(f"sqlite:///{ddp_run / 'ddp.db'}")
    run = [r for r in client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
           if r.info.run_name == "two_stage-crema_d"][0]
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("val/edit_acc")}
    seen = sorted(TRAIN_EMOTIONS)  # merged over the ranks: the next of these after each val label
    targets = {EMOTIONS[next((s for s in seen if s > e), seen[0])] for e in VAL_EMOTIONS}
    assert targets == {"happy", "angry"}
    assert set(logged) == {"val/edit_acc"} | {f"val/edit_acc_{name}" for name in targets}

    monkeypatch.chdir(ddp_run)  # the checkpoint names its loss networks relative to the working directory
    model = TwoStageModule.load_from_checkpoint(ddp_run / "models/two_stage/crema_d/last.ckpt", map_location="cpu")
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(ddp_run / "shards/crema_d"), keys=model.data_keys,
                                          window=8, batch_size=2))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    single = trainer.validate(model, datamodule=dm, verbose=False)[0]
    for key, value in logged.items():
        assert value == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("method", ORDER)
def test_bf16_mixed_step_trains_every_method(bf16_run, method):
    state = _load(bf16_run, method, 0)
    assert state["global_step"] >= 2
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    assert any(not torch.equal(v, state["init"][k]) for k, v in state["params"].items())
    config = json.loads((bf16_run / "models" / method / "crema_d" / "config.json").read_text())
    assert config["trainer"]["precision"] == "bf16-mixed"

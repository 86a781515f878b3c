"""Train / evaluate stages: params validation, a tiny real training run, DDP (gloo), kill + resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError
from pipeline.train import run_spec

REPO = Path(__file__).resolve().parents[1]
TINY_NET = {"audio_hidden": 16, "audio_layers": 1, "llf_hidden": 16, "llf_layers": 1, "lm_hidden": 16,
            "lm_layers": 1, "attention_dim": 16, "ref_hidden": 8, "fc_dims": [32]}


def tiny_params(tracking_uri: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({
        "datasets": ["crema_d"],
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                    "precision": "32-true", "log_every_n_steps": 1},
        "data": {"window": 25, "batch_size": 4, "train_batches": 4, "windows_per_clip": 2, "shuffle_buffer": 8,
                 "num_workers": 0},
    })
    params["train"]["methods"]["eapc"]["net"] = dict(TINY_NET)
    params["mlflow"] = {"tracking_uri": tracking_uri, "experiment": "test"}
    return params


@pytest.fixture(scope="module")
def workdir(crema_shards):
    return crema_shards


def write_params(workdir: Path, name: str, data: dict | None = None, **trainer) -> Path:
    params = tiny_params(f"sqlite:///{workdir / name}.db")
    params["train"]["trainer"].update(trainer)
    params["train"]["data"].update(data or {})
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_stage(module: str, workdir: Path, params: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, "--method", "eapc", "--dataset", "crema_d", "--params", str(params), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_bad_params_fail_before_work_naming_the_key(workdir, tmp_path, monkeypatch):
    work = tmp_path / "work"  # its own folder: other tests write models/ into the shared workdir
    (work / "shards").mkdir(parents=True)
    (work / "shards" / "crema_d").symlink_to(workdir / "shards" / "crema_d", target_is_directory=True)
    monkeypatch.chdir(work)
    params = tiny_params("sqlite:///unused.db")
    with pytest.raises(ParamsError, match="train.methods: unknown method 'nope'"):
        run_spec(params, "nope", "crema_d")
    bad_lr = json.loads(json.dumps(params))
    bad_lr["train"]["methods"]["eapc"]["optim"]["lr"] = -1.0
    with pytest.raises(ParamsError, match=r"train.methods.eapc.*lr must be > 0"):
        run_spec(bad_lr, "eapc", "crema_d")
    with pytest.raises(ParamsError, match="manifest.datasets.unknown_set"):
        run_spec(params, "eapc", "unknown_set")
    params["manifest"]["datasets"]["mead"]["root"] = "x"
    with pytest.raises(ParamsError, match="no training shards in shards/mead"):
        run_spec(params, "eapc", "mead")
    bad_trainer = json.loads(json.dumps(params))
    bad_trainer["train"]["trainer"]["max_epocs"] = 3
    with pytest.raises(ParamsError, match="train.trainer.max_epocs"):
        run_spec(bad_trainer, "eapc", "crema_d")
    bad_data = json.loads(json.dumps(params))
    bad_data["train"]["methods"]["eapc"]["data"] = {"batch_size": 0}
    with pytest.raises(ParamsError, match=r"train.methods.eapc.data.*batch_size must be >= 1"):
        run_spec(bad_data, "eapc", "crema_d")
    assert sorted(p.name for p in work.iterdir()) == ["shards"]  # no model folder, no MLflow store


def test_method_data_and_trainer_override_the_shared_ones(workdir, tmp_path, monkeypatch):
    """train.methods.<m>.{data,trainer} replace those keys of train.{data,trainer} for that method only."""
    monkeypatch.chdir(workdir)
    params = tiny_params("sqlite:///unused.db")
    params["train"]["methods"]["eapc"]["data"] = {"batch_size": 32, "train_batches": None}
    params["train"]["methods"]["eapc"]["trainer"] = {"max_steps": 7}
    spec = run_spec(params, "eapc", "crema_d")
    assert spec.data["batch_size"] == 32 and spec.data["train_batches"] is None and spec.data["window"] == 25
    assert spec.trainer["max_steps"] == 7 and spec.trainer["max_epochs"] == 3
    assert "data" not in spec.method_params and "trainer" not in spec.method_params
    other = run_spec(params, "syncnet", "crema_d")
    assert other.data["batch_size"] == 4 and other.data["train_batches"] == 4 and "max_steps" not in other.trainer


def test_generator_params_validated_without_loading_weights(workdir, monkeypatch):
    """cvae's loss-network checkpoints are checked for existence (naming the stage that writes
    them), never loaded, while validating params; a per-method seed overrides train.seed."""
    monkeypatch.chdir(workdir)
    params = tiny_params("sqlite:///unused.db")
    with pytest.raises(ParamsError, match=r"optim.syncnet_ckpt: checkpoint models/syncnet/crema_d/last.ckpt "
                                          r"does not exist .*train@syncnet-crema_d"):
        run_spec(params, "cvae", "crema_d")
    params["train"]["methods"]["cvae"]["optim"].update({"syncnet_ckpt": None, "emotion_ckpt": None})
    assert run_spec(params, "cvae", "crema_d").method_params["optim"]["syncnet_ckpt"] is None
    assert run_spec(params, "syncnet_eval", "crema_d").seed == 1 != run_spec(params, "syncnet", "crema_d").seed
    assert "seed" not in run_spec(params, "syncnet_eval", "crema_d").method_params
    # a method's own trainer arguments override train.trainer for that method only
    params["train"]["methods"]["syncnet"]["trainer"] = {"max_epochs": 7}
    spec = run_spec(params, "syncnet", "crema_d")
    assert spec.trainer["max_epochs"] == 7 and "trainer" not in spec.method_params
    assert run_spec(params, "syncnet_eval", "crema_d").trainer["max_epochs"] == params["train"]["trainer"]["max_epochs"]
    params["train"]["methods"]["syncnet"]["trainer"] = {"max_epoch": 7}
    with pytest.raises(ParamsError, match="train.methods.syncnet.trainer.max_epoch: unknown key"):
        run_spec(params, "syncnet", "crema_d")


@pytest.mark.slow
def test_ddp_two_processes_one_mlflow_run_same_metrics(workdir, monkeypatch):
    from mlflow import MlflowClient

    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules import METHODS
    from pipeline.evaluate import predict_windows

    params = write_params(workdir, "ddp", devices=2, strategy="ddp")
    proc = run_stage("pipeline.train", workdir, params, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((workdir / "models/eapc/crema_d/config.json").read_text())
    assert config["global_step"] == 3 * 4
    client = MlflowClient(f"sqlite:///{workdir / 'ddp'}.db")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == config["mlflow_run_id"]
    logged = runs[0].data.metrics
    assert {"train/total", "val/loss", "val/mouth_ld", "val/face_lvd"} <= set(logged)

    # the DDP-reduced validation metrics equal a single-process pass with the saved weights
    monkeypatch.chdir(workdir)
    model = METHODS["eapc"].load_from_checkpoint(workdir / "models/eapc/crema_d/last.ckpt", map_location="cpu")
    dm = TalkingFaceDataModule(DataConfig(shard_dir="shards/crema_d", keys=("lmk", "mfcc", "llf"), batch_size=4))
    values, n_windows, _, _ = predict_windows(model, dm.val_dataloader())
    assert n_windows > 0
    for name in ("mouth_ld", "mouth_lvd", "face_ld", "face_lvd"):
        assert logged[f"val/{name}"] == pytest.approx(values[name], rel=1e-4), name


def _saved_epoch(ckpt: Path) -> int:
    """Epoch index stored in a checkpoint, -1 while it is absent or still being written."""
    import torch

    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    except Exception:
        return -1


@pytest.mark.slow
def test_kill_mid_training_then_resume_to_the_same_final_step(workdir):
    params = write_params(workdir, "resume", data={"train_batches": 40}, max_epochs=4)
    model_dir = workdir / "models/eapc/crema_d"
    shutil.rmtree(model_dir, ignore_errors=True)  # not the DDP test's checkpoint
    cmd = [sys.executable, "-m", "pipeline.train", "--method", "eapc", "--dataset", "crema_d", "--params", str(params)]
    proc = subprocess.Popen(cmd, cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _saved_epoch(model_dir / "last.ckpt") < 0:  # one epoch done: kill it in the second
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "training did not reach its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads((model_dir / "config.json").read_text())
    assert "global_step" not in first  # it never finished
    assert _saved_epoch(model_dir / "last.ckpt") < 3

    done = run_stage("pipeline.train", workdir, params)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((model_dir / "config.json").read_text())
    assert final["global_step"] == 4 * 40
    assert final["mlflow_run_id"] == first["mlflow_run_id"]  # the same MLflow run continues
    assert "Restoring states from the checkpoint" in done.stderr

    # raising max_epochs (not in the params hash) resumes the finished run: the global step continues
    longer = write_params(workdir, "resume", data={"train_batches": 40}, max_epochs=5)
    extended = run_stage("pipeline.train", workdir, longer)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "Restoring states from the checkpoint" in extended.stderr
    config = json.loads((model_dir / "config.json").read_text())
    assert config["global_step"] == 5 * 40 and config["mlflow_run_id"] == first["mlflow_run_id"]
    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{workdir / 'resume'}.db").get_run(config["mlflow_run_id"])
    assert run.data.tags["resumed.trainer.max_epochs"] == "4 -> 5"  # MLflow params never change
    assert run.data.params["trainer.max_epochs"] == "4"

    evaluated = run_stage("pipeline.evaluate", workdir, longer)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((workdir / "eval/eapc/crema_d/metrics.json").read_text())
    ours = {"mouth_ld", "mouth_lvd", "face_ld", "face_lvd"}
    assert set(metrics["metrics"]) == ours | {f"authors_{k}" for k in ours}  # + paper 001's authors' protocol
    provenance = json.loads((workdir / "eval/eapc/crema_d/provenance.json").read_text())
    assert provenance["evaluators"]["authors_face_ld"].startswith("paper 001's authors' protocol")
    assert all(0 < v < 64 for v in metrics["metrics"].values())  # pixels of a 64 px crop
    assert metrics["n_clips"] == 1 and metrics["n_windows"] >= 1
    assert (workdir / "eval/eapc/crema_d/landmarks.png").stat().st_size > 1000


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_replay(workdir: Path, params_path: Path, world: int, epochs: int) -> tuple[dict, list]:
    """The weights DDP should reach: one process, seeded as pipeline.train, each step on the
    ranks' batches of that step with the mean of their losses (= DDP's mean of their gradients)."""
    import lightning as L

    from pipeline.params import load_params
    from pipeline.train import build

    old = os.getcwd()
    os.chdir(workdir)
    try:
        spec = run_spec(load_params(params_path), "eapc", "crema_d")
        L.seed_everything(spec.seed, workers=True)
        model, dm = build(spec)
        optimizer = model.configure_optimizers()
        model.train()
        for epoch in range(epochs):
            streams = []
            for rank in range(world):
                dm.set_epoch(epoch, rank)
                streams.append(list(dm.train_dataloader()))
            for batches in zip(*streams):
                loss = sum(model.model_step(b)[1]["total"] for b in batches) / world
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, streams
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_torchrun_two_nodes_equal_the_single_process_replay(workdir):
    """`torchrun --nnodes 2 --nproc-per-node 1` (c10d rendezvous on 127.0.0.1, gloo): one MLflow run,
    and last.ckpt equals one process replaying both ranks' batches (so the ranks saw their own,
    different windows) to 1e-5."""
    import torch
    from mlflow import MlflowClient

    name = "torchrun"
    params = write_params(workdir, name, max_epochs=2, devices=1, num_nodes=2, strategy="ddp")
    shutil.rmtree(workdir / "models/eapc/crema_d", ignore_errors=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
           "-m", "pipeline.train", "--method", "eapc", "--dataset", "crema_d", "--params", str(params)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outputs)

    config = json.loads((workdir / "models/eapc/crema_d/config.json").read_text())
    assert config["global_step"] == 2 * 4  # train_batches per epoch and rank
    client = MlflowClient(f"sqlite:///{workdir / name}.db")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == config["mlflow_run_id"]

    expected, streams = _single_process_replay(workdir, params, world=2, epochs=2)
    keys = [[k for b in stream for k in b["key"]] for stream in streams]
    assert keys[0] != keys[1]  # the two ranks' windows differ
    state = torch.load(workdir / "models/eapc/crema_d/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.slow
def test_mlflow_server_run_is_found_there_and_a_down_server_stops_before_training(workdir, tmp_path):
    from mlflow import MlflowClient

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        params = tiny_params(uri)
        params["train"]["trainer"]["max_epochs"] = 1
        path = workdir / "server.yaml"
        path.write_text(yaml.safe_dump(params))
        shutil.rmtree(workdir / "models/eapc/crema_d", ignore_errors=True)
        proc = run_stage("pipeline.train", workdir, path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        config = json.loads((workdir / "models/eapc/crema_d/config.json").read_text())
        run = MlflowClient(uri).get_run(config["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "train/total" in run.data.metrics
    finally:
        server.terminate()
        server.wait(timeout=30)

    shutil.rmtree(workdir / "models/eapc/crema_d", ignore_errors=True)
    start = time.perf_counter()
    proc = run_stage("pipeline.train", workdir, path, timeout=120)
    assert proc.returncode == 2 and time.perf_counter() - start < 60
    assert f"MLflow tracking server {uri} does not answer" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "models/eapc/crema_d/last.ckpt").exists()  # no training step ran


def test_params_hash_follows_the_training_shards(workdir, tmp_path, monkeypatch):
    """A run resumes only on the data it was trained on: new or changed shards change the hash."""
    import dataclasses

    monkeypatch.chdir(workdir)
    spec = run_spec(tiny_params("sqlite:///unused.db"), "eapc", "crema_d")
    copy = tmp_path / "shards"
    shutil.copytree(spec.shard_dir, copy)
    moved = dataclasses.replace(spec, shard_dir=copy)
    assert moved.params_hash() == spec.params_hash()  # same bytes, other place
    stats = next(copy.glob("train-*.json"))
    stats.write_text(stats.read_text().replace('"clips"', '"clips" ', 1))
    assert moved.params_hash() != spec.params_hash()
    shutil.copy(next(spec.shard_dir.glob("train-*.json")), stats)
    with open(next(copy.glob("train-*.tar")), "ab") as fh:
        fh.write(b"\0" * 512)
    assert moved.params_hash() != spec.params_hash()


def test_params_hash_follows_the_files_the_params_name(workdir, tmp_path, monkeypatch):
    """A generator whose loss network (or frozen autoencoder) was retrained must not resume."""
    import dataclasses

    monkeypatch.chdir(workdir)
    spec = run_spec(tiny_params("sqlite:///unused.db"), "eapc", "crema_d")
    ckpt, folder = tmp_path / "syncnet.ckpt", tmp_path / "block"
    ckpt.write_bytes(b"weights v1")
    folder.mkdir()
    (folder / "block.pt").write_bytes(b"a")
    named = dataclasses.replace(spec, method_params={**spec.method_params, "optim": {"syncnet_ckpt": str(ckpt),
                                                                                   "block": str(folder)}})
    before = named.params_hash()
    assert before != spec.params_hash()
    ckpt.write_bytes(b"weights v2")
    after_ckpt = named.params_hash()
    (folder / "block.pt").write_bytes(b"b")
    assert len({before, after_ckpt, named.params_hash()}) == 3


def test_state_signature_follows_the_architecture_not_the_weights():
    """Same params but code that builds other tensors (a renamed or new buffer) must not resume."""
    import torch

    from pipeline.train import state_signature

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert state_signature(a) == state_signature(b)  # other weights, same tensors
    b.register_buffer("extra", torch.zeros(1))
    assert state_signature(a) != state_signature(b)
    assert state_signature(a) != state_signature(torch.nn.Linear(4, 2))


@pytest.mark.slow
def test_changed_params_move_the_trained_model_aside_never_delete_it(workdir):
    """A run whose params hash differs starts afresh, and the previous model folder (checkpoint and
    config) is moved to models/.superseded/, byte for byte."""
    params = write_params(workdir, "aside", data={"train_batches": 2}, max_epochs=1)
    model_dir = workdir / "models/eapc/crema_d"
    first = run_stage("pipeline.train", workdir, params)
    assert first.returncode == 0, first.stderr[-3000:]
    old_config = json.loads((model_dir / "config.json").read_text())
    old_ckpt = (model_dir / "last.ckpt").read_bytes()
    changed = yaml.safe_load(params.read_text())
    changed["train"]["methods"]["eapc"]["optim"]["lr"] = 3e-4
    params.write_text(yaml.safe_dump(changed))
    second = run_stage("pipeline.train", workdir, params)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states" not in second.stderr and "moved to" in second.stderr
    aside = list((workdir / "models/.superseded/eapc/crema_d").glob(f"{old_config['params_hash']}-*"))
    assert len(aside) == 1
    assert (aside[0] / "last.ckpt").read_bytes() == old_ckpt
    assert json.loads((aside[0] / "config.json").read_text()) == old_config
    new_config = json.loads((model_dir / "config.json").read_text())
    assert new_config["params_hash"] != old_config["params_hash"] and new_config["global_step"] == 2


def test_run_keys_stay_out_of_the_params_hash_and_bad_trainer_values_name_the_key(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    params = tiny_params("sqlite:///unused.db")
    base = run_spec(params, "eapc", "crema_d")
    assert base.trainer["deterministic"] == "warn" and base.trainer["benchmark"] is False
    longer = json.loads(json.dumps(params))
    longer["train"]["trainer"].update(max_epochs=50, max_steps=1000, devices=4, val_check_interval=0.5,
                                      limit_val_batches=10, deterministic=True, benchmark=True,
                                      float32_matmul_precision="high", checkpoint_every_n_steps=100)
    longer["train"]["data"].update(num_workers=7, pin_memory=True)
    assert run_spec(longer, "eapc", "crema_d").params_hash() == base.params_hash()
    for key, value in (("precision", "bf16-mixed"), ("accumulate_grad_batches", 2), ("gradient_clip_val", 1.0)):
        other = json.loads(json.dumps(params))
        other["train"]["trainer"][key] = value
        assert run_spec(other, "eapc", "crema_d").params_hash() != base.params_hash(), key
    for key, value, match in (("deterministic", "sometimes", "deterministic must be"),
                              ("float32_matmul_precision", "tf32", "float32_matmul_precision must be"),
                              ("checkpoint_every_n_steps", 0, "checkpoint_every_n_steps must be >= 1")):
        bad = json.loads(json.dumps(params))
        bad["train"]["trainer"][key] = value
        with pytest.raises(ParamsError, match=f"train.trainer.{match}"):
            run_spec(bad, "eapc", "crema_d")


def test_ddp_strategy_follows_what_the_module_states():
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_modules import METHODS
    from pipeline.train import strategy_for

    gan, plain = METHODS["sinha"], METHODS["eapc"]  # the class attribute is what strategy_for reads
    for args in ({"strategy": "ddp"}, {"strategy": "auto", "devices": 4}, {"strategy": "auto", "num_nodes": 2}):
        assert strategy_for(gan, args)._ddp_kwargs["find_unused_parameters"] is True, args
        assert strategy_for(plain, args)._ddp_kwargs["find_unused_parameters"] is False, args
    assert strategy_for(gan, {"strategy": "auto", "devices": 1}) == "auto"
    assert strategy_for(gan, {"strategy": "fsdp", "devices": 2}) == "fsdp"
    assert isinstance(strategy_for(gan, {"strategy": "ddp"}), DDPStrategy)

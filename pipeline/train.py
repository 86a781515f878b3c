"""DVC stage ``train@<method>-<dataset>``: train a method on a dataset's shards, log to MLflow.

    python -m pipeline.train --method eapc --dataset crema_d [--set trainer.devices=2 ...]

Writes ``models/<method>/<dataset>/`` (``last.ckpt``, ``config.json`` with the resolved config,
the params hash and the MLflow run id). A run with the same params resumes from ``last.ckpt``
(also into the same MLflow run); changed params start afresh. Under DDP only rank zero talks to
MLflow, and every rank gets rank zero's run id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from pipeline.params import ParamsError, error_line, get, load_params, set_dotted

TRAINER_KEYS = {"max_epochs": int, "max_steps": int, "max_time": (str, dict), "accelerator": str,
                "devices": (int, str, list), "num_nodes": int, "strategy": str, "precision": (str, int),
                "log_every_n_steps": int, "gradient_clip_val": (int, float), "accumulate_grad_batches": int,
                "val_check_interval": (int, float), "limit_val_batches": (int, float),
                "check_val_every_n_epoch": int, "sync_batchnorm": bool, "benchmark": bool,
                "deterministic": (bool, str), "num_sanity_val_steps": int,
                # ours, not lightning.Trainer arguments:
                "float32_matmul_precision": str,   # torch.set_float32_matmul_precision: highest | high (TF32) | medium
                "checkpoint_every_n_steps": int}   # a step-based last.ckpt as well (preemption); null: per epoch only
"""Accepted ``train.trainer`` (and ``train.methods.<m>.trainer``) keys and their types."""

RUN_KEYS = frozenset({"devices", "num_nodes", "strategy", "accelerator", "max_epochs", "max_steps", "max_time",
                      "log_every_n_steps", "val_check_interval", "limit_val_batches", "check_val_every_n_epoch",
                      "deterministic", "benchmark", "float32_matmul_precision", "checkpoint_every_n_steps",
                      "num_sanity_val_steps"})
"""Trainer keys that say how long, where and how reproducibly a run goes, not what it learns: they
stay out of the params hash, so raising ``max_epochs`` resumes from ``last.ckpt``."""

TRAINER_DEFAULTS = {"deterministic": "warn", "benchmark": False, "float32_matmul_precision": "highest"}
"""``deterministic: warn`` (torch.use_deterministic_algorithms(True, warn_only=True)): CUDA kernels
without a deterministic version (grid_sample / interpolate / adaptive-pool backward) warn instead
of raising, so a GPU run is reproducible only up to those kernels and atomics."""


@dataclass
class RunSpec:
    """Everything a train/evaluate run needs, validated from params.yaml before any work."""

    method: str
    dataset: str
    shard_dir: Path
    model_dir: Path
    trainer: dict
    data: dict
    method_params: dict
    seed: int
    tracking_uri: str
    experiment: str

    def params_hash(self) -> str:
        """Hash of what changes the trained weights (not ``RUN_KEYS`` nor ``data.num_workers`` / ``pin_memory``): the params, the
        training data (:func:`shard_fingerprint`) and the files the params name (:func:`input_fingerprints`:
        loss networks, a frozen autoencoder), so a run resumes only on the same shards and inputs."""
        from datamodules.talking_face import shard_fingerprint

        content = {"method": self.method, "dataset": self.dataset, "seed": self.seed,
                   "method_params": self.method_params, "shards": shard_fingerprint(self.shard_dir),
                   "trainer": {k: v for k, v in self.trainer.items() if k not in RUN_KEYS},
                   "data": {k: v for k, v in self.data.items() if k not in ("num_workers", "pin_memory")}}
        inputs = input_fingerprints(self.method_params)
        if inputs:  # (absent when none: the hashes of methods without input files stay as they were)
            content["inputs"] = inputs
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_fingerprints(params) -> dict[str, str]:
    """sha256 of every existing file (or of the files under an existing folder) that a string in
    ``params`` names, e.g. ``optim.syncnet_ckpt``: a changed loss network or autoencoder must not
    be resumed into."""
    from primitives.checksum import file_sha256

    found: dict[str, str] = {}
    stack = [params]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, str) and node and Path(node).exists():
            files = sorted(p for p in Path(node).rglob("*") if p.is_file()) if Path(node).is_dir() else [Path(node)]
            found[node] = hashlib.sha256("".join(f"{f}:{file_sha256(f)}" for f in files).encode()).hexdigest()
    return found


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (value parsed as YAML) relative to ``train``.

    Raises:
        ParamsError: an override without ``=``.
    """
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        set_dotted(params, f"train.{key}", yaml.safe_load(value))
    return params


RUN_SETTINGS = ("seed", "trainer", "data")
"""Keys of ``train.methods.<method>`` that set its run, not its module's arguments."""


def method_data(params: dict, method: str) -> dict:
    """``train.data`` with ``train.methods.<method>.data`` over it: a method's own batch size,
    window and epoch length (its paper's). Raises ParamsError: either is not a mapping."""
    return {**get(params, "train.data", dict, default={}), **get(params, f"train.methods.{method}.data", dict, default={})}


def run_spec(params: dict, method: str, dataset: str, require_shards: bool = True) -> RunSpec:
    """Validate the ``train`` and ``mlflow`` sections for one method and dataset (``require_shards``
    False: without the check that its training shards exist, e.g. a preset checked before any data).

    Raises:
        ParamsError: unknown method or dataset, bad trainer/data/method values, missing shards —
            the message names the key (e.g. ``train.methods.eapc.optim.lr``) or the path.
    """
    from datamodules.talking_face import DataConfig
    from lightning_modules import METHODS
    from primitives.config import check_types

    if method not in METHODS:
        raise ParamsError(f"train.methods: unknown method {method!r} (registered: {', '.join(sorted(METHODS))})")
    get(params, f"manifest.datasets.{dataset}", dict)  # the dataset must be one the pipeline builds
    methods = get(params, "train.methods", dict)
    if method not in methods:
        raise ParamsError(f"train.methods.{method}: no parameters for this method in params.yaml")
    trainer: dict = {}
    # a method may override trainer arguments (e.g. more epochs for a small network)
    for section in ("train.trainer", f"train.methods.{method}.trainer"):
        for key in get(params, section, dict, default={}):
            if key not in TRAINER_KEYS:
                raise ParamsError(f"{section}.{key}: unknown key (known: {', '.join(TRAINER_KEYS)})")
            trainer[key] = get(params, f"{section}.{key}", TRAINER_KEYS[key], default=None)  # null: Lightning's default
    trainer = {**TRAINER_DEFAULTS, **{k: v for k, v in trainer.items() if v is not None}}
    _check_trainer(trainer)
    shard_dir = Path("shards") / dataset
    data = method_data(params, method)
    try:
        for section in ("train.data", f"train.methods.{method}.data"):  # unknown keys, types: named where they are
            check_types(DataConfig, get(params, section, dict, default={}), section, fixed=("shard_dir", "keys"))
    except ValueError as err:
        raise ParamsError(str(err)) from err
    try:
        DataConfig(shard_dir=str(shard_dir), **data)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"train.data / train.methods.{method}.data: {err}") from err
    method_params = _with_dataset(dict(get(params, f"train.methods.{method}", dict)), dataset)
    # a network trained twice (loss network and evaluator) differs by its own seed
    seed = get(params, f"train.methods.{method}.seed", int, default=get(params, "train.seed", int, default=0))
    for key in RUN_SETTINGS:
        method_params.pop(key, None)
    try:  # a module that loads weights validates its params without loading them
        getattr(METHODS[method], "validate_params", METHODS[method])(**method_params)
    except FileNotFoundError as err:
        raise ParamsError(str(err)) from err
    except (TypeError, ValueError) as err:
        message = str(err)
        raise ParamsError(message if message.startswith("train.") else f"train.methods.{method}: {message}") from err
    if require_shards and not sorted(shard_dir.glob("train-*.tar")):
        raise ParamsError(f"train.datasets: no training shards in {shard_dir} (run `dvc repro preprocess@{dataset}`)")
    return RunSpec(
        method=method, dataset=dataset, shard_dir=shard_dir, model_dir=Path("models") / method / dataset,
        trainer=trainer, data=data, method_params=method_params, seed=seed,
        tracking_uri=get(params, "mlflow.tracking_uri", str, default="sqlite:///mlflow.db"),
        experiment=get(params, "mlflow.experiment", str, default="emotional-talking-face"),
    )


def _check_trainer(trainer: dict) -> None:
    """Value checks of the resolved trainer keys; raises ``ParamsError`` naming the key."""
    for key in ("max_epochs", "checkpoint_every_n_steps", "accumulate_grad_batches", "check_val_every_n_epoch"):
        if trainer.get(key) is not None and trainer[key] < 1:
            raise ParamsError(f"train.trainer.{key} must be >= 1, got {trainer[key]}")
    if trainer.get("max_steps") is not None and trainer["max_steps"] < -1:
        raise ParamsError(f"train.trainer.max_steps must be >= -1 (-1: no limit), got {trainer['max_steps']}")
    if trainer["deterministic"] not in (True, False, "warn"):
        raise ParamsError(f"train.trainer.deterministic must be true, false or warn, got {trainer['deterministic']!r}")
    if trainer["float32_matmul_precision"] not in ("highest", "high", "medium"):
        raise ParamsError("train.trainer.float32_matmul_precision must be highest, high or medium, "
                          f"got {trainer['float32_matmul_precision']!r}")


def _with_dataset(value, dataset: str):
    """Replace ``{dataset}`` in every string of a params tree (e.g. ``models/syncnet/{dataset}/last.ckpt``)."""
    if isinstance(value, dict):
        return {k: _with_dataset(v, dataset) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_dataset(v, dataset) for v in value]
    return value.replace("{dataset}", dataset) if isinstance(value, str) else value


def build(spec: RunSpec):
    """The LightningModule (input statistics fitted on training data) and the DataModule."""
    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules import METHODS

    model = METHODS[spec.method](**spec.method_params)
    datamodule = TalkingFaceDataModule(DataConfig(shard_dir=str(spec.shard_dir), keys=model.data_keys,
                                                  seed=spec.seed, **spec.data))
    if hasattr(model, "fit_input_stats"):
        model.fit_input_stats(**{k: datamodule.training_arrays(k) for k in ("mfcc", "llf")})
    return model, datamodule


def state_signature(model: L.LightningModule) -> str:
    """16 hex digits of sha256 over the model's state_dict names, shapes and dtypes: a checkpoint
    resumes only into a model with the same ones (params equal but code changed can differ)."""
    entries = [f"{name}:{tuple(t.shape)}:{t.dtype}" for name, t in model.state_dict().items()]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def mlflow_logger(spec: RunSpec, run_id: str | None = None):
    """An ``MLFlowLogger`` on ``spec.tracking_uri`` (rank zero creates the run lazily)."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=spec.experiment, tracking_uri=spec.tracking_uri, run_id=run_id,
                        run_name=f"{spec.method}-{spec.dataset}", log_model=False,
                        tags={"method": spec.method, "dataset": spec.dataset})


class MLflowRunSync(Callback):
    """Lightning callback: once DDP is up, every rank takes rank zero's MLflow run id into its config
    (only rank zero's logger talks to MLflow), and rank zero logs the params and the resolved config
    and writes ``config.json`` (kept for a resume)."""

    def __init__(self, config: dict, config_path: Path):
        self.config, self.config_path = config, config_path

    def setup(self, trainer, pl_module, stage: str) -> None:
        logger = trainer.logger  # None on the other ranks
        run_id = logger.run_id if trainer.is_global_zero else None
        run_id = trainer.strategy.broadcast(run_id, src=0)
        self.config["mlflow_run_id"] = run_id
        if trainer.is_global_zero:
            params = flatten({k: self.config[k] for k in ("method", "dataset", "resolved", "data", "trainer", "seed")})
            # a resumed run may have other RUN_KEYS (max_epochs raised): MLflow params never change, so
            # a changed value is a tag "resumed.<key>: old -> new" and the param keeps its first value
            logged = logger.experiment.get_run(run_id).data.params
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
            for key, value in changed.items():
                logger.experiment.set_tag(run_id, f"resumed.{key}", f"{logged[key]} -> {value}")
            logger.log_hyperparams({k: v for k, v in params.items() if k not in changed})
            logger.experiment.log_dict(run_id, self.config, "config/resolved.json")
            self.config_path.write_text(json.dumps(self.config, indent=1, sort_keys=True))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server in ``mlflow.tracking_uri`` does not answer."""


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when ``uri`` is an MLflow server (http/https) that does not answer ``/health``
    (MLflow's own client would retry for minutes, then fail deep inside training).

    Raises:
        TrackingUnavailable: naming the URI and what to do.
    """
    if not uri.startswith(("http://", "https://")):
        return  # a local store (sqlite:///, file paths) is created on demand
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            why = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        why = str(getattr(err, "reason", err))
    raise TrackingUnavailable(f"MLflow tracking server {uri} does not answer ({why}): start it "
                              f"(`mlflow server --host ... --port ...`) or point mlflow.tracking_uri elsewhere")


def train(spec: RunSpec) -> dict:
    """Fit (or resume) one method on one dataset; returns the ``config.json`` content.

    Same params hash (``RunSpec.params_hash``: ``max_epochs`` / ``max_steps`` and the other
    ``RUN_KEYS`` excluded) and a ``last.ckpt``: resume from it (on SLURM from Lightning's newer
    ``hpc_ckpt_*.ckpt`` written at a preemption signal). Otherwise an existing model folder is moved
    to ``models/.superseded/`` (:func:`set_aside`), never deleted.

    Raises:
        TrackingUnavailable: ``spec.tracking_uri`` is an MLflow server that does not answer (checked
            before any work).
    """
    import torch

    check_tracking_uri(spec.tracking_uri)
    L.seed_everything(spec.seed, workers=True)
    params_hash = spec.params_hash()
    config_path = spec.model_dir / "config.json"
    previous = json.loads(config_path.read_text()) if config_path.is_file() else {}
    model, datamodule = build(spec)
    signature = state_signature(model)
    resume = (spec.model_dir / "last.ckpt").is_file() and previous.get("params_hash") == params_hash
    if resume and previous.get("state_signature") != signature:  # same params, code with other weights
        print(f"warning: {spec.model_dir / 'last.ckpt'} holds other parameters than this code builds "
              "(changed architecture); training from scratch", file=sys.stderr)
        resume = False
    # every rank takes the same decision; only rank zero (from the launcher's env) moves files
    if not resume and rank_zero_only.rank == 0 and spec.model_dir.is_dir() and any(spec.model_dir.iterdir()):
        moved = set_aside(spec.model_dir, previous.get("params_hash", "unknown"))
        print(f"note: {spec.model_dir} was trained with other params; moved to {moved} (delete it yourself "
              "when it is no longer needed)", file=sys.stderr)
    spec.model_dir.mkdir(parents=True, exist_ok=True)

    # only global rank zero talks to MLflow: an MlflowClient on a new sqlite store migrates its tables,
    # and processes started together (torchrun, srun) would race on that
    logger = mlflow_logger(spec, run_id=previous.get("mlflow_run_id") if resume else None) \
        if rank_zero_only.rank == 0 else False
    config = {"method": spec.method, "dataset": spec.dataset, "params_hash": params_hash, "state_signature": signature,
              "tracking_uri": spec.tracking_uri, "resolved": model.resolved_config(), "data": spec.data,
              "trainer": spec.trainer, "seed": spec.seed}
    trainer_args = dict(spec.trainer)
    torch.set_float32_matmul_precision(trainer_args.pop("float32_matmul_precision"))
    every_n_steps = trainer_args.pop("checkpoint_every_n_steps", None)
    checkpoints = [ModelCheckpoint(dirpath=spec.model_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                   save_last=True, save_top_k=1, every_n_epochs=1)]  # newest epoch + last.ckpt
    if every_n_steps:  # preemptible jobs: last.ckpt also every n optimisation steps
        checkpoints.append(ModelCheckpoint(dirpath=spec.model_dir, filename="step{step:09d}", auto_insert_metric_name=False,
                                           save_last=True, save_top_k=1, every_n_train_steps=every_n_steps))
    trainer_args["strategy"] = strategy_for(model, trainer_args)
    has_val = bool(datamodule.urls("val"))
    if not has_val:
        print(f"warning: no val shards in {spec.shard_dir}: training without validation", file=sys.stderr)
        trainer_args["limit_val_batches"] = 0
    from datamodules.talking_face import DataEpochCallback

    callbacks = [MLflowRunSync(config, config_path), *checkpoints, DataEpochCallback(), *weight_averaging(model)]
    trainer = L.Trainer(logger=logger, callbacks=callbacks,
                        default_root_dir=spec.model_dir, enable_progress_bar=False, enable_model_summary=False,
                        **trainer_args)
    hpc = sorted(spec.model_dir.glob("hpc_ckpt_*.ckpt"))
    ckpt_path = None if not resume else "hpc" if hpc and SLURMEnvironment.detect() else "last"
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        config["global_step"] = trainer.global_step
        config_path.write_text(json.dumps(config, indent=1, sort_keys=True))
        _log_loss_plot(logger, config["mlflow_run_id"], spec)
        for path in spec.model_dir.glob("hpc_ckpt_*.ckpt"):  # ours (a preemption's); last.ckpt is newer now
            path.unlink()
    return config


def weight_averaging(model) -> list[Callback]:
    """``[WeightAveraging]`` keeping an exponential moving average of every weight (decay
    ``model.ema_decay``, torch's ``get_ema_multi_avg_fn``) when the module asks for one, else ``[]``.
    Lightning swaps the averaged weights in for validation and the checkpoints."""
    decay = getattr(model, "ema_decay", None)
    if decay is None:
        return []
    from lightning.pytorch.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    return [WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay))]


def set_aside(model_dir: Path, params_hash: str) -> Path:
    """Move ``models/<method>/<dataset>`` to ``models/.superseded/<method>/<dataset>/<hash>-<UTC time>``
    (config.json with it), so a changed-params run never deletes a trained model; returns the new path."""
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = model_dir.parent.parent / ".superseded" / model_dir.parent.name / model_dir.name / f"{params_hash}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(model_dir), str(target))
    return target


def strategy_for(model, trainer_args: dict):
    """The Trainer's ``strategy``: a ``ddp`` request (or ``auto`` on several devices / nodes) becomes a
    ``DDPStrategy`` with what the module states DDP needs: ``ddp_find_unused_parameters = True`` on
    modules where a backward reaches only part of the parameters (GAN discriminator / generator
    steps under manual optimisation, losses that start late). Other strategies pass unchanged."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer_args.get("strategy", "auto")
    devices, nodes = trainer_args.get("devices", 1), trainer_args.get("num_nodes", 1)
    several = nodes > 1 or devices == -1 or (isinstance(devices, int) and devices > 1) \
        or (isinstance(devices, (list, str)) and str(devices) not in ("1", "auto", "[0]"))
    if strategy == "ddp" or (strategy == "auto" and several):
        return DDPStrategy(find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)))
    return strategy


def _log_loss_plot(logger, run_id: str, spec: RunSpec) -> None:
    """Per-epoch loss curves from the MLflow run, saved as an artifact (``plots/losses.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = logger.experiment
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("train/total", "val/loss"):
        history = client.get_metric_history(run_id, name)
        if history:
            ax.plot([m.step for m in history], [m.value for m in history], marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{spec.method} on {spec.dataset}")
    ax.legend()
    fig.tight_layout()
    client.log_figure(run_id, fig, "plots/losses.png")
    plt.close(fig)


def run_arg_parser(doc: str) -> argparse.ArgumentParser:
    """The command line shared by the train and evaluate stages (``--method --dataset --params --set``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a train.* param, e.g. --set trainer.devices=2 --set trainer.strategy=ddp")
    return parser


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """Validated ``RunSpec`` from parsed arguments; raises ``ParamsError`` naming the bad key."""
    return run_spec(apply_overrides(load_params(args.params), args.overrides), args.method, args.dataset)


def main(argv: list[str] | None = None) -> int:
    args = run_arg_parser(__doc__).parse_args(argv)
    try:
        spec = spec_from_args(args)
    except ParamsError as err:
        print(error_line("train", args.params, err), file=sys.stderr)
        return 2
    try:
        config = train(spec)
    except TrackingUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"trained {spec.method} on {spec.dataset}: {spec.model_dir}, MLflow run {config['mlflow_run_id']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Each paper's own configuration, by name: ``presets/<name>.yaml`` on top of params.yaml.

    python -m pipeline.preset list
    python -m pipeline.preset show eapc [--row "Table 2/w/o audio i-1"]   # the dvc -S overrides
    python -m pipeline.preset check [eapc ...]        # full-size networks, parameter counts
    python -m pipeline.preset run eapc [--row ...] [--queue] [--max-steps N] [--devices 4] [--dataset crema_d]
    python -m pipeline.preset queue eapc [--table "Table 2"] [--max-steps N]
    python -m pipeline.preset cost [eapc ...]         # FLOPs per step -> H100 GPU-hours (markdown)
    python -m pipeline.preset collect eapc_authors [--dataset crema_d] [--exp NAME]   # -> presets/results

A preset is a partial params.yaml (same keys) plus one ``preset:`` section that is not applied:

* ``method``, ``paper`` (file in ../shared/papers), ``citation``; ``include``: presets applied first
  (EAPC stage 2 on stage 1's); ``replace``: subtrees removed before the preset's values are set
  (a network variant whose keys differ from params.yaml's);
* ``targets``: the DVC stages a run reproduces (``{dataset}`` filled in), e.g. ``evaluate@eapc-{dataset}``;
* ``parameters``: trainable parameters of each method it trains, built at the preset's size
  (``check`` fails when a count differs: a changed network or preset is seen);
* ``schedule``: the paper's training length for ``cost`` (``steps``, or ``epochs`` x ``windows`` /
  the global batch, per method);
* ``tables``: ``{table: {dataset: <the dataset the paper scored it on>, rows: {row: {dotted.key:
  value}}}}``, each row of the paper's tables as overrides on top of the preset (the full model: ``{}``).

Every value carries a comment naming its source: the paper (section / table), the implementation
it builds on (marked as such), or "ours". ``collect`` copies the evaluation of a finished
experiment (its git commit under ``refs/exps``) to ``presets/results/<preset>/<method>/<dataset>/``,
with a ``source.json`` naming the experiment; the report shows those rows beside the default
pipeline's, labelled with the preset (e.g. EAPC under its authors' protocol). ``run`` and ``queue`` call ``dvc exp run`` with one
``-S key=value`` per leaf (``+key=value`` for keys params.yaml lacks), so the user's params.yaml
(dataset roots, devices) stays as it is and the experiment records the preset's values.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.params import ParamsError, has_dotted, load_params, set_dotted

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
RESULTS_DIR = PRESET_DIR / "results"
H100_BF16_FLOPS = 989e12
"""Dense bf16 tensor-core peak of an H100 SXM (NVIDIA's datasheet, without sparsity)."""
UTILISATION = 0.3
"""Assumed model-FLOPs utilisation for the cost table (convolutional / recurrent nets at these
sizes rarely reach the 40-50 % of large transformers)."""


@dataclass
class Preset:
    """One ``presets/<name>.yaml``: ``body`` (the partial params) and ``meta`` (its ``preset:`` section)."""

    name: str
    body: dict
    meta: dict

    @classmethod
    def load(cls, name: str, directory: Path = PRESET_DIR) -> "Preset":
        """Raises: ParamsError: no such preset, or a file without a ``preset.method``."""
        path = directory / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
            raise ParamsError(f"no preset {name!r} (known: {known})")
        body = yaml.safe_load(path.read_text()) or {}
        meta = body.pop("preset", None)
        if not isinstance(meta, dict) or "method" not in meta:
            raise ParamsError(f"{path}: needs a preset: section with at least `method`")
        for included in meta.get("include", []):  # e.g. stage 1's preset under stage 2's
            body = apply(Preset.load(included, directory).body, leaves(body))
        return cls(name, body, meta)

    @property
    def trained(self) -> dict[str, int]:
        """Method -> the trainable parameter count written in the preset."""
        return dict(self.meta.get("parameters", {}))

    def rows(self, table: str | None = None) -> dict[str, dict]:
        """``"<table>/<row>" -> overrides`` of every row (of ``table`` only, when given).

        Raises: ParamsError: ``table`` is not in the preset.
        """
        tables = self.meta.get("tables", {})
        if table is not None and table not in tables:
            raise ParamsError(f"preset {self.name}: no table {table!r} (has: {', '.join(tables)})")
        return {f"{t}/{row}": dict(overrides or {}) for t, spec in tables.items() if table in (None, t)
                for row, overrides in spec.get("rows", {}).items()}

    def dataset_of(self, row: str | None) -> str | None:
        """The dataset the paper scored a row's table on (``tables.<t>.dataset``), if stated."""
        if row is None:
            return None
        return self.meta.get("tables", {}).get(row.split("/", 1)[0], {}).get("dataset")

    def targets(self, dataset: str) -> list[str]:
        return [t.replace("{dataset}", dataset) for t in self.meta.get("targets", [])]


def names(directory: Path = PRESET_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping is a leaf)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _Delete:
    """An override that removes a key (``dvc exp run -S ~key``): the subtrees in ``preset.replace``."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def apply(params: dict, overrides: dict[str, object]) -> dict:
    """A copy of ``params`` with the dotted ``overrides`` set, in order (what ``dvc exp run -S``
    writes); a :data:`DELETE` value removes the key."""
    merged = copy.deepcopy(params)
    for key, value in overrides.items():
        if value is DELETE:
            *parents, last = key.split(".")
            node = merged
            for part in parents:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(last, None)
        else:
            set_dotted(merged, key, value)
    return merged


def overrides_for(preset: Preset, row: str | None = None, max_steps: int | None = None,
                  extra: dict[str, object] | None = None, devices: int | None = None) -> dict[str, object]:
    """The dotted overrides of a run: the preset's leaves, then the row's, then a step cap on every
    method the preset trains (``train.methods.<m>.trainer.max_steps``), then ``devices`` (GPUs per
    node: ``train.trainer.devices``, and every batch size the preset states divided by it, so the
    global batch, the steps per epoch and the learning rate stay the paper's), then ``extra``.

    Raises: ParamsError: unknown ``row``, or a stated batch size that ``devices`` does not divide.
    """
    overrides: dict[str, object] = {key: DELETE for key in preset.meta.get("replace", [])}
    overrides.update(leaves(preset.body))
    if row is not None:
        rows = preset.rows()
        if row not in rows:
            raise ParamsError(f"preset {preset.name}: no row {row!r} (rows: {', '.join(rows)})")
        overrides.update(rows[row])
    if max_steps is not None:
        overrides.update({f"train.methods.{m}.trainer.max_steps": int(max_steps) for m in preset.trained})
    if devices is not None:
        overrides["train.trainer.devices"] = int(devices)
        for key, value in list(overrides.items()):
            if key.endswith("batch_size") and isinstance(value, int):
                if value % devices:
                    raise ParamsError(f"{key}: the paper's batch {value} does not split over {devices} devices")
                overrides[key] = value // devices
    overrides.update(extra or {})
    return overrides


def hydra_value(value) -> str:
    """A value in the override grammar ``dvc exp run -S`` parses (Hydra's): strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ParamsError(f"cannot write {value!r} as a dvc -S value")


def set_params_args(params: dict, overrides: dict[str, object]) -> list[str]:
    """``["-S", "k=v", ...]`` against ``params``, in order: ``+k=v`` where the key does not exist
    (DVC appends only with ``+``), ``~k`` for :data:`DELETE`."""
    args: list[str] = []
    current = copy.deepcopy(params)
    for key, value in overrides.items():
        if value is DELETE:
            if has_dotted(current, key):
                args += ["-S", f"~{key}"]
        else:
            args += ["-S", f"{'' if has_dotted(current, key) else '+'}{key}={hydra_value(value)}"]
        current = apply(current, {key: value})
    return args


def experiment_name(preset: Preset, row: str | None = None) -> str:
    """``eapc`` or ``eapc-table-2-w-o-audio-i-1`` (DVC experiment names: letters, digits, ``-``)."""
    name = preset.name if row is None else f"{preset.name}-{row}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def dvc_command(params: dict, preset: Preset, dataset: str, row: str | None = None, queue: bool = False,
                max_steps: int | None = None, extra: dict[str, object] | None = None,
                devices: int | None = None) -> list[str]:
    """The ``dvc exp run`` command line of one preset (row) experiment on ``dataset`` (added to
    ``train.datasets`` when params.yaml does not train on it, so its stages exist)."""
    overrides = overrides_for(preset, row, max_steps, extra, devices)
    datasets = list(params.get("train", {}).get("datasets", []))
    if dataset not in datasets:
        overrides["train.datasets"] = datasets + [dataset]
    return ["dvc", "exp", "run", "-n", experiment_name(preset, row), *(["--queue"] if queue else []),
            *set_params_args(params, overrides), *preset.targets(dataset)]


# ---------------------------------------------------------------------------------------- collect
def experiment_commit(name: str, repo: Path = Path(".")) -> str:
    """The commit of the newest DVC experiment called ``name`` (``refs/exps/.../<name>``).

    Raises: ParamsError: no experiment of that name (the message says how to make one).
    """
    refs = subprocess.run(["git", "for-each-ref", "--sort=-committerdate", "--format=%(objectname) %(refname)",
                           "refs/exps/"], cwd=repo, capture_output=True, text=True, check=True).stdout.split("\n")
    for line in refs:
        commit, _, ref = line.partition(" ")
        if ref.rsplit("/", 1)[-1] == name:
            return commit
    raise ParamsError(f"no dvc experiment named {name!r} in {repo.resolve()} (`python -m pipeline.preset run ...` "
                      "makes one; `dvc exp list --all-commits` lists them)")


def collect(preset: Preset, dataset: str, exp: str | None = None, repo: Path = Path("."),
            out_dir: Path = RESULTS_DIR) -> list[Path]:
    """Copy ``eval/<method>/<dataset>/metrics.json`` of each target of experiment ``exp`` (default:
    the preset's run name) to ``out_dir/<preset>/<method>/<dataset>/``, beside a ``source.json``
    (preset, citation, experiment, commit); a second collect of the same preset, method and
    dataset replaces the first (the folder holds only what ``collect`` writes).

    Returns: the metrics files written.
    Raises: ParamsError: no such experiment, or it holds no evaluation of a target.
    """
    name = exp or experiment_name(preset)
    commit = experiment_commit(name, repo)
    written = []
    for target in preset.targets(dataset):
        method = target.split("@", 1)[1].rsplit("-", 1)[0]  # evaluate@<method>-<dataset>
        path = f"eval/{method}/{dataset}/metrics.json"
        shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, text=True)
        if shown.returncode:
            raise ParamsError(f"experiment {name!r} ({commit[:7]}) has no {path}: did it run {target}?")
        dest = out_dir / preset.name / method / dataset
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "metrics.json").write_text(shown.stdout)
        source = {"preset": preset.name, "citation": preset.meta.get("citation", ""), "experiment": name,
                  "commit": commit}
        (dest / "source.json").write_text(json.dumps(source, indent=1) + "\n")
        written.append(dest / "metrics.json")
    return written


# ------------------------------------------------------------------------------------------ check
def without_input_files(params: dict, method: str) -> dict:
    """``params`` with every file ``method`` would load left out: its ``optim.*_ckpt`` and
    ``intensity_block`` null, emotalker's autoencoder a placeholder path (never read when the
    network is built from ``train.methods.autoencoder.net``, :func:`build_method`)."""
    optim = params["train"]["methods"][method].get("optim", {})
    files = {f"train.methods.{method}.optim.{k}": None for k in optim if k.endswith("_ckpt")}
    if "intensity_block" in optim:
        files[f"train.methods.{method}.optim.intensity_block"] = "untrained"
    if method == "emotalker":
        files.update({"train.methods.emotalker.optim.autoencoder_ckpt": "models/autoencoder/unused.ckpt",
                      "train.methods.emotalker.optim.autoencoder_path": None})
    return apply(params, files)


def build_method(params: dict, method: str):
    """The LightningModule of ``method`` at the sizes in ``params`` with no input file
    (:func:`without_input_files`; emotalker's autoencoder built from ``train.methods.autoencoder.net``,
    EAPC stage 2's stage 1 from ``train.methods.eapc``), so it counts what it trains."""
    from lightning_modules import METHODS

    params = without_input_files(params, method)
    section = dict(params["train"]["methods"][method])
    from pipeline.train import RUN_SETTINGS

    for key in RUN_SETTINGS:
        section.pop(key, None)
    if method == "emotalker":
        return METHODS[method](**section, autoencoder_net=params["train"]["methods"]["autoencoder"]["net"])
    if method == "eapc_vid2vid":
        stage1 = {k: params["train"]["methods"]["eapc"].get(k) for k in ("net", "optim")}
        return METHODS[method](**section, stage1=stage1)
    return METHODS[method](**section)


def trainable_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check(preset: Preset, params: dict) -> list[str]:
    """Build every network the preset trains at its size and validate its dataset settings and
    every table row; returns the problems (empty: all good), printing ``name method: counted
    (written)`` per method."""
    from pipeline.manifest import dataset_config

    merged = apply(params, overrides_for(preset))
    problems = []
    for name in merged["manifest"]["datasets"]:
        try:
            dataset_config(merged, name)
        except ParamsError as err:
            problems.append(f"{preset.name}: {err}")
    for method, written in preset.trained.items():
        try:
            counted = trainable_parameters(build_method(merged, method))
        except Exception as err:  # noqa: BLE001 - reported per preset, the check goes on
            problems.append(f"{preset.name}: {method} does not build: {type(err).__name__}: {err}")
            continue
        print(f"{preset.name:14s} {method:16s} {counted:>13,d} parameters (preset says {written:,d})")
        if counted != written:
            problems.append(f"{preset.name}: {method} has {counted:,d} trainable parameters, the preset says {written:,d}")
    for row, overrides in preset.rows().items():  # every table row is a valid override set
        unknown = [k for k in overrides if not has_dotted(merged, k)]
        if unknown:
            problems.append(f"{preset.name} {row}: keys neither in params.yaml nor in the preset: {unknown}")
            continue
        row_params = apply(merged, overrides)
        for method in preset.trained:
            try:
                _validate(row_params, method)
            except ParamsError as err:
                problems.append(f"{preset.name} {row}: {err}")
    return problems


def _validate(params: dict, method: str) -> None:
    """``run_spec``'s checks of one method's params, before any data or checkpoint exists."""
    from pipeline.train import run_spec

    dataset = next(iter(params["manifest"]["datasets"]))
    run_spec(without_input_files(params, method), method, dataset, require_shards=False)


# ------------------------------------------------------------------------------------------- cost
def step_flops(preset: Preset, params: dict, method: str, batch_size: int) -> float:
    """FLOPs of one optimisation step of ``method`` at ``batch_size`` windows: every forward and
    backward the module's ``training_step`` runs (losses, discriminators, optimiser updates), summed
    by :func:`_flop_counter` over a one-step ``Trainer.fit`` on CPU with a synthetic batch of the
    preset's window length. Counted at b and 2b windows (b = 2, or a sub-batch size the method
    states, e.g. sinha's ``texture_batch_size``) and extrapolated linearly, so a part that does not
    grow with the batch (sinha's G_T on its own 4 windows) stays fixed. The module sees
    ``global_step`` = :data:`STEADY_STEP`: a step after its warm-ups, whose losses are all on (step 0
    of eapc_authors' trains its emotion branch alone). Not counted: frozen loss networks a run loads
    from checkpoints (:func:`without_input_files`: cvae's and two_stage's SyncNet expert and emotion
    classifier, emotalker's emotion classifier), so those rows are lower bounds."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    optim = apply(params, overrides_for(preset))["train"]["methods"][method].get("optim", {})
    low = max([2] + [int(v) for k, v in optim.items() if k.endswith("batch_size") and v])
    # each count in a fresh process: full-size networks and optimiser states never pile up in one
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        counts = {b: pool.submit(_fit_flops, preset, params, method, b).result() for b in (low, 2 * low)}
    per_window = (counts[2 * low] - counts[low]) / low
    return counts[low] + per_window * (batch_size - low)


STEADY_STEP = 10**9
"""The ``global_step`` a module sees in :func:`step_flops`'s one-step fit: past every warm-up phase."""


def _flop_counter():
    """A dispatch mode that sums torch's FLOP formulas (``torch.utils.flop_counter.flop_registry``,
    plus :data:`RNN_FLOPS`) over every op it sees. Unlike ``FlopCounterMode`` it installs no module
    hooks, which break ``torch.autograd.grad`` (two_stage's gradient penalty)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry, shape_wrapper

    registry = {**flop_registry, **{op: shape_wrapper(f) for op, f in RNN_FLOPS.items()}}

    class FlopCount(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

        def get_total_flops(self) -> int:
            return self.total

    return FlopCount()


def _fit_flops(preset: Preset, params: dict, method: str, batch_size: int) -> float:
    import lightning as L
    import torch

    merged = apply(params, overrides_for(preset))
    module = build_method(merged, method)
    # the module reads a step past its warm-ups (cvae's aux_start_step, eapc's emotion_pretrain_steps,
    # two_stage's emotion ramp): the count is of the steps that make up a schedule, not of step 0
    module.__class__ = type(type(module).__name__, (type(module),), {"global_step": property(lambda _: STEADY_STEP)})
    from pipeline.train import method_data

    batch = synthetic_batch(module.data_keys, int(method_data(merged, method)["window"]), batch_size)
    counter = _flop_counter()

    class Counted(Exception):
        pass

    class CountStep(L.Callback):  # the optimisation step only, then stop (no on_train_end hooks)
        def on_train_batch_start(self, *args) -> None:
            counter.__enter__()

        def on_train_batch_end(self, *args) -> None:
            counter.__exit__(None, None, None)
            raise Counted

    class OneBatch(L.LightningDataModule):
        """The synthetic batch, and the training-clip readers of ``TalkingFaceDataModule`` that fit-start
        hooks call (sinha's backdrop, sinha's and cvae's speaker-neutral frames): one clip, its window."""

        def train_dataloader(self):
            return torch.utils.data.DataLoader([batch], batch_size=None)

        def iter_training_clips(self, keys, max_clips=256, clip_keys=None):
            meta = {"speaker": "0", "emotion": "neutral", "lmk_crop_size": 256}
            yield {"key": "synthetic", "meta": meta, **{k: batch[k][0].numpy() for k in keys}}

        def training_clips(self, keys, max_clips=256):
            return list(self.iter_training_clips(keys, max_clips))

    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[CountStep()])
    try:
        trainer.fit(module, datamodule=OneBatch())
    except Counted:
        pass
    return float(counter.get_total_flops())


def _lstm_layer_flops(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    """One LSTM layer's matmuls, ``2 x T x B x 4H x (I + H)`` (CPU ``aten.mkldnn_rnn_layer``, which
    torch's flop counter does not know: without this EAPC's LSTMs would count as free)."""
    steps = input_shape[0] * input_shape[1]  # T x B (either order)
    gates, inputs = w_ih
    return 2 * steps * gates * (inputs + w_hh[1])


def _lstm_layer_backward_flops(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return 2 * _lstm_layer_flops(input_shape, w_ih, w_hh)  # gradients of the inputs and the weights


def _rnn_flops() -> dict:
    import torch

    return {torch.ops.aten.mkldnn_rnn_layer: _lstm_layer_flops,
            torch.ops.aten.mkldnn_rnn_layer_backward: _lstm_layer_backward_flops}


RNN_FLOPS = _rnn_flops()


def synthetic_batch(keys: tuple[str, ...], window: int, batch_size: int) -> dict:
    """A batch with every key a module loads (shapes of ``collate_windows``): a neutral face's
    landmarks (so geometry stays well conditioned) and random frames / features."""
    import json

    import torch

    from lightning_modules.sinha import NEUTRAL_FACE

    points = torch.tensor(json.loads(NEUTRAL_FACE.read_text())["points"], dtype=torch.float32)  # canonical
    lmk = (points - points.mean(0)) * 90 + 128  # about a face in a 256 px crop
    b = batch_size
    batch = {"key": [f"synthetic@{i}" for i in range(b)], "speaker": ["0"] * b,
             "emotion": torch.arange(b) % 6, "intensity": torch.arange(b) % 3 + 1,
             "ref_lmk": lmk.expand(b, 68, 2).clone(), "lmk": lmk.expand(b, window, 68, 2).clone()}
    shapes = {"mfcc": (window, 28, 12), "mfcc_authors": (window, 28, 12), "llf": (window, 25),
              "llf_authors": (window, 25), "phones": (window, 40), "mel": (int(80 / 25 * window), 80),
              "lmk478": (window, 478, 3)}
    batch["lmk_dlib68"] = batch["lmk"].clone()
    for key in keys:
        if key.startswith("frames_"):
            side = int(key.removeprefix("frames_"))
            batch[key] = torch.randint(0, 256, (b, window, side, side, 3), dtype=torch.uint8)
        elif key in shapes:
            batch[key] = torch.randn(b, *shapes[key]).clamp(-4, 4)
    return batch


def cost_rows(preset: Preset, params: dict) -> list[dict]:
    """Per trained method: FLOPs per step at the global batch, steps of the paper's schedule, and
    H100 GPU-hours at ``UTILISATION``."""
    from pipeline.train import method_data

    merged = apply(params, overrides_for(preset))
    rows = []
    for method in preset.trained:
        schedule = preset.meta.get("schedule", {}).get(method, {})
        batch = int(method_data(merged, method)["batch_size"])
        steps = schedule.get("steps")
        if steps is None and "epochs" in schedule:
            steps = math.ceil(schedule["epochs"] * math.ceil(schedule["windows"] / batch))
        flops = step_flops(preset, params, method, batch)
        hours = None if steps is None else steps * flops / (H100_BF16_FLOPS * UTILISATION) / 3600
        rows.append({"preset": preset.name, "method": method, "batch": batch, "tflop_per_step": flops / 1e12,
                     "steps": steps, "h100_hours": hours, "source": schedule.get("source", "")})
    return rows


def cost_table(rows: list[dict]) -> str:
    lines = [f"| preset | method | global batch | TFLOP / step | steps | H100 GPU-hours ({UTILISATION:.0%} of bf16 peak) | schedule |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        steps = "—" if r["steps"] is None else f"{r['steps']:,d}"
        hours = "—" if r["h100_hours"] is None else f"{r['h100_hours']:,.1f}"
        lines.append(f"| {r['preset']} | {r['method']} | {r['batch']} | {r['tflop_per_step']:.3g} | {steps} | {hours} | {r['source']} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    for name in ("show", "run", "queue"):
        p = sub.add_parser(name)
        p.add_argument("preset")
        p.add_argument("--dataset", default=None, help="default: the first of train.datasets")
        p.add_argument("--max-steps", type=int, default=None, help="cap every trained method (a smoke run)")
        p.add_argument("--set", dest="extra", action="append", default=[], help="one more dotted key=value")
        p.add_argument("--devices", type=int, default=None,
                       help="GPUs per node: the paper's batch sizes are split over them (same global batch)")
        if name == "queue":
            p.add_argument("--table", default=None, help="one table (default: every table of the preset)")
        else:
            p.add_argument("--row", default=None, help='"<table>/<row>" of the preset\'s tables')
        if name == "run":
            p.add_argument("--queue", action="store_true", help="queue instead of running in the workspace")
    for name in ("check", "cost"):
        sub.add_parser(name).add_argument("presets", nargs="*")
    p = sub.add_parser("collect", help="copy a finished experiment's evaluation to presets/results/ for the report")
    p.add_argument("preset")
    p.add_argument("--dataset", default=None, help="default: the first of train.datasets")
    p.add_argument("--exp", default=None, help="experiment name (default: the preset's run name)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.command == "list":
            for name in names():
                p = Preset.load(name)
                print(f"{name:14s} {p.meta.get('citation', '')}  ({len(p.rows())} table rows)")
            return 0
        if args.command in ("check", "cost"):
            presets = [Preset.load(n) for n in (args.presets or names())]
            if args.command == "cost":
                print(cost_table([row for p in presets for row in cost_rows(p, params)]))
                return 0
            problems = [problem for p in presets for problem in check(p, params)]
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1 if problems else 0
        preset = Preset.load(args.preset)
        dataset = args.dataset or params["train"]["datasets"][0]
        if args.command == "collect":
            for path in collect(preset, dataset, args.exp):
                print(f"collect: {path}")
            return 0
        extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.extra)}
        rows = [args.row] if args.command != "queue" else list(preset.rows(args.table))
        commands = [dvc_command(params, preset, args.dataset or preset.dataset_of(row) or dataset, row,
                                args.command == "queue" or getattr(args, "queue", False), args.max_steps, extra,
                                args.devices)
                    for row in rows]
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for command in commands:
        if args.command == "show":
            print(shlex.join(command))
            continue
        code = subprocess.call(command)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

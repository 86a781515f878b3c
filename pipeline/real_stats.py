"""DVC stage ``real_stats@<dataset>``: what the video protocol measures on the REAL test frames,
computed once per test split and read by every method's ``evaluate_video`` / ``evaluate_baseline``.

    python -m pipeline.real_stats --dataset crema_d [--params params.yaml]

Writes ``eval/_real/<dataset>/real_stats.pt`` (torch.save of a dict):

* ``key``: what the numbers depend on (shard fingerprint, ``evaluate.crop_size`` (a method scored at
  another crop side measures the real frames in its own run), ``evaluate.protocol.max_frames``, the
  FID Inception's sha256, the landmarker); an evaluation whose key differs recomputes everything and
  says so;
* ``fid``: torchmetrics ``FrechetInceptionDistance`` real-side states (``real_features_sum`` (2048,)
  float64, ``real_features_cov_sum`` (2048, 2048) float64, ``real_features_num_samples`` int64) over
  frames 1..T-1 of every test clip (T bounded by ``evaluate.protocol.max_frames``; ``scored``, the shared protocol) and over all frames (``all``,
  the dubbing protocol); ``None`` when the Inception weights are missing;
* ``landmarks``: clip id -> the re-detected landmarks of its real frames 1..T-1, (T-1, 68, 2)
  float32 in pixels of the shards' ``lmk_size`` crop, or ``None`` when the landmarker lost the face.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.evaluate_settings import check_evaluate_section
from pipeline.params import ParamsError, error_line, get, load_params

FID_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def real_stats_path(dataset: str) -> Path:
    return Path("eval") / "_real" / dataset / "real_stats.pt"


def stats_key(params: dict, dataset: str, crop_size: int | None = None) -> dict:
    """What cached real statistics must match to be reused (see the module docstring); ``crop_size``:
    the crop being scored (default ``evaluate.crop_size``, the crop this stage computes at)."""
    from datamodules.talking_face import shard_fingerprint
    from pipeline.protocol.extras import RedetectedLandmarks

    crop_size = crop_size or get(params, "evaluate.crop_size", int, default=128)
    return {"shards": shard_fingerprint(Path("shards") / dataset), "crop_size": crop_size,
            "max_frames": get(params, "evaluate.protocol.max_frames", int, default=None),
            "fid_weights": get(params, "evaluate.fid_weights", str, default=None),
            "fid_sha256": get(params, "evaluate.fid_sha256", str, default=None),
            "landmarker": RedetectedLandmarks.evaluator, "max_missing": RedetectedLandmarks.MAX_MISSING}


def load_real_stats(params: dict, dataset: str, crop_size: int | None = None) -> tuple[dict | None, str]:
    """The cached statistics of ``dataset``'s test split at ``crop_size`` (default
    ``evaluate.crop_size``), or ``None`` and why not (missing file, or computed for other shards /
    crop / Inception: a method scored at its own crop side then measures the real frames itself)."""
    path = real_stats_path(dataset)
    if not path.is_file():
        return None, f"{path} not found: real-frame statistics computed in this run (`dvc repro real_stats@{dataset}`)"
    stats = torch.load(path, map_location="cpu", weights_only=False)
    if stats.get("key") != stats_key(params, dataset, crop_size):
        return None, f"{path} was computed for other shards, crop, frame bound or Inception weights: recomputed in this run"
    return stats, f"real-frame FID statistics and landmarks read from {path}"


def fid_states(metric) -> dict[str, torch.Tensor]:
    """The real-side states of a torchmetrics FID (CPU copies)."""
    return {name: getattr(metric, name).detach().cpu().clone() for name in FID_STATES}


def add_fid_states(metric, states: dict[str, torch.Tensor]) -> None:
    """Add cached real-side ``states`` to ``metric`` (done on one rank only: the ranks' states are summed)."""
    for name in FID_STATES:
        current = getattr(metric, name)
        setattr(metric, name, current + states[name].to(device=current.device, dtype=current.dtype))


@torch.no_grad()
def compute_real_stats(params: dict, dataset: str) -> dict:
    """One pass over the test split's real frames (module docstring); ``FileNotFoundError`` when
    the split has no clip."""
    from pipeline.eval_ranks import resolve_device
    from pipeline.protocol.clips import split_clips
    from pipeline.protocol.evaluators import fid_from_params
    from pipeline.protocol.extras import RedetectedLandmarks

    device = resolve_device(get(params, "evaluate.device", str, default="auto"))
    frames_key = f"frames_{get(params, 'evaluate.crop_size', int, default=128)}"
    try:
        # every frame once through Inception: "scored" (frames 1..T-1) = "all" minus each clip's frame 0
        fid = {"all": fid_from_params(params, device), "first": fid_from_params(params, device)}
    except (FileNotFoundError, ImportError, ValueError):
        fid = None  # evaluate_video records why FID is missing
    landmarker, landmarks = RedetectedLandmarks(), {}
    from pipeline.extract.errors import ClipFailure

    max_frames = get(params, "evaluate.protocol.max_frames", int, default=None)
    for clip in split_clips(Path("shards") / dataset, frames_key, max_frames=max_frames):
        real = torch.from_numpy(clip[frames_key])
        if fid is not None:
            fid["all"].update(real.permute(0, 3, 1, 2), real=True)
            fid["first"].update(real[:1].permute(0, 3, 1, 2), real=True)
        try:
            landmarks[clip["key"]] = landmarker.detect(real[1:], int(clip["meta"]["lmk_crop_size"]))
        except ClipFailure:
            landmarks[clip["key"]] = None
    if not landmarks:
        raise FileNotFoundError(f"no test clips in shards/{dataset}")
    if fid is not None:
        every, first = fid_states(fid["all"]), fid_states(fid["first"])
        fid = {"all": every, "scored": {name: every[name] - first[name] for name in FID_STATES}}
    return {"key": stats_key(params, dataset), "landmarks": landmarks, "fid": fid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        check_evaluate_section(params)
        stats = compute_real_stats(params, args.dataset)
    except ParamsError as err:
        print(error_line("real_stats", args.params, err), file=sys.stderr)
        return 2
    path = real_stats_path(args.dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(stats, tmp)
    tmp.replace(path)
    print(f"real-frame statistics of {len(stats['landmarks'])} test clips: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

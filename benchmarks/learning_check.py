"""Does a generator learn? Train it for a fixed CPU time on the sample's training clips, then score
it on those same clips beside ``copy_reference`` and render its emotion grid.

    python benchmarks/learning_check.py --method cvae --dataset crema_d --minutes 14 \
        --set methods.cvae.optim.aux_start_step=1000 --set methods.cvae.optim.delta=0.01

Needs ``dvc repro`` to have built ``shards/<dataset>`` and the loss / evaluator networks the method
names (``models/syncnet*``, ``models/emotion_classifier*``). The run uses params.yaml's
``train.methods.<method>`` and ``train.data`` (plus any ``--set``), with ``max_time`` instead of ``max_epochs``,
and writes into ``--out`` (default ``benchmarks/results/learning-<method>-<dataset>``; a model already
there is resumed, its steps and ``max_time`` timer going on, and recorded as ``resumed_from_step``): the model,
an MLflow store, ``emotion_grid.png`` and ``learning_check.json``. It never touches ``models/``.

Printed per method, on every training clip (reference = frame 0, the clip's own audio and emotion,
frames 1..T-1 scored as in ``evaluate_video``):

* PSNR (dB) / SSIM: torchmetrics, per frame, mean over frames;
* LSE-D / LSE-C: the ``syncnet_eval`` expert (not the ``syncnet`` the generator learns from),
  syncnet_python's definition (:mod:`eval_metrics.sync`);
* the emotion grid's row differences: mean absolute difference (uint8 levels) between the frames
  rendered with each pair of CREMA-D's six emotions, same reference and audio.

Methods with landmarks of their own (``sinha``; ``eapc_vid2vid``: stage 1's) also get, on the same clips: M-LD / M-LVD of their
landmarks (X = frame 0's) beside "frame 0's landmarks held still", and the PSNR of their texture
network rendering the ground-truth landmarks (``render``) from frame 0, and from the source it is
trained from (:func:`training_sources`: sinha's speaker neutral frame) beside copying that source
(for frame 0: ``copy_reference``).

Methods trained from a reference that is not a frame of the clip (:func:`training_sources`:
``cvae`` with ``optim.reference: speaker_neutral``, ``sinha``'s texture source) are also scored from
that reference (``<method> from source`` beside ``copy_source``); their ``psnr`` check and emotion
rows use it (a model trained to add the emotion to a neutral face, scored from an emotional frame 0,
adds it twice).

Methods with an emotion editor (``two_stage``) also get the evaluator's (``emotion_classifier_eval``)
accuracy on every training clip's frame 0 edited to each of the six emotions, beside chance.

Named checks (``--require``; defaults per method in :data:`REQUIRED`): ``psnr`` (PSNR above
``copy_reference``), ``loss_falling`` / ``psnr_vs_noise`` (diffusion models: the last epoch's
eq. 1 loss below the first's; samples' PSNR above uniform-noise frames by ``--noise-margin`` dB),
``lse`` (LSE-C above and LSE-D below ``copy_reference``; for a two-stage method its stage 2 alone on
the unedited still, the row ``<method> stage 2``), ``edit_acc`` (edits
classified as their target above chance), ``emotion_rows`` (every pair of emotion rows differs by more than
``--min-emotion-mad`` levels), ``mouth_ld`` (M-LD below the still landmarks), ``reconstruction_psnr``
(rendering from its training source above copying that source). The exit status is 1 when a required check fails.

    python benchmarks/learning_check.py --method sinha --minutes 12
    python benchmarks/learning_check.py --method two_stage --minutes 14
    python benchmarks/learning_check.py --method emotalker --minutes 14
    python benchmarks/learning_check.py --method eapc_vid2vid --minutes 14
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from eval_metrics.image import FramePSNR, FrameSSIM
from eval_metrics.landmarks import LandmarkMetrics
from eval_metrics.sync import LSEC, LSED, SyncEvaluator
from lightning_modules import METHODS
from lightning_modules.generation import CopyReference
from lightning_modules.syncnet import SyncNetModule
from pipeline.params import load_params
from pipeline.protocol.clips import split_clips
from pipeline.protocol.evaluators import EMOTION_EVALUATOR, SYNC_EVALUATOR
from pipeline.protocol.extras import EditScores
from pipeline.protocol.grids import emotion_grid
from pipeline.protocol.render import CLIP_INPUTS, clip_inputs
from pipeline.train import apply_overrides, run_spec, train
from primitives.speaker_neutral import most_closed_neutral_frames
from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID
from figures import machine  # benchmarks/figures.py, beside this script


def score(generator, clips: list[dict], frames_key: str, sync: SyncEvaluator,
          sources: list[Source] | None = None) -> dict[str, float]:
    """PSNR, SSIM, LSE-D, LSE-C of ``generator`` over ``clips``: reference = frame 0, frames 1..T-1
    scored; or, with ``sources`` (:func:`training_sources`), reference = each clip's source, every
    frame scored but the source itself where it is one of the clip's."""
    psnr, ssim, lse_d, lse_c = FramePSNR(), FrameSSIM(), LSED(), LSEC()
    for i, clip in enumerate(clips):
        real = torch.from_numpy(clip[frames_key])  # (T, S, S, 3) uint8
        mel = torch.from_numpy(clip["mel"])
        image, points, own = sources[i] if sources else (real[0], torch.from_numpy(clip["lmk"][0]), 0)
        with torch.no_grad():
            generated = generator.generate(image[None], mel[None], torch.tensor([clip["meta"]["emotion_id"]]),
                                           len(real), ref_lmk=points[None], **clip_inputs(generator, clip))[0]
        scored = [t for t in range(len(real)) if t != own]
        gen, tgt = generated[scored].permute(0, 3, 1, 2), real[scored].permute(0, 3, 1, 2)
        psnr.update(gen, tgt)
        ssim.update(gen.float() / 255, tgt.float() / 255)
        sync.update([lse_d, lse_c], generated, mel)
    return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), "lse_d": float(lse_d.compute()),
            "lse_c": float(lse_c.compute())}


REQUIRED: dict[str, tuple[str, ...]] = {"cvae": ("psnr", "emotion_rows"), "sinha": ("mouth_ld", "reconstruction_psnr"),
                                        "two_stage": ("edit_acc", "lse"), "emotalker": ("loss_falling", "psnr_vs_noise"),
                                        "eapc_vid2vid": ("reconstruction_psnr",)}
"""Checks a method must pass (issue #10 for cvae, #12 for sinha, #14 for two_stage, #15 for emotalker,
#16 for eapc_vid2vid: stage 2 rendering ground-truth landmarks);
others: ``psnr``, ``emotion_rows``."""


class StillLipSync:
    """``generate`` of a two-stage model's lip-sync stage alone (no emotion edit)."""

    def __init__(self, model):
        self.model = model

    def generate(self, reference, mel, emotion, n_frames, ref_lmk=None):
        return self.model.lipsync_still(reference, mel, n_frames)


def noise_psnr(clips: list[dict], frames_key: str, seed: int = 0) -> float:
    """PSNR (dB) of uniform random uint8 frames against the clips' frames 1..T-1: the "pure noise" floor."""
    psnr, gen = FramePSNR(), torch.Generator().manual_seed(seed)
    for clip in clips:
        real = torch.from_numpy(clip[frames_key][1:]).permute(0, 3, 1, 2)
        psnr.update(torch.randint(0, 256, real.shape, generator=gen, dtype=torch.uint8), real)
    return float(psnr.compute())


def loss_history(tracking_uri: str, run_id: str, key: str) -> list[float]:
    """Per-epoch values of ``key`` logged by the training run."""
    from mlflow.tracking import MlflowClient

    return [m.value for m in sorted(MlflowClient(tracking_uri).get_metric_history(run_id, key), key=lambda m: m.step)]


@torch.no_grad()
def edit_accuracy(model, clips: list[dict], frames_key: str, dataset: str) -> dict:
    """EmoAcc (%) of the evaluator (``emotion_classifier_eval``) on every clip's frame 0 edited by
    ``model.edit`` to each of CREMA-D's six emotions (``pipeline.protocol.extras.EditScores``): ``edit_emo_acc``
    and ``edit_emo_acc_<emotion>``, beside ``chance``."""
    from types import SimpleNamespace

    from eval_metrics.emotion import EmotionAccuracy
    from lightning_modules.emotion_classifier import load_emotion_classifier

    classifier, name = load_emotion_classifier(Path("models") / EMOTION_EVALUATOR / dataset / "last.ckpt",
                                               trained_on=f"{dataset} train split")
    scores = EditScores(SimpleNamespace(metrics={"emo_acc": EmotionAccuracy(classifier, name)}, evaluators={"emo_acc": name}))
    for clip in clips:
        scores.update(model, torch.from_numpy(clip[frames_key][0]))
    return scores.compute() | {"chance": 100.0 / len(scores.emotions), "evaluator": name}


@torch.no_grad()
def landmark_scores(model, clips: list[dict]) -> dict[str, dict[str, float]]:
    """M-LD, M-LVD, F-LD, F-LVD of ``model(batch)`` on whole clips (X = frame 0) and of frame 0's
    landmarks held still."""
    ours, still = LandmarkMetrics(), LandmarkMetrics()
    for clip in clips:
        lmk = torch.from_numpy(clip["lmk"])[None]  # (1, T, 68, 2)
        batch = {"key": [clip["key"]], "lmk": lmk, "ref_lmk": lmk[:, 0], "mel": torch.from_numpy(clip["mel"])[None],
                 "emotion": torch.tensor([clip["meta"]["emotion_id"]]), "intensity": torch.tensor([clip["meta"]["intensity"]]),
                 **clip_inputs(model, clip)}
        ours.update(model(batch), lmk)
        still.update(lmk[:, :1].expand_as(lmk), lmk)
    return {"ours": {k: float(v) for k, v in ours.compute().items()},
            "still": {k: float(v) for k, v in still.compute().items()}}


Source = tuple[torch.Tensor, torch.Tensor, "int | None"]
"""The reference a model is trained from, for one clip: (S, S, 3) uint8 image, (68, 2) landmarks, and the
index of that frame in the clip scored (left out of the score: copying it would be exact), or None."""


def training_sources(model, clips: list[dict], frames_key: str) -> list[Source] | None:
    """Per clip, the reference the model is trained from, where that is not a frame of the clip itself
    (``None`` then): for ``sinha`` with ``optim.texture_source: speaker_neutral`` (the paper's I_n)
    and ``cvae`` with ``optim.reference: speaker_neutral``, the speaker's most closed-mouth neutral
    frame among ``clips``, by the rule the module trains with
    (:func:`primitives.speaker_neutral.most_closed_neutral_frames`)."""
    cfg = getattr(model, "optim_cfg", None)
    if "speaker_neutral" not in (getattr(cfg, "texture_source", None), getattr(cfg, "reference", None)):
        return None
    chosen = most_closed_neutral_frames(clips)
    by_key = {c["key"]: c for c in clips}
    sources = []
    for clip in clips:
        frame = chosen[str(clip["meta"].get("speaker", ""))]
        source, t = by_key[frame.key], frame.t
        sources.append((torch.from_numpy(source[frames_key][t]), torch.from_numpy(source["lmk"][t]),
                        t if source is clip else None))
    return sources


@torch.no_grad()
def reconstruction_psnr(model, clips: list[dict], frames_key: str,
                        sources: list[Source] | None = None) -> dict[str, float]:
    """PSNR (dB, per frame, mean over frames) of ``model.render`` drawing each clip's ground-truth
    landmarks from ``sources`` (default: frame 0), and of copying those sources (the bar it must
    beat); a source frame of the clip itself is left out of both."""
    psnr, copy = FramePSNR(), FramePSNR()
    takes = inspect.signature(model.render).parameters
    for i, clip in enumerate(clips):
        real, lmk = torch.from_numpy(clip[frames_key]), torch.from_numpy(clip["lmk"])
        image, points, own = sources[i] if sources else (real[0], lmk[0], 0)
        emotion = {"emotion": torch.tensor([clip["meta"]["emotion_id"]])} if "emotion" in takes else {}
        out = model.render(image[None], points[None], lmk[None], **emotion)[0]
        scored = [t for t in range(len(real)) if t != own]
        target = real[scored].permute(0, 3, 1, 2)
        psnr.update(out[scored].permute(0, 3, 1, 2), target)
        copy.update(image[None].expand_as(real[scored]).permute(0, 3, 1, 2), target)
    return {"render": float(psnr.compute()), "copy_source": float(copy.compute())}


@torch.no_grad()
def emotion_row_mad(generator, clip: dict, frames_key: str, n_frames: int = 24,
                    source: Source | None = None) -> tuple[dict, dict]:
    """Mean absolute difference (uint8 levels) between the clips rendered with each pair of emotions,
    from frame 0 (or ``source``, :func:`training_sources`): over the whole crop, and over its upper
    half (brows and eyes, where emotion shows beyond the mouth)."""
    real = torch.from_numpy(clip[frames_key])
    mel = torch.from_numpy(clip["mel"])[None]
    image, points, _ = source or (real[0], torch.from_numpy(clip["lmk"][0]), 0)
    rows = {name: generator.generate(image[None], mel, torch.tensor([EMOTION_TO_ID[name]]), n_frames,
                                     ref_lmk=points[None], **clip_inputs(generator, clip))[0].float()
            for name in CREMA_D_EMOTIONS.values()}
    pairs = list(itertools.combinations(rows, 2))
    half = real.shape[1] // 2
    return ({f"{a}-{b}": float((rows[a] - rows[b]).abs().mean()) for a, b in pairs},
            {f"{a}-{b}": float((rows[a][:, :half] - rows[b][:, :half]).abs().mean()) for a, b in pairs})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="cvae")
    parser.add_argument("--dataset", default="crema_d")
    parser.add_argument("--minutes", type=float, default=12.0, help="training wall-clock budget")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a train.* param, e.g. --set methods.cvae.optim.aux_start_step=3500")
    parser.add_argument("--min-emotion-mad", type=float, default=0.5,
                        help="smallest mean |difference| (uint8 levels) two emotion rows may have")
    parser.add_argument("--score-only", action="store_true", help="score the model already trained in --out")
    parser.add_argument("--noise-margin", type=float, default=4.0,
                        help="dB a diffusion model's samples must beat uniform noise frames by")
    parser.add_argument("--require", nargs="*", default=None,
                        help="checks that must pass (default: REQUIRED[method], else psnr emotion_rows)")
    args = parser.parse_args(argv)
    out = (args.out or Path("benchmarks/results") / f"learning-{args.method}-{args.dataset}").resolve()
    out.mkdir(parents=True, exist_ok=True)

    spec = run_spec(apply_overrides(load_params(args.params), args.overrides), args.method, args.dataset)
    seconds = int(args.minutes * 60)
    spec = dataclasses.replace(
        spec, model_dir=out / "model", tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
        trainer={**spec.trainer, "max_epochs": -1, "max_time": {"seconds": seconds}})
    last = spec.model_dir / "last.ckpt"  # pipeline.train resumes it (steps and the max_time timer go on)
    resumed_from = (None if args.score_only or not last.exists()
                    else int(torch.load(last, map_location="cpu", weights_only=False)["global_step"]))
    if resumed_from is not None:
        print(f"resuming the run in {spec.model_dir} from step {resumed_from} (a fresh run needs a new --out)")
    start = time.perf_counter()
    if args.score_only:  # re-score the model a previous run left in --out
        config = json.loads((spec.model_dir / "config.json").read_text())
    else:
        config = train(spec)
    train_s = time.perf_counter() - start
    model = METHODS[args.method].load_from_checkpoint(spec.model_dir / "last.ckpt", map_location="cpu").eval()

    frames_key = f"frames_{model.net_cfg.crop_size}"
    wanted = tuple(k for k in CLIP_INPUTS if k in getattr(model, "data_keys", ()))
    clips = list(split_clips(spec.shard_dir, frames_key, split="train", extra_keys=wanted))
    ckpt = Path("models") / SYNC_EVALUATOR / args.dataset / "last.ckpt"
    sync = SyncEvaluator.own_expert(SyncNetModule.load_from_checkpoint(ckpt, map_location="cpu").net, args.dataset)
    rows = {args.method: score(model, clips, frames_key, sync), "copy_reference": score(CopyReference(), clips,
                                                                                         frames_key, sync)}
    if hasattr(model, "lipsync_still"):  # stage 2 alone on the unedited still (Wav2Lip on a photo)
        rows[f"{args.method} stage 2"] = score(StillLipSync(model), clips, frames_key, sync)
    sources = training_sources(model, clips, frames_key)
    if sources is not None:  # trained from another reference than a frame of the clip: scored from it too
        rows[f"{args.method} from source"] = score(model, clips, frames_key, sync, sources)
        rows["copy_source"] = score(CopyReference(), clips, frames_key, sync, sources)
    mad, upper = emotion_row_mad(model, clips[0], frames_key, source=sources[0] if sources else None)
    emotion_grid(model, clips[0], frames_key, out / "emotion_grid.png")
    ours, copy = rows[args.method], rows["copy_reference"]
    lips = rows.get(f"{args.method} stage 2", ours)  # the lip-sync network's own row where there is one
    # PSNR from the reference the model is trained from (frame 0, or its training source)
    trained_ref, copied_ref = rows.get(f"{args.method} from source", ours), rows.get("copy_source", copy)
    checks = {"psnr": trained_ref["psnr"] > copied_ref["psnr"], "emotion_rows": min(mad.values()) > args.min_emotion_mad,
              "lse": lips["lse_c"] > copy["lse_c"] and lips["lse_d"] < copy["lse_d"]}
    extra: dict = {}
    if hasattr(model, "test_metrics"):
        extra["landmarks"] = landmark_scores(model, clips)
        checks["mouth_ld"] = extra["landmarks"]["ours"]["mouth_ld"] < extra["landmarks"]["still"]["mouth_ld"]
    if hasattr(model, "render"):  # from frame 0; and from the source it is trained from, where that differs
        frame0 = reconstruction_psnr(model, clips, frames_key)
        extra["reconstruction_psnr"] = frame0["render"]
        trained_from = frame0 if sources is None else reconstruction_psnr(model, clips, frames_key, sources)
        extra["reconstruction_psnr_training_source"] = trained_from
        checks["reconstruction_psnr"] = trained_from["render"] > trained_from["copy_source"]
    if hasattr(model, "prompt_e_emo"):  # a diffusion model: its loss falls, its samples beat pure noise
        history = loss_history(spec.tracking_uri, config["mlflow_run_id"], "train/diffusion")
        extra["diffusion_loss"] = {"first_epoch": history[0], "last_epoch": history[-1], "epochs": len(history)}
        extra["noise_psnr"] = noise_psnr(clips, frames_key)
        checks["loss_falling"] = len(history) > 1 and history[-1] < history[0]
        checks["psnr_vs_noise"] = rows[args.method]["psnr"] > extra["noise_psnr"] + args.noise_margin
    if hasattr(model, "edit"):
        extra["edit_acc"] = edit_accuracy(model, clips, frames_key, args.dataset)
        checks["edit_acc"] = extra["edit_acc"]["edit_emo_acc"] > extra["edit_acc"]["chance"]

    trained = "scored only (trained earlier)" if args.score_only else f"in {train_s / 60:.1f} min"
    print(f"{args.method} on {args.dataset}: {config['global_step']} optimiser steps {trained}; "
          f"scored on {len(clips)} training clips (LSE: {sync.name})")
    print(f"{'method':18s} {'PSNR':>7s} {'SSIM':>7s} {'LSE-D':>7s} {'LSE-C':>7s}")
    for name, r in rows.items():
        print(f"{name:18s} {r['psnr']:7.2f} {r['ssim']:7.3f} {r['lse_d']:7.3f} {r['lse_c']:7.3f}")
    print(f"emotion rows: mean |difference| between pairs min {min(mad.values()):.2f}, "
          f"max {max(mad.values()):.2f} uint8 levels ({out / 'emotion_grid.png'}); upper half (brows, eyes): "
          f"mean {sum(upper.values()) / len(upper):.2f}, whole crop mean {sum(mad.values()) / len(mad):.2f}")
    if "landmarks" in extra:
        for name, r in extra["landmarks"].items():
            print(f"landmarks {name:6s} M-LD {r['mouth_ld']:.3f}  M-LVD {r['mouth_lvd']:.3f}  F-LD {r['face_ld']:.3f}  "
                  f"F-LVD {r['face_lvd']:.3f} (256 px crop pixels)")
    if "reconstruction_psnr" in extra:
        trained_from = extra["reconstruction_psnr_training_source"]
        print(f"texture network on ground-truth landmarks: PSNR {extra['reconstruction_psnr']:.2f} dB from frame 0; "
              f"{trained_from['render']:.2f} dB from its training source (copying that source: "
              f"{trained_from['copy_source']:.2f} dB)")
    if "diffusion_loss" in extra:
        d = extra["diffusion_loss"]
        print(f"diffusion loss (eq. 1): epoch 1 {d['first_epoch']:.4f} -> epoch {d['epochs']} {d['last_epoch']:.4f}; "
              f"pure noise PSNR {extra['noise_psnr']:.2f} dB (required margin {args.noise_margin:g} dB)")
    if "edit_acc" in extra:
        e = extra["edit_acc"]
        print(f"stage-1 edits classified as their target: {e['edit_emo_acc']:.1f}% (chance {e['chance']:.1f}%; "
              + ", ".join(f"{k} {e[f'edit_emo_acc_{k}']:.0f}" for k in CREMA_D_EMOTIONS.values()) + f"; {e['evaluator']})")
    required = args.require if args.require is not None else REQUIRED.get(args.method, ("psnr", "emotion_rows"))
    unknown = sorted(set(required) - set(checks))
    if unknown:
        raise SystemExit(f"--require: {unknown} not available for {args.method} (available: {sorted(checks)})")
    passed = all(checks[name] for name in required)
    (out / "learning_check.json").write_text(json.dumps(
        {"method": args.method, "dataset": args.dataset, "overrides": args.overrides, "steps": config["global_step"],
         "train_minutes": train_s / 60, "resumed_from_step": resumed_from, "n_clips": len(clips), "sync_evaluator": sync.name, "scores": rows,
         "emotion_row_mad": mad, "emotion_row_mad_upper_half": upper, **extra, "checks": checks,
         "required": list(required), "passed": passed, "command": " ".join(["python benchmarks/learning_check.py",
                                                                           *(argv if argv is not None else sys.argv[1:])]),
         "date": time.strftime("%Y-%m-%d"), "machine": machine()}, indent=1))
    print("checks: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}{'' if k in required else ' (not required)'}"
                                 for k, v in checks.items()))
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

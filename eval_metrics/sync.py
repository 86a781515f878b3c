"""Lip-sync error LSE-D / LSE-C (Prajwal et al. 2020) as torchmetrics ``Metric`` classes and functions.

Definition (syncnet_python's ``SyncNetInstance.calc_pdist`` + ``evaluate``, the papers' LSE)
------------------------------------------------------------------------------------------
For one clip let ``V[t]`` be the visual embedding of the 5-frame window starting at frame ``t`` and
``A[t]`` the audio embedding of the matching 0.2 s of audio, ``t = 0 .. N-1``. syncnet_python pads
the audio embeddings with ``vshift`` zero vectors on both sides (``A[u] = 0`` for ``u < 0`` or
``u >= N``) and, for every offset ``o`` in ``[-vshift, vshift]`` (``vshift`` = ``max_offset`` =
15 frames = +-0.6 s), averages over ALL ``N`` visual positions::

    d[o] = (1 / N) sum_{t=0}^{N-1} ||V[t] - A[t + o] + 1e-6||_2

(the ``1e-6`` is ``torch.nn.functional.pairwise_distance``'s ``eps``, added to the difference).

* **LSE-D** = ``min_o d[o]`` -- lower is better ("Min dist");
* **LSE-C** = ``median_o d[o] - min_o d[o]`` -- higher is better ("Confidence");
* the **offset** ``argmin_o d[o]``: a positive offset means the audio matching frame ``t`` sits at
  window ``t + o`` (the audio lags the video by ``o`` frames).

``padding="overlap"`` gives the variant that averages only over the positions where both
embeddings exist (no zero vectors at the clip ends); it is NOT the papers' definition and never
fills the ``lse_d`` / ``lse_c`` keys. Dataset values are means over clips (each clip weighs the
same, as in Wav2Lip's scripts).

Differences from syncnet_python (read before comparing numbers)
---------------------------------------------------------------
* syncnet_python's pipeline drops face tracks shorter than 100 frames; CREMA-D clips are about
  2.5 s, so we score 2 s clips too (50 frames: N = 46 with our expert, N = 45 with syncnet_v2).
  We require ``N > max_offset`` windows (so every offset compares at least one real pair; else
  ``ValueError``, and the video protocol counts the clip in ``skipped_clips``).
* syncnet_python prints ``AV offset = vshift - argmin``, i.e. ``-offset`` in the convention above;
  its "Min dist" and "Confidence" are LSE-D and LSE-C.
* The numbers depend on the evaluator network (:class:`SyncEvaluator`):

  - :meth:`SyncEvaluator.public`: syncnet_python's public ``syncnet_v2`` weights in our port
    (:mod:`eval_metrics.syncnet_v2`, same network and input preparation; it needs the clip's
    audio waveform). Distances are between unnormalised 1024-d embeddings (papers report
    LSE-D ~ 6-8, LSE-C ~ 3-8). We feed our aligned face crops, not syncnet_python's own S3FD
    face track, so values can differ from running syncnet_python on the same video.
  - :meth:`SyncEvaluator.own_expert`: our expert (:mod:`lightning_modules.networks.syncnet`) on
    the mel, with **unit-norm** embeddings, so its distances lie in [0, 2] and its LSE values are
    not comparable with published numbers.

  Every result therefore names its evaluator (:attr:`SyncEvaluator.name`), and the report must
  print it.

State for DDP
-------------
The Metric classes accumulate float64 sums of per-clip LSE-D, LSE-C and |offset| and an int64
clip count, all reduced by ``sum``: the result does not depend on how clips are split into
``update`` calls or across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

# SYNCNET_V2_URL and load_public_syncnet are re-exported here (their home is eval_metrics.syncnet_v2)
from eval_metrics.syncnet_v2 import SYNCNET_V2_URL, load_public_syncnet, syncnet_v2_embed, syncnet_v2_window_count
from primitives.geometry import resize_crops
from primitives.sync_windows import clip_windows

__all__ = [
    "LSEC",
    "LSED",
    "LSEResult",
    "SYNCNET_V2_URL",
    "SyncEvaluator",
    "lip_sync_error",
    "load_public_syncnet",
    "sync_distances",
]


PADDINGS = ("syncnet_python", "overlap")


def sync_distances(v: Tensor, a: Tensor, max_offset: int = 15, padding: str = "syncnet_python") -> Tensor:
    """Mean audio-visual embedding distance ``d[o]`` per offset (see the module docstring).

    Args:
        v: ``(N, D)`` or ``(B, N, D)`` visual embeddings (one per 5-frame window position).
        a: audio embeddings of the same shape (window ``t`` of ``a`` matches window ``t`` of ``v``).
        max_offset: largest |offset| in frames (syncnet_python's ``vshift``: 15); needs ``N > max_offset``.
        padding: ``"syncnet_python"`` (zero-padded audio, mean over all N positions, the papers'
            definition) or ``"overlap"`` (mean over overlapping positions only).

    Returns:
        ``(2 max_offset + 1,)`` or ``(B, 2 max_offset + 1)`` float64 distances ``d[o]``, index
        ``o + max_offset``.

    Raises:
        ValueError: shapes differ or are not 2-/3-D, ``max_offset < 0``, ``N <= max_offset``,
            unknown ``padding``.
    """
    if v.shape != a.shape or v.ndim not in (2, 3):
        raise ValueError(f"v and a must both be (N, D) or (B, N, D), got {tuple(v.shape)} and {tuple(a.shape)}")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    single = v.ndim == 2
    v64, a64 = (v[None], a[None]) if single else (v, a)
    v64, a64 = v64.double(), a64.double()
    n = v64.shape[1]
    if n <= max_offset:
        raise ValueError(f"LSE needs more than max_offset={max_offset} window positions per clip, got {n} "
                         f"(a clip of T frames has T - 4 positions)")
    if padding == "syncnet_python":
        win = 2 * max_offset + 1
        a_pad = F.pad(a64, (0, 0, max_offset, max_offset))  # (B, N + 2 vshift, D), zero vectors at the ends
        shifted = a_pad.unfold(1, win, 1).transpose(2, 3)  # (B, N, win, D): shifted[b, t, j] = A[t + j - vshift]
        d = torch.linalg.vector_norm(v64[:, :, None, :] - shifted + 1e-6, dim=-1).mean(dim=1)  # (B, win)
    else:
        dist = torch.cdist(v64, a64)  # (B, N, N): dist[b, t, u] = ||V[t] - A[u]||
        d = torch.stack([torch.diagonal(dist, offset=o, dim1=1, dim2=2).mean(dim=-1)  # u = t + o
                         for o in range(-max_offset, max_offset + 1)], dim=-1)
    return d[0] if single else d


@dataclass(frozen=True)
class LSEResult:
    """Per-clip lip-sync error.

    Attributes:
        lse_d: ``(B,)`` float64, ``min_o d[o]`` (lower is better).
        lse_c: ``(B,)`` float64, ``median_o d[o] - min_o d[o]`` (higher is better, >= 0).
        offset: ``(B,)`` int64, ``argmin_o d[o]`` in frames (0 = in sync).
        distances: ``(B, 2 max_offset + 1)`` float64 ``d[o]``.
    """

    lse_d: Tensor
    lse_c: Tensor
    offset: Tensor
    distances: Tensor


def lip_sync_error(v: Tensor, a: Tensor, max_offset: int = 15, padding: str = "syncnet_python") -> LSEResult:
    """LSE-D, LSE-C and best offset of each clip (see the module docstring).

    Args:
        v, a: ``(N, D)`` (one clip) or ``(B, N, D)`` visual / audio embeddings.
        max_offset: offsets searched, ``[-max_offset, max_offset]`` frames.
        padding: see :func:`sync_distances` (default: syncnet_python's definition).

    Returns:
        :class:`LSEResult` with ``(B,)`` tensors (``B = 1`` for a single clip); syncnet_python's
        printed "AV offset" is ``-offset``.
    """
    d = sync_distances(v, a, max_offset, padding)
    d = d[None] if d.ndim == 1 else d
    lse_d, idx = d.min(dim=-1)
    # torch.median returns the lower of the two middle values; 2 max_offset + 1 is odd -> exact
    lse_c = d.median(dim=-1).values - lse_d
    return LSEResult(lse_d=lse_d, lse_c=lse_c, offset=idx - max_offset, distances=d)


def _lse_update(v: Tensor, a: Tensor, max_offset: int = 15) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums over the clips of one update: ``(sum_lse_d, sum_lse_c, sum_abs_offset)`` float64 and
    ``count`` int64."""
    r = lip_sync_error(v, a, max_offset)
    return (r.lse_d.sum(), r.lse_c.sum(), r.offset.abs().double().sum(),
            torch.tensor(r.lse_d.numel(), dtype=torch.long, device=r.lse_d.device))


def _lse_compute(sum_value: Tensor, count: Tensor) -> Tensor:
    """Mean over clips (float32; NaN when nothing was accumulated)."""
    if int(count) == 0:
        return torch.tensor(float("nan"))
    return (sum_value / count).float()


class _LSEBase(Metric):
    """Shared state: float64 sums of per-clip LSE-D, LSE-C, |offset| and the int64 clip count
    (all reduced by ``sum`` across DDP ranks)."""

    is_differentiable = False
    full_state_update = False

    sum_lse_d: Tensor
    sum_lse_c: Tensor
    sum_abs_offset: Tensor
    count: Tensor

    def __init__(self, max_offset: int = 15, **kwargs: Any):
        super().__init__(**kwargs)
        if max_offset < 0:
            raise ValueError(f"max_offset must be >= 0, got {max_offset}")
        self.max_offset = int(max_offset)
        for name in ("sum_lse_d", "sum_lse_c", "sum_abs_offset"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, v: Tensor, a: Tensor) -> None:
        """Add clips: ``v``, ``a`` are ``(N, D)`` (one clip) or ``(B, N, D)`` embeddings; clips
        of different lengths go in separate calls."""
        sd, sc, so, n = _lse_update(v, a, self.max_offset)
        self.sum_lse_d += sd.to(self.sum_lse_d)
        self.sum_lse_c += sc.to(self.sum_lse_c)
        self.sum_abs_offset += so.to(self.sum_abs_offset)
        self.count += n.to(self.count.device)

    def mean_abs_offset(self) -> Tensor:
        """Mean |best offset| in frames over the clips seen (0 for perfectly synced clips)."""
        return _lse_compute(self.sum_abs_offset, self.count)


class LSED(_LSEBase):
    """LSE-D: mean over clips of the minimum (over offsets +-``max_offset``) mean audio-visual
    embedding distance. Lower is better. See :func:`lip_sync_error`.

    ``update(v, a)``: embeddings ``(N, D)`` or ``(B, N, D)`` with ``N > max_offset``;
    ``compute()``: float32 scalar (NaN before any update).
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return _lse_compute(self.sum_lse_d, self.count)


class LSEC(_LSEBase):
    """LSE-C: mean over clips of ``median_o d[o] - min_o d[o]`` (sync confidence). Higher is
    better. See :func:`lip_sync_error`.

    ``update(v, a)``: as :class:`LSED`; ``compute()``: float32 scalar >= 0 (NaN before any update).
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        return _lse_compute(self.sum_lse_c, self.count)


class SyncEvaluator:
    """Scores clips for lip sync with an expert network and names the evaluator.

    Two evaluators, chosen by ``inputs``:

    * ``"mel"`` -- our own expert (:class:`lightning_modules.networks.syncnet.SyncNet`, unit-norm
      embeddings) on the clip's mel; build it with :meth:`own_expert`;
    * ``"waveform"`` -- syncnet_python's public ``syncnet_v2`` network
      (:class:`eval_metrics.syncnet_v2.SyncNetV2`, 1024-d unnormalised embeddings) on MFCCs of
      the clip's audio waveform and BGR 224 px frames; build it with :meth:`public`.

    Args:
        net: the network (put in eval mode here).
        name: the evaluator's label for reports / MLflow, e.g.
            ``"own expert SyncNet trained on crema_d"``.
        max_offset: offsets searched (frames).
        chunk: windows embedded per forward pass (bounds memory).
        inputs: ``"mel"`` or ``"waveform"`` (see above).

    ``embed(frames, mel=None, audio=None)``: ``(T, S, S, 3)`` uint8 RGB crops (our expert: resized to
    its own ``crop_size`` when S differs, :func:`primitives.geometry.resize_crops`), ``(M, 80)`` mel
    (row 0 = frame 0) and / or ``(L,)`` float32 16 kHz waveform in [-1, 1] (sample 0 = frame 0)
    -> ``(V, A)``, each ``(N, D)`` float32; own expert: ``N = T - 4``, ``D`` its ``embed_dim``;
    syncnet_v2: ``N = min(T, L // 640) - 5``, ``D = 1024``.
    ``score(frames, mel=None, audio=None)``: dict ``{"lse_d", "lse_c", "offset", "evaluator"}``.
    ``update(metrics, frames, mel=None, audio=None)`` feeds :class:`LSED` / :class:`LSEC` objects.
    The input the evaluator does not use may be ``None``; a missing required one raises
    ``ValueError``, as does a clip with ``N <= max_offset`` windows.
    """

    INPUTS = ("mel", "waveform")

    def __init__(self, net: torch.nn.Module, name: str, max_offset: int = 15, chunk: int = 256,
                 inputs: str = "mel"):
        if not name:
            raise ValueError("SyncEvaluator needs a name saying which evaluator produced the numbers")
        if inputs not in self.INPUTS:
            raise ValueError(f"inputs must be one of {self.INPUTS}, got {inputs!r}")
        self.net = net.eval()
        self.name = name
        self.max_offset = int(max_offset)
        self.chunk = int(chunk)
        self.inputs = inputs

    @classmethod
    def own_expert(cls, net: torch.nn.Module, dataset: str, **kwargs: Any) -> SyncEvaluator:
        """Evaluator labelled ``"own expert SyncNet trained on <dataset>"`` (uses the mel)."""
        return cls(net, f"own expert SyncNet trained on {dataset}", inputs="mel", **kwargs)

    @classmethod
    def public(cls, path: str | Path, sha256: str | None = None, max_offset: int = 15,
               chunk: int = 20) -> SyncEvaluator:
        """syncnet_python's public evaluator from a local ``syncnet_v2.model`` (uses the waveform).

        Labelled ``"public syncnet_v2 (syncnet_python weights, sha256 <first 12 hex>)"``. Raises
        what :func:`load_public_syncnet` raises (FileNotFoundError, ValueError).
        """
        net = load_public_syncnet(path, sha256)
        name = f"public syncnet_v2 (syncnet_python weights, sha256 {net.weights_sha256[:12]})"
        return cls(net, name, max_offset=max_offset, chunk=chunk, inputs="waveform")

    def n_windows(self, n_frames: int, n_samples: int) -> int:
        """Window positions N this evaluator gets from a clip of ``n_frames`` video frames and
        ``n_samples`` 16 kHz audio samples; LSE needs ``N > max_offset``."""
        if self.inputs == "waveform":
            return syncnet_v2_window_count(n_frames, n_samples)
        return n_frames - 4  # our expert: every 5-frame window of the video

    @torch.no_grad()
    def embed(self, frames: Tensor, mel: Tensor | None = None, audio: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-window visual and audio embeddings ``(N, D)`` of one clip (see the class doc)."""
        if self.inputs == "waveform":
            if audio is None:
                raise ValueError(f"{self.name} needs the clip's audio waveform: call with audio=(L,) float32 16 kHz")
            return syncnet_v2_embed(self.net, frames, audio, batch_size=self.chunk)
        if mel is None:
            raise ValueError(f"{self.name} needs the clip's mel spectrogram (M, 80)")
        device = next(self.net.parameters()).device
        frames, mel = torch.as_tensor(frames), torch.as_tensor(mel)
        side = getattr(getattr(self.net, "cfg", None), "crop_size", frames.shape[1])
        if frames.shape[1] != side:  # a method at another crop side: fed at the expert's own
            frames = torch.from_numpy(resize_crops(frames.cpu().numpy(), side))
        faces, mels = clip_windows(frames, mel)
        vs, as_ = [], []
        for i in range(0, len(faces), self.chunk):
            vs.append(self.net.embed_face(faces[i:i + self.chunk].to(device)))
            as_.append(self.net.embed_audio(mels[i:i + self.chunk].to(device)))
        return torch.cat(vs), torch.cat(as_)

    def score(self, frames: Tensor, mel: Tensor | None = None, audio: Tensor | None = None) -> dict:
        """LSE-D, LSE-C (floats), best offset (int, frames) and the evaluator name for one clip."""
        v, a = self.embed(frames, mel, audio)
        r = lip_sync_error(v, a, self.max_offset)
        return {"lse_d": float(r.lse_d[0]), "lse_c": float(r.lse_c[0]), "offset": int(r.offset[0]),
                "evaluator": self.name}

    def update(self, metrics: list[_LSEBase] | tuple[_LSEBase, ...], frames: Tensor, mel: Tensor | None = None,
               audio: Tensor | None = None) -> None:
        """Embed one clip and add it to every metric in ``metrics``."""
        v, a = self.embed(frames, mel, audio)
        for m in metrics:
            m.update(v, a)

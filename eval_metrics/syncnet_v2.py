"""The public SyncNet evaluator of syncnet_python (``syncnet_v2.model``), ported for LSE-D / LSE-C.

Source
------
Chung & Zisserman, "Out of time: automated lip sync in the wild" (ACCV workshops 2016); code and
weights from https://github.com/joonson/syncnet_python:

* ``SyncNetModel.py`` class ``S``: the network. :class:`SyncNetV2` has the same submodules, with
  the same names, indices and shapes (``netcnnaud``, ``netfcaud``, ``netcnnlip``, ``netfclip``),
  so the state dict in ``syncnet_v2.model`` loads with ``strict=True``
  (``SyncNetInstance.loadParameters`` copies ``torch.load(path)`` items into ``S.state_dict()``
  by name). 13,631,616 parameters.
* ``SyncNetInstance.py`` ``SyncNetInstance.evaluate``: the input preparation reproduced by
  :func:`syncnet_v2_frames`, :func:`syncnet_v2_mfcc`, :func:`syncnet_v2_window_count` and
  :func:`syncnet_v2_embed`:

  - video: 25 fps frames as read by ``cv2.imread`` (BGR), float 0..255, **no** normalisation,
    224 x 224; the visual input of window ``t`` is frames ``t .. t+4``, ``(3, 5, 224, 224)``;
  - audio: ``python_speech_features.mfcc(audio, 16000)`` on the int16 samples given by
    ``scipy.io.wavfile.read`` (13 coefficients, 25 ms windows every 10 ms = 100 columns/s),
    transposed to ``(13, M)``; the audio input of window ``t`` is columns ``4t .. 4t+19``
    (0.2 s), ``(1, 13, 20)``;
  - windows ``t = 0 .. N-1`` with ``N = min(T, floor(L / 640)) - 5`` (``L`` samples at 16 kHz,
    640 samples per frame; syncnet_python's ``lastframe``, one position fewer than fits);
  - embeddings: 1024-d, **not** normalised.

How our clips are converted (remaining differences)
---------------------------------------------------
* Our frames are ``(T, S, S, 3)`` uint8 **RGB** aligned face crops of any size S: they are
  flipped to BGR and resized to 224 x 224 with ``cv2.INTER_LINEAR`` (the interpolation of
  ``cv2.resize(face, (224, 224))`` in syncnet_python's ``run_pipeline.py::crop_video``).
* Our audio is float32 in [-1, 1] at 16 kHz mono (``soundfile``'s reading of 16-bit PCM): it is
  multiplied by 32768, rounded and clipped to int16, which gives back the PCM samples exactly.
* **Not reproduced**: syncnet_python evaluates crops of its own face track
  (``run_pipeline.py::crop_video``: S3FD boxes median-filtered over 13 frames; a square of side
  1.4 x the larger box side, from the box top to 40 % of that side below the box and 20 % beyond
  it left and right, padded with grey 110) that went through XVID and JPEG compression. We feed our
  aligned crops instead, so the face covers a different part of the 224 px input; absolute
  LSE values can differ from syncnet_python run on the same video. Report them as computed with
  "our aligned crops", not as syncnet_python's numbers.
* LSE itself (offsets, no padding of the audio features) is :mod:`eval_metrics.sync`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from primitives.checksum import checked_sha256

__all__ = [
    "DEFAULT_SYNCNET_V2_PATH",
    "SYNCNET_V2_EMBED_DIM",
    "SYNCNET_V2_URL",
    "SyncNetV2",
    "load_public_syncnet",
    "syncnet_v2_embed",
    "syncnet_v2_frames",
    "syncnet_v2_mfcc",
    "syncnet_v2_window_count",
]

SYNCNET_V2_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
"""Where syncnet_python's ``download_model.sh`` fetches ``syncnet_v2.model`` from."""
DEFAULT_SYNCNET_V2_PATH = "models/third_party/syncnet_v2.model"
"""Where this project expects the downloaded file (relative to the repository root)."""
SYNCNET_V2_EMBED_DIM = 1024
"""Size of both embeddings (``num_layers_in_fc_layers`` of ``S``)."""

_SIZE = 224  # input side in pixels
_FRAMES = 5  # video frames per window (0.2 s at 25 fps)
_MFCC_PER_FRAME = 4  # MFCC columns per video frame (100 Hz / 25 fps)
_MFCC_WINDOW = 20  # MFCC columns per window (0.2 s)
_SAMPLES_PER_FRAME = 640  # audio samples per video frame (16 kHz / 25 fps)
_SAMPLE_RATE = 16000


def _fc_head(dim: int) -> nn.Sequential:
    """``netfcaud`` / ``netfclip``: 512 -> 512 (BN, ReLU) -> ``dim``."""
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNetV2(nn.Module):
    """syncnet_python's network ``S`` (``SyncNetModel.py``), same parameter names and shapes.

    ``forward_aud(mfcc)``: ``(B, 1, 13, 20)`` float32 MFCC windows (unnormalised
    python_speech_features values) -> ``(B, 1024)`` float32 audio embeddings.
    ``forward_lip(frames)``: ``(B, 3, 5, 224, 224)`` float32 BGR pixels in [0, 255] (channel,
    time, height, width) -> ``(B, 1024)`` float32 visual embeddings.
    Embeddings are not normalised; LSE uses their Euclidean distances. ``forward(frames, mfcc)``
    returns ``(visual, audio)``. Use in ``eval()`` mode (BatchNorm with the stored statistics).

    Attributes:
        weights_sha256: hex sha256 of the file the weights came from (set by
            :func:`load_public_syncnet`), ``None`` for a freshly initialised network.

    Raises:
        ValueError: an input of the wrong shape.
    """

    def __init__(self, embed_dim: int = SYNCNET_V2_EMBED_DIM):
        super().__init__()
        self.weights_sha256: str | None = None
        # Sequential indices (and hence state-dict keys) as in S: pooling / ReLU layers count.
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),  # 0-2
            nn.MaxPool2d(1, stride=1),  # 3: identity, kept for the indices
            nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(inplace=True),  # 4-6
            nn.MaxPool2d(3, stride=(1, 2)),  # 7
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),  # 8-10
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),  # 11-13
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),  # 14-16
            nn.MaxPool2d(3, stride=2),  # 17
            nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512), nn.ReLU(),  # 18-20
        )
        self.netfcaud = _fc_head(embed_dim)
        self.netfclip = _fc_head(embed_dim)
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96), nn.ReLU(inplace=True),  # 0-2
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),  # 3
            nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),  # 4-6
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),  # 8-10
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),  # 11-13
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),  # 14-16
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),  # 17
            nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512), nn.ReLU(inplace=True),  # 18-20
        )

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        """``(B, 1, 13, 20)`` MFCC windows -> ``(B, 1024)`` audio embeddings."""
        if mfcc.ndim != 4 or mfcc.shape[1:] != (1, 13, _MFCC_WINDOW):
            raise ValueError(f"mfcc must be (B, 1, 13, {_MFCC_WINDOW}), got {tuple(mfcc.shape)}")
        # (B, 1, 13, 20) -> 13x20 -> pool (1,2) 11x9 -> pool 2 5x4 -> conv 5x4: (B, 512, 1, 1)
        mid = self.netcnnaud(mfcc)
        return self.netfcaud(mid.flatten(1))  # (B, 512) -> (B, 1024)

    def forward_lip(self, frames: Tensor) -> Tensor:
        """``(B, 3, 5, 224, 224)`` BGR 0..255 windows -> ``(B, 1024)`` visual embeddings."""
        if frames.ndim != 5 or frames.shape[1:] != (3, _FRAMES, _SIZE, _SIZE):
            raise ValueError(f"frames must be (B, 3, {_FRAMES}, {_SIZE}, {_SIZE}), got {tuple(frames.shape)}")
        # (B, 3, 5, 224, 224) -> conv 5x7x7/2 (B, 96, 1, 109, 109) -> pool 54 -> conv/2 26
        # -> pool 13 -> 3 convs 13 -> pool 6 -> conv 6x6: (B, 512, 1, 1, 1)
        mid = self.netcnnlip(frames)
        return self.netfclip(mid.flatten(1))  # (B, 512) -> (B, 1024)

    def forward(self, frames: Tensor, mfcc: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_lip(frames), self.forward_aud(mfcc)


def syncnet_v2_frames(frames: Tensor | np.ndarray) -> Tensor:
    """Our face crops -> syncnet_python's frames (BGR, 224 x 224).

    Args:
        frames: ``(T, S, S, 3)`` uint8 RGB crops of one clip (any S).

    Returns:
        ``(T, 224, 224, 3)`` uint8 BGR frames (``cv2.INTER_LINEAR`` resize, skipped when S = 224);
        :func:`syncnet_v2_embed` turns windows of them into float 0..255 network inputs.

    Raises:
        ValueError: not a ``(T, H, W, 3)`` uint8 array.
    """
    x = frames.cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"frames must be (T, S, S, 3) uint8 RGB, got {x.shape} {x.dtype}")
    bgr = np.ascontiguousarray(x[..., ::-1])
    if bgr.shape[1:3] != (_SIZE, _SIZE):
        bgr = np.stack([cv2.resize(f, (_SIZE, _SIZE), interpolation=cv2.INTER_LINEAR) for f in bgr])
    return torch.from_numpy(bgr)


def syncnet_v2_mfcc(audio: Tensor | np.ndarray, sample_rate: int = _SAMPLE_RATE) -> Tensor:
    """syncnet_python's audio features: ``python_speech_features.mfcc`` of the int16 samples.

    Args:
        audio: ``(L,)`` float32 mono waveform in [-1, 1] at 16 kHz (converted to int16 scale by
            ``round(x * 32768)`` clipped to [-32768, 32767]), or an int16 array as
            ``scipy.io.wavfile.read`` returns it (used unchanged).
        sample_rate: must be 16000 (the rate the network was trained with).

    Returns:
        ``(13, M)`` float32 MFCCs (coefficient x time, 100 columns per second,
        ``M = 1 + ceil((L - 400) / 160)`` for ``L >= 400``), unnormalised.

    Raises:
        ValueError: not 1-D, shorter than one 25 ms analysis window, or not 16 kHz.
        ImportError: ``python_speech_features`` is not installed.
    """
    if sample_rate != _SAMPLE_RATE:
        raise ValueError(f"syncnet_v2 needs 16 kHz audio, got {sample_rate} Hz")
    x = audio.cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
    if x.ndim != 1 or len(x) < 400:
        raise ValueError(f"audio must be a 1-D waveform of at least 400 samples, got shape {x.shape}")
    if x.dtype != np.int16:
        x = np.clip(np.round(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    try:
        import python_speech_features
    except ImportError as err:
        raise ImportError("the public SyncNet evaluator needs `pip install python_speech_features==0.6`") from err
    mfcc = python_speech_features.mfcc(x, _SAMPLE_RATE)  # (M, 13) float64
    return torch.from_numpy(np.ascontiguousarray(mfcc.T, dtype=np.float32))  # (13, M)


def syncnet_v2_window_count(n_frames: int, n_samples: int) -> int:
    """Windows syncnet_python evaluates: ``min(T, floor(L / 640)) - 5`` (may be <= 0).

    Args:
        n_frames: T, video frames at 25 fps; n_samples: L, audio samples at 16 kHz.
    """
    return min(int(n_frames), int(n_samples) // _SAMPLES_PER_FRAME) - _FRAMES


@torch.no_grad()
def syncnet_v2_embed(net: SyncNetV2, frames: Tensor | np.ndarray, audio: Tensor | np.ndarray,
                     batch_size: int = 20) -> tuple[Tensor, Tensor]:
    """Per-window visual and audio embeddings of one clip, as ``SyncNetInstance.evaluate``.

    Args:
        net: a :class:`SyncNetV2` (put in eval mode here; inputs go to its device).
        frames: ``(T, S, S, 3)`` uint8 RGB face crops at 25 fps.
        audio: ``(L,)`` float32 waveform in [-1, 1] at 16 kHz (or int16 samples), sample 0 at
            frame 0.
        batch_size: windows per forward pass (syncnet_python's default: 20); bounds memory to
            about ``batch_size x 40`` MB of activations.

    Returns:
        ``(V, A)``, each ``(N, 1024)`` float32 on the CPU, ``N = min(T, L // 640) - 5``; window
        ``t`` covers frames ``t .. t+4`` and MFCC columns ``4t .. 4t+19``.

    Raises:
        ValueError: the clip has no complete window (``N < 1``) or inputs of the wrong shape.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bgr = syncnet_v2_frames(frames)  # (T, 224, 224, 3) uint8
    mfcc = syncnet_v2_mfcc(audio)  # (13, M)
    n = syncnet_v2_window_count(len(bgr), len(audio))
    if n < 1:
        raise ValueError(f"clip too short for syncnet_v2: {len(bgr)} frames, {len(audio)} samples "
                         f"-> min(T, L // 640) - 5 = {n} windows")
    net.eval()
    device = next(net.parameters()).device
    vs, as_ = [], []
    for lo in range(0, n, batch_size):
        starts = torch.arange(lo, min(n, lo + batch_size))  # (b,)
        idx = starts[:, None] + torch.arange(_FRAMES)  # (b, 5) frame indices
        lips = bgr[idx].permute(0, 4, 1, 2, 3).float()  # (b, 5, 224, 224, 3) -> (b, 3, 5, 224, 224)
        cols = _MFCC_PER_FRAME * starts[:, None] + torch.arange(_MFCC_WINDOW)  # (b, 20) columns
        auds = mfcc[:, cols].permute(1, 0, 2).unsqueeze(1)  # (13, b, 20) -> (b, 1, 13, 20)
        vs.append(net.forward_lip(lips.to(device)).float().cpu())
        as_.append(net.forward_aud(auds.to(device)).float().cpu())
    return torch.cat(vs), torch.cat(as_)


def load_public_syncnet(path: str | Path, sha256: str | None = None) -> SyncNetV2:
    """Load syncnet_python's public evaluator weights (``syncnet_v2.model``) into :class:`SyncNetV2`.

    Args:
        path: local file, e.g. :data:`DEFAULT_SYNCNET_V2_PATH` (nothing is downloaded).
        sha256: expected hex digest; checked when given.

    Returns:
        the network in eval mode on the CPU, ``weights_sha256`` set to the file's digest.

    Raises:
        FileNotFoundError: the file is missing; the message says what to download and where.
        ValueError: the checksum does not match, the file is not a PyTorch state dict, or its keys
            / shapes are not those of syncnet_python's ``S`` (message lists the differences).
            Missing ``*.num_batches_tracked`` buffers are tolerated: files saved before PyTorch
            0.4.1 do not have them and they play no role in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"public SyncNet weights not found at {path}. Download syncnet_v2.model from the "
            f"syncnet_python repository (https://github.com/joonson/syncnet_python, "
            f"download_model.sh -> {SYNCNET_V2_URL}) on a machine with internet access and copy it "
            f"to {path} (e.g. {DEFAULT_SYNCNET_V2_PATH}; then pin its sha256). Without it, LSE is "
            f"computed with our own expert SyncNet and labelled 'own expert SyncNet trained on <dataset>'.")
    digest = checked_sha256(path, sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors vary with the file's corruption
        raise ValueError(f"{path} is not a PyTorch state dict readable with torch.load: {err}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    net = SyncNetV2()
    _check_state_dict(dict(state), net, path)
    # a plain dict carries no version metadata, so BatchNorm fills in absent num_batches_tracked
    net.load_state_dict(dict(state), strict=True)
    net.weights_sha256 = digest
    return net.eval()


def _check_state_dict(state: dict, net: SyncNetV2, path: Path) -> None:
    """Raise a ValueError listing missing / unexpected keys and shape mismatches."""
    expected = net.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(f"{k}: {tuple(getattr(state[k], 'shape', ()))} {type(state[k]).__name__} instead of "
                   f"{tuple(expected[k].shape)} Tensor" for k in state.keys() & expected.keys()
                   if not isinstance(state[k], Tensor) or state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not hold syncnet_python's SyncNetModel.S weights: missing keys "
                         f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys "
                         f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, wrong shapes {wrong[:8]}")

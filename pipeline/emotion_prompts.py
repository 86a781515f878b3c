"""The emotion-prompt dataset of the Emotion Intensity Block (paper 004 §2.2; its FED dataset is not
available): templated prompts over adverbs of degree, emotion words, two-emotion phrases and
negations, each with an emotion distribution over :data:`primitives.vocab.EMOTIONS` and a strength.

    python -m pipeline.emotion_prompts --out prompts/emotion_prompts.csv   # seed 0: the file in the repo

Labels (our reading of "emotional values ... determined based on adverbs, adjectives"):

* strength alpha in [0, 1] = the adverb's degree x the word's own degree (``"furious"`` 1.0,
  ``"annoyed"`` 0.5); on the scale of the training labels, alpha = level / 3 for intensity levels
  1-3 (:func:`lightning_modules.emotalker.intensity_strength`).
* one emotion: P = one-hot. Two ("fearful with a little sad", "very angry and disgusted"): P is
  proportional to each emotion's own strength, alpha = the larger one.
* negations ("not angry at all", "calm, not sad"): P = neutral, alpha = 1/3 (MEAD's neutral level 1).

Held-out split: a prompt is ``test`` when it uses any held-out word, adverb or template (one word
per emotion, two adverbs, one single- and one two-emotion template), else ``train``: the test
split measures generalisation to unseen wording, not memorisation.

CSV columns: ``prompt``, ``split`` (train | test), ``strength``, one ``p_<emotion>`` per emotion.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
from pathlib import Path

from primitives.vocab import EMOTIONS

WORDS: dict[str, list[tuple[str, float]]] = {
    "neutral": [("neutral", 1.0), ("calm", 1.0), ("expressionless", 1.0), ("composed", 1.0)],
    "angry": [("angry", 1.0), ("mad", 0.8), ("irritated", 0.6), ("enraged", 1.0), ("annoyed", 0.5), ("furious", 1.0)],
    "contempt": [("contemptuous", 1.0), ("scornful", 1.0), ("disdainful", 1.0), ("sneering", 0.8)],
    "disgusted": [("disgusted", 1.0), ("revolted", 1.0), ("grossed out", 0.8), ("repulsed", 1.0)],
    "fear": [("fearful", 1.0), ("scared", 0.8), ("afraid", 0.8), ("terrified", 1.0), ("nervous", 0.5), ("frightened", 1.0)],
    "happy": [("happy", 1.0), ("cheerful", 0.8), ("joyful", 1.0), ("glad", 0.6), ("delighted", 1.0), ("pleased", 0.6)],
    "sad": [("sad", 1.0), ("unhappy", 0.8), ("gloomy", 0.8), ("sorrowful", 1.0), ("heartbroken", 1.0), ("downcast", 0.8)],
    "surprised": [("surprised", 1.0), ("astonished", 1.0), ("amazed", 1.0), ("startled", 0.8), ("shocked", 1.0)],
}
"""Emotion words with their own degree (1 = the plain word); the last word of each is held out."""
ADVERBS: list[tuple[str, float]] = [
    ("a little", 1 / 3), ("slightly", 1 / 3), ("somewhat", 0.5), ("a bit", 1 / 3), ("", 2 / 3), ("fairly", 2 / 3),
    ("quite", 2 / 3), ("very", 1.0), ("really", 1.0), ("extremely", 1.0), ("incredibly", 1.0)]
"""Adverbs of degree (the empty one: the plain word, MEAD level 2)."""
HELD_OUT_ADVERBS = {"a bit", "incredibly"}
SINGLE_TEMPLATES = ["{a} {w}", "looking {a} {w}", "a {a} {w} face", "the person is {a} {w}",
                    "speaks in a {a} {w} way", "{a} {w} expression"]
PAIR_TEMPLATES = ["{a1} {w1} with {a2} {w2}", "{a1} {w1} and {w2}", "{a1} {w1} but also {a2} {w2}",
                  "{a1} {w1}, {a2} {w2}"]
NEGATION_TEMPLATES = ["not {w} at all", "calm, not {w}", "not {w}", "no longer {w}"]
HELD_OUT_TEMPLATES = {SINGLE_TEMPLATES[-1], PAIR_TEMPLATES[-1], NEGATION_TEMPLATES[-1]}
NEUTRAL_STRENGTH = 1 / 3


def _phrase(text: str) -> str:
    return " ".join(text.split())


def _row(prompt: str, weights: dict[str, float], strength: float, held_out: bool) -> dict:
    total = sum(weights.values())
    return {"prompt": _phrase(prompt), "split": "test" if held_out else "train", "strength": round(strength, 4),
            **{f"p_{e}": round(weights.get(e, 0.0) / total, 4) for e in EMOTIONS}}


def generate_prompts(seed: int = 0, n_train: int = 1200, n_test: int = 300) -> list[dict]:
    """Draw the prompt rows (module docstring): ``n_train`` + ``n_test`` distinct one-emotion and as
    many two-emotion prompts, plus every negation of every word; deterministic for a seed."""
    rng = random.Random(seed)
    emotional = [e for e in EMOTIONS if e != "neutral"]
    held_out_words = {words[-1][0] for words in WORDS.values()}
    rows: dict[str, dict] = {}

    def held(*parts: str) -> bool:
        return any(p in held_out_words or p in HELD_OUT_ADVERBS or p in HELD_OUT_TEMPLATES for p in parts)

    def draw(make, quota: dict[str, int]) -> None:
        while any(quota.values()):
            row = make()
            if quota[row["split"]] and row["prompt"] not in rows:
                rows[row["prompt"]] = row
                quota[row["split"]] -= 1

    def single() -> dict:
        emotion = rng.choice(EMOTIONS)
        (word, degree), template = rng.choice(WORDS[emotion]), rng.choice(SINGLE_TEMPLATES)
        adverb, a_degree = ("", 1.0) if emotion == "neutral" else rng.choice(ADVERBS)
        strength = NEUTRAL_STRENGTH if emotion == "neutral" else min(1.0, a_degree * degree)
        return _row(template.format(a=adverb, w=word), {emotion: 1.0}, strength, held(word, adverb, template))

    def pair() -> dict:
        e1, e2 = rng.sample(emotional, 2)
        (w1, d1), (w2, d2), template = rng.choice(WORDS[e1]), rng.choice(WORDS[e2]), rng.choice(PAIR_TEMPLATES)
        (a1, ad1), (a2, ad2) = rng.choice(ADVERBS), rng.choice(ADVERBS)
        if "{a2}" not in template:  # "very angry and disgusted": the adverb covers both words
            a2, ad2 = a1, ad1
        s1, s2 = min(1.0, ad1 * d1), min(1.0, ad2 * d2)
        return _row(template.format(a1=a1, w1=w1, a2=a2, w2=w2), {e1: s1, e2: s2}, max(s1, s2),
                    held(w1, w2, a1, a2, template))

    draw(single, {"train": n_train, "test": n_test})
    draw(pair, {"train": n_train, "test": n_test})
    for emotion in emotional:  # every negation of every word
        for (word, _), template in itertools.product(WORDS[emotion], NEGATION_TEMPLATES):
            row = _row(template.format(w=word), {"neutral": 1.0}, NEUTRAL_STRENGTH, held(word, template))
            rows.setdefault(row["prompt"], row)
    return list(rows.values())


def read_prompts(path: str | Path) -> list[dict]:
    """Rows of a prompt CSV: ``prompt`` (str), ``split`` (str), ``strength`` (float), ``target``
    (list of len(EMOTIONS) floats summing to 1). Raises ``ValueError`` on a missing column."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"prompt", "split", "strength", *(f"p_{e}" for e in EMOTIONS)} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        return [{"prompt": r["prompt"], "split": r["split"], "strength": float(r["strength"]),
                 "target": [float(r[f"p_{e}"]) for e in EMOTIONS]} for r in reader]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("prompts/emotion_prompts.csv"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = generate_prompts(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n_test = sum(r["split"] == "test" for r in rows)
    print(f"{args.out}: {len(rows)} prompts ({len(rows) - n_test} train, {n_test} test, seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

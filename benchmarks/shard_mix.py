"""How mixed are training batches? Shard membership by id order vs by hash (pipeline.extract.shards).

A synthetic MEAD-shaped training split (speakers x emotions x levels x clips, ids as the MEAD
reader writes them) is planned into shards of ``--clips-per-shard`` both ways; the training stream
is simulated as the DataModule builds it (shards drawn at random with replacement, every clip cut
into ``--windows-per-clip`` windows, ``wds.shuffle`` with the buffer, batches of ``--batch``), and
the median number of distinct emotions and speakers per batch is printed for each layout.

    python benchmarks/shard_mix.py [--buffer 64] [--batches 500] [--docs]

``--docs`` also writes the table to ``docs/figures/shard_mix_<buffer>.md`` (:mod:`figures`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from figures import docs_figure  # noqa: E402
from pipeline.extract.shards import plan_shards  # noqa: E402

EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")


def mead_rows(speakers: int, clips: int) -> list[dict]:
    """MEAD's shape: neutral at level 1 only, the other emotions at levels 1-3, ``clips`` each."""
    rows = []
    for s in range(speakers):
        speaker = f"{'MW'[s % 2]}{s:03d}"
        for emotion in EMOTIONS:
            for level in ((1,) if emotion == "neutral" else (1, 2, 3)):
                rows += [{"id": f"{speaker}_{emotion}_level_{level}_{c:03d}", "split": "train", "speaker": speaker,
                          "emotion": emotion} for c in range(clips)]
    return rows


def batch_mix(rows: list[dict], order: str, args) -> tuple[float, float]:
    by_id = {r["id"]: r for r in rows}
    shards = [p.clip_ids for p in plan_shards(rows, args.clips_per_shard, order)]
    rng = random.Random(0)

    def windows():
        while True:
            for clip in rng.choice(shards):
                yield from [by_id[clip]] * args.windows_per_clip

    stream = wds.shuffle(args.buffer, initial=min(64, args.buffer), seed="0")(windows())
    emotions, speakers = [], []
    for _ in range(args.batches):
        batch = [next(stream) for _ in range(args.batch)]
        emotions.append(len({w["emotion"] for w in batch}))
        speakers.append(len({w["speaker"] for w in batch}))
    return statistics.median(emotions), statistics.median(speakers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", type=int, default=48)
    p.add_argument("--clips", type=int, default=30, help="clips per (speaker, emotion, level)")
    p.add_argument("--clips-per-shard", type=int, default=8)
    p.add_argument("--windows-per-clip", type=int, default=4)
    p.add_argument("--buffer", type=int, default=64, help="params.yaml's train.data.shuffle_buffer")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=500)
    p.add_argument("--docs", action="store_true", help="also write docs/figures/shard_mix_<buffer>.md")
    args = p.parse_args()
    rows = mead_rows(args.speakers, args.clips)
    with docs_figure(f"shard_mix_{args.buffer}", args.docs, markdown=True):
        print(f"{len(rows)} clips, {args.clips_per_shard} per shard, {args.windows_per_clip} windows per clip, "
              f"shuffle buffer {args.buffer}, batch {args.batch}, {args.batches} batches\n")
        print("| shard membership | median emotions / batch | median speakers / batch |")
        print("|---|---|---|")
        for order in ("id", "hash"):
            emotions, speakers = batch_mix(rows, order, args)
            print(f"| {order} | {emotions:g} of {len(EMOTIONS)} | {speakers:g} of {args.speakers} |")


if __name__ == "__main__":
    main()

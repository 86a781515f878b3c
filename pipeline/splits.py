"""Train / val / test assignment of manifest rows.

Speaker split (:func:`assign_speaker_splits`, the default): no speaker is in two splits. Speakers
are grouped by sex ("female", "male", and "" = unknown, in that sorted order); each group is
sorted, shuffled with a NumPy generator seeded from ``(seed, crc32(group))`` and cut by the
fractions with largest-remainder rounding. The rounding error of a group is carried into the next
group's quotas, so split totals follow the fractions even when every group is small (10 F + 10 M
at 0.7/0.15/0.15 gives 7/2/1 + 7/1/2 = 14/3/3). When there are at least as many speakers as splits
with a positive fraction (3 for train/val/test), an empty split takes one speaker from the
largest split (from its largest sex group, the last one assigned). The result depends only on
the set of (speaker, sex) pairs and the seed, not on row order.

Listed splits (:func:`assign_listed_splits`): ``split: lists`` reads one file of clip ids per split
(e.g. the EAPC authors' MEAD M003 lists), ``split: eapc_authors`` applies their CREMA-D rule
(:func:`eapc_authors_crema_d_lists`); clips in no list are recorded as dropped.

Sentence split (:func:`assign_sentence_splits`, MEAD's protocol): every speaker is in every split;
within each (speaker, emotion, intensity) group, clips ordered by sentence index go: the last ones
to test, the ones before them to val, the rest to train (rule in the function docstring).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.datasets import ClipRow
from pipeline.params import ParamsError

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names the shards and datamodules understand."""


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check ``manifest.split_fractions``.

    Args:
        fractions: split name -> fraction of speakers.

    Returns:
        The fractions as floats, in the given order.

    Raises:
        ParamsError (a ValueError): not a mapping, a name outside train/val/test, no train, a
            negative or non-numeric fraction, or a sum that is not 1 within 1e-6.
    """
    key = "manifest.split_fractions"
    if not isinstance(fractions, Mapping) or not fractions:
        raise ParamsError(f"{key}: must be a mapping split -> fraction, e.g. {{train: 0.8, val: 0.1, test: 0.1}}; "
                          f"got {fractions!r}")
    out = {}
    for name, value in fractions.items():
        if name not in SPLITS:
            raise ParamsError(f"{key}.{name}: unknown split (expected {', '.join(SPLITS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ParamsError(f"{key}.{name}: must be a number >= 0, got {value!r}")
        out[name] = float(value)
    if out.get("train", 0.0) <= 0:
        raise ParamsError(f"{key}.train: must be > 0 (got {fractions.get('train')!r})")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ParamsError(f"{key}: fractions must sum to 1, got {total:.6g} ({out})")
    return out


def _largest_remainder(quotas: list[float], n: int, allowed: list[bool]) -> list[int]:
    """Integer counts summing to ``n`` close to ``quotas``; ties go to the earlier split."""
    counts = [max(0, math.floor(q + 1e-9)) if ok else 0 for q, ok in zip(quotas, allowed)]
    while sum(counts) > n:  # only after negative carries: take back from the most over-allocated
        i = max((i for i, c in enumerate(counts) if c > 0), key=lambda i: counts[i] - quotas[i])
        counts[i] -= 1
    order = sorted((i for i, ok in enumerate(allowed) if ok), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _speaker_sex(rows: list[ClipRow]) -> dict[str, str]:
    """Speaker -> sex; a speaker whose rows disagree (or are all unknown) is in the "" group."""
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        seen[row.speaker].add(row.sex)
    return {spk: next(iter(sexes)) if len(sexes) == 1 else "" for spk, sexes in seen.items()}


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParamsError(f"manifest.seed: must be an integer >= 0, got {seed!r}")


def assign_speaker_splits(rows: list[ClipRow], fractions: Mapping[str, float], seed: int,
                          fixed: Mapping[str, str] | None = None) -> list[ClipRow]:
    """Assign speaker-disjoint splits, stratified by sex (algorithm in the module docstring).

    Args:
        rows: manifest rows (any order; ``split`` is overwritten).
        fractions: split name -> fraction of each sex group's speakers (``manifest.split_fractions``).
        seed: non-negative integer; the same seed gives the same assignment.
        fixed: speaker -> split for speakers whose split is given (e.g. a paper's test speakers);
            they are left out of the random assignment of the others.

    Returns:
        New rows, in the input order, with ``split`` set.

    Raises:
        ParamsError (a ValueError): invalid fractions (see :func:`validate_fractions`) or seed, a
            fixed split that is not a split name, or a fixed speaker with no clip.
    """
    fractions = validate_fractions(fractions)
    _check_seed(seed)
    fixed = {str(k): v for k, v in (fixed or {}).items()}
    names = list(fractions)
    speakers_sex = _speaker_sex(rows)
    for speaker, split in sorted(fixed.items()):
        if split not in names:
            raise ParamsError(f"speaker_splits: speaker {speaker} -> {split!r} is not a split ({', '.join(names)})")
        if speaker not in speakers_sex:
            raise ParamsError(f"speaker_splits: speaker {speaker} has no clip in this dataset")
    allowed = [fractions[s] > 0 for s in names]
    groups: dict[str, list[str]] = defaultdict(list)
    for speaker, sex in speakers_sex.items():
        if speaker not in fixed:
            groups[sex].append(speaker)
    members: dict[str, list[tuple[str, str]]] = {s: [] for s in names}
    carry = [0.0] * len(names)
    for group in sorted(groups):
        speakers = sorted(groups[group])
        rng = np.random.default_rng([int(seed), zlib.crc32(group.encode())])
        speakers = [speakers[i] for i in rng.permutation(len(speakers))]
        quotas = [len(speakers) * fractions[s] + c for s, c in zip(names, carry)]
        counts = _largest_remainder(quotas, len(speakers), allowed)
        carry = [q - c for q, c in zip(quotas, counts)]
        start = 0
        for split, count in zip(names, counts):
            members[split].extend((group, spk) for spk in speakers[start:start + count])
            start += count
    _fill_empty_splits(members, [s for s, ok in zip(names, allowed) if ok])
    split_of = {spk: split for split, pairs in members.items() for _, spk in pairs} | fixed
    return [dataclasses.replace(row, split=split_of[row.speaker]) for row in rows]


def _fill_empty_splits(members: dict[str, list[tuple[str, str]]], positive: list[str]) -> None:
    """Give each empty positive split one speaker from the largest split, if there are enough speakers."""
    if sum(len(m) for m in members.values()) < len(positive):
        return
    for split in positive:
        if members[split]:
            continue
        donor = max(positive, key=lambda s: len(members[s]))
        per_group = Counter(group for group, _ in members[donor])
        group = max(sorted(per_group), key=lambda g: per_group[g])
        index = max(i for i, (g, _) in enumerate(members[donor]) if g == group)
        members[split].append(members[donor].pop(index))


def _sentence_key(row: ClipRow) -> tuple:
    digits = row.sentence.isascii() and row.sentence.isdigit()
    return (0, int(row.sentence), row.id) if digits else (1, row.sentence, row.id)


def _take(n: int, available: int, fraction: float) -> int:
    """Clips a group of ``n`` gives from its ``available`` ones: max(1, round_half_up(n*fraction)), leaving >= 1."""
    if available < 2 or fraction <= 0:
        return 0
    return min(available - 1, max(1, math.floor(n * fraction + 0.5)))


def assign_sentence_splits(rows: list[ClipRow], test_fraction: float, val_fraction: float,
                           seed: int = 0) -> list[ClipRow]:
    """Assign MEAD-style sentence splits: held-out sentences of seen speakers.

    Rule, per (speaker, emotion, intensity) group of n clips ordered by sentence index (numeric
    when all digits, else by text, then id): ``n_test = max(1, round_half_up(n * test_fraction))``
    when ``n >= 2`` (else 0), never taking the last training clip; the last ``n_test`` clips go
    to test. Of the remaining ``r = n - n_test``, ``n_val = max(1, round_half_up(n * val_fraction))``
    when ``r >= 2`` (else 0), again leaving at least one train clip; the ``n_val`` clips just
    before the test clips go to val. The rest are train. A group of one clip is all train.
    Since MEAD numbers the same sentence the same way for every speaker, val and test sentences
    are then also unseen in train for every speaker. Val is not speaker-disjoint.

    Args:
        rows: manifest rows (any order; ``split`` is overwritten).
        test_fraction: fraction of each group's sentences for test (``test_sentences``).
        val_fraction: fraction of each group's sentences for val (``val_sentences``).
        seed: accepted for a uniform interface; the rule is deterministic and does not use it.

    Returns:
        New rows, in the input order, with ``split`` set.

    Raises:
        ParamsError (a ValueError): a negative fraction, or ``test_fraction + val_fraction >= 1``.
    """
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ParamsError(f"{name} (test_sentences / val_sentences): must be in [0, 1), got {value!r}")
    if test_fraction + val_fraction >= 1:
        raise ParamsError(f"test_fraction + val_fraction must be < 1, got {test_fraction} + {val_fraction}")
    groups: dict[tuple, list[ClipRow]] = defaultdict(list)
    for row in rows:
        groups[(row.speaker, row.emotion, row.intensity)].append(row)
    split_of: dict[str, str] = {}
    for members in groups.values():
        ordered = sorted(members, key=_sentence_key)
        n_test = _take(len(ordered), len(ordered), test_fraction)
        n_val = _take(len(ordered), len(ordered) - n_test, val_fraction)
        n_train = len(ordered) - n_test - n_val
        for i, row in enumerate(ordered):
            split_of[row.id] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return [dataclasses.replace(row, split=split_of[row.id]) for row in rows]


def eapc_authors_crema_d_lists(summary_table: str | Path) -> dict[str, list[str]]:
    """Paper 001's (EAPC) CREMA-D split as its authors made it (``../shared/reference/README.md``,
    "eapc-authors/"): the sorted set of ``FileName`` in ``summaryTable.csv``, shuffled by Python's
    ``random.seed(0); random.shuffle``, the first ``floor(0.8 n)`` ids train, the rest test. By clip,
    not by speaker: all 91 actors are in both splits; no validation split (they selected models on test).

    Raises:
        FileNotFoundError: no table at ``summary_table``; ValueError: it has no ``FileName`` column.
    """
    import random

    import pandas as pd

    path = Path(summary_table)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CREMA-D's summaryTable.csv is needed for split: eapc_authors")
    table = pd.read_csv(path)
    if "FileName" not in table.columns:
        raise ValueError(f"{path}: no FileName column")
    ids = sorted(set(table["FileName"].astype(str)))
    random.seed(0)  # their rule; the global state is restored below
    state = random.getstate()
    try:
        random.seed(0)
        random.shuffle(ids)
    finally:
        random.setstate(state)
    n = int(0.8 * len(ids))
    return {"train": ids[:n], "test": ids[n:]}


def read_split_lists(paths: Mapping[str, str]) -> dict[str, list[str]]:
    """``{split: file}`` -> ``{split: clip ids}``, one id per line; MEAD paths as the EAPC authors
    list them (``M003/angry/level_1/00001``) become our MEAD ids (``M003_angry_1_001``: MEAD's
    3-digit file names).

    Raises:
        ParamsError: a split outside train/val/test; FileNotFoundError: a missing list file.
    """
    lists = {}
    for split, file in paths.items():
        if split not in SPLITS:
            raise ParamsError(f"split_lists.{split}: unknown split (expected {', '.join(SPLITS)})")
        if not Path(file).is_file():
            raise FileNotFoundError(f"split_lists.{split}: {file} does not exist")
        lists[split] = [_list_id(line.strip()) for line in Path(file).read_text().splitlines() if line.strip()]
    return lists


def _list_id(entry: str) -> str:
    parts = entry.split("/")
    if len(parts) == 4 and parts[2].startswith("level_"):  # MEAD: speaker/emotion/level_n/clip
        return f"{parts[0]}_{parts[1]}_{parts[2].removeprefix('level_')}_{int(parts[3]):03d}"
    return entry


def assign_listed_splits(rows: list[ClipRow], lists: Mapping[str, list[str]]) -> tuple[list[ClipRow], list[ClipRow]]:
    """Rows whose id is in one of ``lists`` get that split; ``(kept, unlisted)``: the rows of no
    list are returned apart (the manifest records each as a dropped clip, never silently).

    Raises:
        ParamsError: an id listed in two splits.
    """
    split_of: dict[str, str] = {}
    for split, ids in lists.items():
        for clip_id in ids:
            if split_of.setdefault(clip_id, split) != split:
                raise ParamsError(f"split lists: {clip_id} is listed in {split_of[clip_id]} and {split}")
    kept = [dataclasses.replace(r, split=split_of[r.id]) for r in rows if r.id in split_of]
    return kept, [r for r in rows if r.id not in split_of]

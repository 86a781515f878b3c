"""Label vocabularies shared by every dataset reader, shard and model.

One emotion vocabulary serves CREMA-D (6 emotions) and MEAD (8): MEAD's folder names, in a fixed
order, so an ``emotion_id`` means the same thing in every shard and checkpoint.
"""

EMOTIONS: tuple[str, ...] = (
    "neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised",
)
"""The shared emotion names; ``EMOTIONS.index(name)`` is the class id used by every model."""

EMOTION_TO_ID: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

CREMA_D_EMOTIONS: dict[str, str] = {
    "NEU": "neutral", "ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy", "SAD": "sad",
}
"""CREMA-D file-name emotion code -> shared name (CREMA-D has no contempt or surprise)."""

CREMA_D_VOTES: dict[str, str] = {
    "N": "neutral", "A": "angry", "D": "disgusted", "F": "fear", "H": "happy", "S": "sad",
}
"""CREMA-D ``summaryTable.csv`` crowd-vote letter -> shared name."""

CREMA_D_LEVELS: dict[str, int] = {"XX": 0, "LO": 1, "MD": 2, "HI": 3}
"""CREMA-D intensity code -> intensity (0 = unspecified, 1 = low, 2 = medium, 3 = high)."""

MEAD_LEVELS: tuple[int, ...] = (1, 2, 3)
"""MEAD intensity levels (``level_<n>`` folders); neutral is recorded at level 1 only."""

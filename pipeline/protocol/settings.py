"""``evaluate.protocol``: the reference each clip is rendered from, and which test clips are scored,
so each paper's table is scored on the data it was scored on."""

from __future__ import annotations

from dataclasses import dataclass

from primitives.vocab import EMOTIONS

REFERENCES = ("first_frame", "neutral")


@dataclass
class ProtocolSettings:
    """``evaluate.protocol`` (presets set a paper's values).

    Attributes:
        reference: ``first_frame`` (the clip's own first frame: the lip-sync protocol, papers 000 /
            001 / 003) or ``neutral`` (the first frame of the speaker's first neutral test clip:
            papers 002 / 004's I_n; a clip whose speaker has none is a counted skip).
        emotions: score only clips of these emotions (sinha Table 5: ``[neutral]``); None: all.
        intensities: only these levels (EmoTalker: MEAD ``[3]``); None: all.
        speakers: only these speakers (e.g. EAT's MEAD test speakers M003, M030, W009, W015); None: all.
    """

    reference: str = "first_frame"
    emotions: list[str] | None = None
    intensities: list[int] | None = None
    speakers: list[str] | None = None

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"evaluate.protocol.reference: one of {', '.join(REFERENCES)}, got {self.reference!r}")
        unknown = sorted(set(self.emotions or ()) - set(EMOTIONS))
        if unknown:
            raise ValueError(f"evaluate.protocol.emotions: unknown {unknown} (known: {', '.join(EMOTIONS)})")
        if self.speakers is not None:
            self.speakers = [str(s) for s in self.speakers]

    def keeps(self, meta: dict) -> bool:
        """Whether a clip (its ``meta.json``) passes the filters."""
        return ((self.emotions is None or meta["emotion"] in self.emotions)
                and (self.intensities is None or int(meta["intensity"]) in self.intensities)
                and (self.speakers is None or str(meta["speaker"]) in self.speakers))

    def describe(self) -> str:
        """The filters as one line (``all test clips`` when none)."""
        parts = [f"{name} in {value}" for name, value in (("emotion", self.emotions), ("level", self.intensities),
                                                           ("speaker", self.speakers)) if value is not None]
        return "test clips with " + ", ".join(parts) if parts else "all test clips"

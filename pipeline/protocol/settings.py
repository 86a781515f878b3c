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
        max_frames: render and score the first ``max_frames`` frames of each clip (with their audio,
            mel and landmarks: :func:`pipeline.protocol.clips.first_frames`); None: the whole clip
            (the papers'). A bound for the CPU sample run, whose evaluators cost ~0.5 s a frame.
    """

    reference: str = "first_frame"
    emotions: list[str] | None = None
    intensities: list[int] | None = None
    speakers: list[str] | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"evaluate.protocol.reference: one of {', '.join(REFERENCES)}, got {self.reference!r}")
        unknown = sorted(set(self.emotions or ()) - set(EMOTIONS))
        if unknown:
            raise ValueError(f"evaluate.protocol.emotions: unknown {unknown} (known: {', '.join(EMOTIONS)})")
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f"evaluate.protocol.max_frames: must be >= 2 (frame 0 is the reference) or null, "
                             f"got {self.max_frames}")
        if self.speakers is not None:
            self.speakers = [str(s) for s in self.speakers]

    def keeps(self, meta: dict) -> bool:
        """Whether a clip (its ``meta.json``) passes the filters."""
        return ((self.emotions is None or meta["emotion"] in self.emotions)
                and (self.intensities is None or int(meta["intensity"]) in self.intensities)
                and (self.speakers is None or str(meta["speaker"]) in self.speakers))

    def describe(self) -> str:
        """The filters and the frame bound as one line (``all test clips`` when none)."""
        parts = [f"{name} in {value}" for name, value in (("emotion", self.emotions), ("level", self.intensities),
                                                           ("speaker", self.speakers)) if value is not None]
        clips = "test clips with " + ", ".join(parts) if parts else "all test clips"
        return clips if self.max_frames is None else f"{clips}, their first {self.max_frames} frames"

"""The one exception type per-clip extraction steps raise for bad input."""


class ClipFailure(Exception):
    """A clip that cannot be turned into a sample; recorded in ``failures.jsonl``, never fatal.

    Args:
        step: the pipeline step that failed (``"decode"``, ``"audio"``, ``"landmarks"``, ...).
        reason: a human-readable reason naming what was wrong (e.g. ``"no audio track"``).
    """

    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason

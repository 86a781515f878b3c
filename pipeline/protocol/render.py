"""Rendering test clips through a generator's ``generate`` (the shared ``VideoGenerator`` interface)."""

from __future__ import annotations

import inspect

import numpy as np
import torch


CLIP_INPUTS = ("phones", "mfcc", "llf")
"""Shard arrays a generator's ``generate`` may take by name, beside the protocol's mel (sinha's
phones, EAPC stage 1's MFCC windows and low-level features)."""

def clip_inputs(generator, clip: dict) -> dict[str, torch.Tensor]:
    """The :data:`CLIP_INPUTS` of ``clip`` that ``generator.generate`` takes, as (1, ...) tensors."""
    takes = inspect.signature(generator.generate).parameters
    return {k: torch.from_numpy(clip[k])[None] for k in CLIP_INPUTS if k in takes and k in clip}

def groups(items, size: int):
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group

def _pad_stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """(N_i, ...) arrays -> (B, max N_i, ...), each padded at the end by repeating its last row."""
    longest = max(len(a) for a in arrays)
    return torch.from_numpy(np.stack([np.concatenate([a, np.repeat(a[-1:], longest - len(a), axis=0)])
                                      for a in arrays]))

@torch.no_grad()
def render_clips(generator, clips: list[dict], frames_key: str, references: list[dict] | None = None
                 ) -> list[torch.Tensor]:
    """The protocol's rendering of each clip: its first frame (and its landmarks) as the reference, or
    ``references[i]`` (``{"frame": (S, S, 3) uint8, "lmk": (68, 2)}``, e.g. the speaker's neutral
    frame), its own audio, emotion label and (for methods that take one) level, as many frames as
    it has -> a (T_i, S, S, 3) uint8 CPU tensor per clip.

    Several clips (only for a generator with ``batch_clips``, see
    :class:`lightning_modules.generation.VideoGenerator`) go through ONE ``generate`` call: per-frame
    inputs padded to the longest clip by repeating their last row, outputs cut back to each clip's
    length, so every clip gets the frames it gets alone.

    Raises:
        ValueError: several clips for a generator without ``batch_clips``.
    """
    if len(clips) > 1 and not getattr(generator, "batch_clips", False):
        raise ValueError(f"{type(generator).__name__} renders one clip per generate call (no batch_clips)")
    lengths = [len(c[frames_key]) for c in clips]
    reference = torch.from_numpy(np.stack([c[frames_key][0] for c in clips]))  # (B, S, S, 3)
    ref_lmk = torch.from_numpy(np.stack([c["lmk"][0] for c in clips]))
    if references is not None:
        reference = torch.from_numpy(np.stack([r["frame"] for r in references]))
        ref_lmk = torch.from_numpy(np.stack([r["lmk"] for r in references]))
    inputs = {k: _pad_stack([c[k] for c in clips]) for k in clip_inputs(generator, clips[0])}
    if "intensity" in inspect.signature(generator.generate).parameters:  # the clip's level, 0 = unspecified
        inputs["intensity"] = torch.tensor([int(c["meta"]["intensity"]) for c in clips])
    video = generator.generate(reference, _pad_stack([c["mel"] for c in clips]),
                               torch.tensor([c["meta"]["emotion_id"] for c in clips]), max(lengths),
                               ref_lmk=ref_lmk, **inputs).cpu()
    return [video[i, :n] for i, n in enumerate(lengths)]

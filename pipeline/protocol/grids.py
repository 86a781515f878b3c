"""Image grids of a generator's control: emotions x levels (papers 000 / 002) and prompts x strengths
(paper 004), saved as PNG for MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.params import get
from pipeline.protocol.render import clip_inputs


@torch.no_grad()
def emotion_grid(generator, clip: dict, frames_key: str, path: Path, n_frames: int = 6,
                 intensities: tuple[int, ...] = (1, 3)) -> Path:
    """Emotion control (paper 000 Fig. 2, paper 002 Fig. 5): the clip's reference and audio rendered
    with each of CREMA-D's six emotions; rows = emotions (x ``intensities``, low / high, when the
    generator's ``generate`` takes an ``intensity``), columns = every 4th frame. Saved as a PNG.
    A generator with ``takes_emotion = False`` (its frames do not depend on ``emotion``) gets
    ``<path stem>.txt`` saying so instead of a grid of identical rows; that path is returned."""
    import inspect

    if not getattr(generator, "takes_emotion", True):
        note = path.with_suffix(".txt")
        note.write_text(f"No emotion grid: {type(generator).__name__}.generate ignores the target emotion "
                        f"({getattr(generator, 'emotion_source', 'it has no emotion input')}), so every row "
                        "would be the same video.\n")
        return note

    from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID

    real = torch.from_numpy(clip[frames_key])
    mel = torch.from_numpy(clip["mel"])[None]
    ref_lmk = torch.from_numpy(clip["lmk"][:1])
    levels = intensities if "intensity" in inspect.signature(generator.generate).parameters else (None,)
    rows = []
    for name in CREMA_D_EMOTIONS.values():
        for level in levels:
            extra = {} if level is None else {"intensity": torch.tensor([level])}
            frames = generator.generate(real[:1], mel, torch.tensor([EMOTION_TO_ID[name]]), 4 * n_frames,
                                        ref_lmk=ref_lmk, **extra, **clip_inputs(generator, clip))[0].cpu()
            rows.append((row_label(name, level), frames.numpy()))
    return draw_emotion_grid(rows, path, n_frames)


def row_label(emotion: str, level: int | None) -> str:
    """An emotion grid row's label: ``happy``, or ``happy 3`` for a generator that takes a level."""
    return emotion if level is None else f"{emotion} {level}"


def draw_emotion_grid(rows: list[tuple[str, np.ndarray]], path: Path, n_frames: int = 6, stride: int = 4) -> Path:
    """Save labelled renderings as one PNG: a row per ``(label, (T, S, S, 3) uint8 video)``, its
    frames 0, ``stride``, 2 ``stride``, ... (at most ``n_frames``) as the columns."""
    import cv2

    strips = []
    for label, video in rows:
        strip = np.ascontiguousarray(np.concatenate(list(video[::stride][:n_frames]), axis=1))  # (S, n_frames * S, 3)
        cv2.putText(strip, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        strips.append(strip)
    width = max(strip.shape[1] for strip in strips)  # a shorter rendering leaves its row's end black
    strips = [np.pad(strip, ((0, 0), (0, width - strip.shape[1]), (0, 0))) for strip in strips]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(strips, axis=0), cv2.COLOR_RGB2BGR))
    return path


@torch.no_grad()
def prompt_grid(generator, clip: dict, frames_key: str, params: dict, path: Path) -> Path:
    """Paper 004 Fig. 2-3: the clip's reference rendered with each of ``evaluate.prompt_grid.prompts``
    (rows) at each cross-attention strength of ``evaluate.prompt_grid.strengths`` (columns); one
    frame (the middle of 8) per cell, the reference first."""
    import cv2

    grid = get(params, "evaluate.prompt_grid", dict, default={}) or {}
    prompts = list(grid.get("prompts") or ["very happy"])
    strengths = [float(v) for v in grid.get("strengths") or [0.0, 1.0]]
    real = torch.from_numpy(clip[frames_key])
    n = min(8, len(real))
    rows = []
    for prompt in prompts:
        cells = [real[0].numpy().copy()]
        for strength in strengths:
            video = generator.generate(real[:1], torch.from_numpy(clip["mel"])[None], torch.tensor([clip["meta"]["emotion_id"]]),
                                       n, ref_lmk=torch.from_numpy(clip["lmk"][:1]), prompt=prompt, strength=strength,
                                       **clip_inputs(generator, clip))[0].cpu()
            cell = video[n // 2].numpy().copy()
            cv2.putText(cell, f"{strength:g}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(cell)
        row = np.concatenate(cells, axis=1)
        cv2.putText(row, prompt, (4, row.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path

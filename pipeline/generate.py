"""``generate``: any photo + audio (or text) + emotion -> a talking-face MP4, for every video method.

    generate --method cvae --image face.jpg --audio speech.wav --emotion happy --out out.mp4
    generate --method sinha --image face.jpg --text "Don't forget a jacket." --emotion sad --intensity 3 --out o.mp4
    generate --method cvae --jobs jobs.csv        # columns: image, audio | text, emotion, out [, intensity]

The checkpoint is ``models/<method>/<dataset>/last.ckpt`` (``--dataset``, default crema_d) or
``--checkpoint``. The photo goes through the preprocessing's detector, mesh and alignment
(:mod:`pipeline.photo`); the audio (any format and rate soundfile or FFmpeg reads, resampled to
16 kHz; or speech from :mod:`pipeline.tts`) through the preprocessing's audio features; the method
renders at its crop size; the crops are pasted back into the photo with a feathered mask
(``--crop-only`` keeps the crop), and the MP4 (H.264 + AAC, 25 fps) is written to a temporary name
and renamed when complete, so a failed job never leaves a file that looks finished.

Bad input gives one line on stderr and exit status 2 (in a jobs file: one line per failed job,
the other jobs still run, status 2 at the end).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import pickle
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.extract.audio import AudioConfig, check_not_silent, extract_audio_features, fit_to_frames, load_audio
from pipeline.extract.errors import ClipFailure
from pipeline.photo import InputError, PreparedFace, paste_back, prepare_face, read_image
from primitives.vocab import EMOTION_TO_ID, EMOTIONS

FPS = 25
SAMPLE_RATE = 16000
MIN_SECONDS = 0.5


@dataclass(frozen=True)
class GenerateConfig:
    """Limits and options of a ``generate`` run (CLI flags of the same names).

    Attributes:
        max_seconds: longest accepted audio (longer: an error, not a silent cut).
        silence_dbfs: audio whose RMS level is below this is refused (preprocessing's threshold).
        crop_only: write the aligned crop instead of the whole photo.
        replace_background: for methods that offer it (sinha, paper 002 A.1): the photo's background
            is swapped for the training backdrop while rendering, and restored afterwards.
        tts_engine: ``pipeline.tts.ENGINES`` entry for text input.
        face_scale, lmk_size: the preprocessing's ``crop_face_scale`` and ``max(crop_sizes)``.
        max_side: photos are downscaled to this long side first.
    """

    max_seconds: float = 60.0
    silence_dbfs: float = -55.0
    crop_only: bool = False
    replace_background: bool = True
    tts_engine: str = "hibari"
    face_scale: float = 0.6
    lmk_size: int = 256
    max_side: int = 1920


@dataclass(frozen=True)
class Job:
    """One video to make: ``audio`` or ``text`` (exactly one), ``emotion`` a name of ``EMOTIONS``."""

    image: str
    emotion: str
    out: str
    audio: str | None = None
    text: str | None = None
    intensity: int | None = None
    prompt: str | None = None


def default_checkpoint(method: str, dataset: str) -> Path:
    """``models/<method>/<dataset>/last.ckpt``; for a method in ``VIDEO_MODELS`` (``eapc``) the
    checkpoint that renders its video (``models/eapc_vid2vid/...``)."""
    from lightning_modules import VIDEO_MODELS

    return Path("models") / VIDEO_MODELS.get(method, method) / dataset / "last.ckpt"


def load_method(method: str, checkpoint: Path):
    """The trained method in eval mode on the CPU (or CUDA when present).

    Raises:
        InputError: unknown or not video-generating method, missing checkpoint, or a checkpoint of
            another method (by its ``config.json``, or because its weights do not fit).
    """
    from lightning_modules import METHODS, VIDEO_MODELS

    method = VIDEO_MODELS.get(method, method)  # eapc renders through its stage-2 checkpoint
    video_methods = sorted(m for m, cls in METHODS.items() if hasattr(cls, "generate"))
    if method not in video_methods:
        raise InputError(f"--method {method!r} is not a video-generating method (known: {', '.join(video_methods)})")
    if not checkpoint.is_file():
        raise InputError(f"no checkpoint at {checkpoint} (train it with `dvc repro`, or pass --checkpoint)")
    config = checkpoint.parent / "config.json"
    if config.is_file():
        trained = json.loads(config.read_text()).get("method")
        if trained and trained != method:
            raise InputError(f"{checkpoint} is a {trained} checkpoint, not {method}")
    if not zipfile.is_zipfile(checkpoint):  # torch.save's format since PyTorch 1.6
        raise InputError(f"{checkpoint.name} is not a PyTorch checkpoint (a truncated or foreign file)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = METHODS[method].load_from_checkpoint(checkpoint, map_location=device)
    except (RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{checkpoint} is not a {method} checkpoint ({first[:200]})") from None
    return model.eval()


def read_audio(job: Job, cfg: GenerateConfig) -> np.ndarray:
    """The job's speech as (N,) float32 at 16 kHz: its audio file, or TTS of its text.

    Raises:
        InputError: unreadable, silent, too short or too long audio; empty text; TTS failure.
    """
    from pipeline.tts import TTSError, synthesize

    try:
        if job.text is not None:
            wav = synthesize(job.text, cfg.tts_engine, SAMPLE_RATE)
            source = "the synthesized speech"
        else:
            path = Path(job.audio)
            if not path.is_file():
                raise InputError(f"audio not found: {path}")
            wav, _ = load_audio(path, SAMPLE_RATE)
            source = path.name
        check_not_silent(wav, cfg.silence_dbfs)
    except InputError:
        raise
    except ClipFailure as failure:
        raise InputError(failure.reason) from None
    except (TTSError, ValueError) as err:  # TTS: empty / over-long text, engine missing or failing
        raise InputError(str(err)) from None
    seconds = len(wav) / SAMPLE_RATE
    if seconds > cfg.max_seconds:
        raise InputError(f"{source} is {seconds:.1f} s long; the limit is {cfg.max_seconds:g} s (--max-seconds)")
    if seconds < MIN_SECONDS:
        raise InputError(f"{source} is {seconds:.2f} s long; at least {MIN_SECONDS} s of speech is needed")
    return wav


def emotion_id(name: str) -> int:
    """``EMOTIONS`` index of ``name`` (case-insensitive). Raises InputError naming the choices."""
    key = str(name).strip().lower()
    if key not in EMOTION_TO_ID:
        raise InputError(f"unknown emotion {name!r} (choose from: {', '.join(EMOTIONS)})")
    return EMOTION_TO_ID[key]


def method_inputs(model, face: PreparedFace, wav: np.ndarray, job: Job,
                  replace_background: bool) -> tuple[tuple, dict]:
    """Arguments of ``model.generate`` for one job: the protocol's five plus what the method takes
    by name (landmarks, intensity, phones, EAPC's mfcc / llf, background replacement, prompt)."""
    cfg = AudioConfig(sample_rate=SAMPLE_RATE, fps=FPS)
    n_frames = len(wav) // cfg.samples_per_frame
    wav = fit_to_frames(wav, n_frames, cfg)
    features = extract_audio_features(wav, n_frames, cfg)
    mel = torch.from_numpy(features["mel"])[None]
    takes = inspect.signature(model.generate).parameters
    kwargs: dict = {"ref_lmk": torch.from_numpy(face.lmk)[None],
                    **{k: torch.from_numpy(features[k])[None] for k in ("mfcc", "llf") if k in takes}}
    if "intensity" in takes:
        kwargs["intensity"] = torch.tensor([job.intensity or 0])  # 0: unspecified (the method's default)
    elif job.intensity:
        raise InputError("this method takes no --intensity")
    if "prompt" in takes:
        if job.prompt is not None:
            from lightning_modules.networks.intensity import split_clauses

            try:
                split_clauses(job.prompt)  # a prompt with no words is the user's error, not a crash
            except ValueError as err:
                raise InputError(str(err)) from None
        kwargs["prompt"] = job.prompt
    elif job.prompt:
        raise InputError("this method takes no --prompt (free-text emotion prompts are for emotalker)")
    if "phones" in takes and getattr(model, "speech_key", None) == "phones":
        from pipeline.extract.phones import phone_features

        kwargs["phones"] = torch.from_numpy(phone_features(wav, n_frames, SAMPLE_RATE, FPS))[None]
    if "replace_background" in takes:
        kwargs["replace_background"] = replace_background and getattr(model, "background_rgb", None) is not None
    reference = torch.from_numpy(face.crop)[None]
    return (reference, mel, torch.tensor([emotion_id(job.emotion)]), n_frames), kwargs


def run_job(model, job: Job, cfg: GenerateConfig, log=print, lap=lambda step: None) -> Path:
    """Render one job to ``job.out``; returns the path. ``lap(step)`` is called as each step ends
    (``face``, ``audio``, ``render``, ``paste``, ``encode``: ``benchmarks/generate_realtime.py`` times them).

    Raises:
        InputError: any unusable input (the message is the one line shown to the user).
    """
    from pipeline.extract.video import write_mp4

    check_job(job)
    out = Path(job.out)
    crop_size = int(model.net_cfg.crop_size)
    face = prepare_face(read_image(job.image, cfg.max_side), crop_size, cfg.lmk_size, cfg.face_scale)
    if face.faces_seen > 1:
        log(f"{Path(job.image).name}: {face.faces_seen} faces found; using the largest")
    lap("face")
    wav = read_audio(job, cfg)
    args, kwargs = method_inputs(model, face, wav, job, cfg.replace_background)
    lap("audio")
    with torch.no_grad():
        crops = model.generate(*args, **kwargs)[0].cpu().numpy()  # (T, S, S, 3) uint8
    lap("render")
    frames = crops if cfg.crop_only else paste_back(face, crops)
    lap("paste")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.mp4")
    try:
        write_mp4(partial, frames, FPS, wav[: len(crops) * SAMPLE_RATE // FPS], SAMPLE_RATE)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    lap("encode")
    return out


INTENSITIES = (1, 2, 3)
"""Accepted ``--intensity`` values: 1 low, 2 medium, 3 high (CREMA-D's LO / MD / HI, MEAD's levels)."""


def check_intensity(value) -> int | None:
    """``None`` / empty -> None; ``"2"`` or 2 -> 2. Raises InputError naming the allowed values."""
    if value is None or str(value).strip() == "":
        return None
    try:
        level = int(str(value).strip())
    except ValueError:
        level = None
    if level not in INTENSITIES:
        raise InputError(f"intensity must be 1 (low), 2 (medium) or 3 (high), got {value!r}")
    return level


def check_out(out: Path, inputs: list[str | None]) -> None:
    """Refuse an output that would destroy something or fail only after the render: not ``.mp4``,
    an existing folder, a path under a file, an unwritable folder, or the same file as an input
    (equal path, symlink or hard link).

    Raises:
        InputError: naming the option and the problem.
    """
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out must end in .mp4, got {out.name!r}")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name ending in .mp4")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"--out {out}: the folder {parent} is not writable")
    for given in inputs:
        if given and out.exists() and Path(given).exists() and os.path.samefile(out, given):
            raise InputError(f"--out {out} is the input {given}; choose another file name (it would be overwritten)")


def check_job(job: Job, other_inputs: tuple[str, ...] = ()) -> None:
    """Every check of one job that needs no model: audio xor text, emotion, intensity, output.

    Raises:
        InputError: the first problem, in one line.
    """
    if (job.audio is None) == (job.text is None):
        raise InputError("give exactly one of audio or text")
    emotion_id(job.emotion)
    check_intensity(job.intensity)
    check_out(Path(job.out), [job.image, job.audio, *other_inputs])


@dataclass(frozen=True)
class JobRow:
    """One row of a jobs file: its job, or why it cannot run (``error``); ``line``: the CSV line."""

    line: int
    job: Job | None = None
    error: str | None = None


def read_jobs(path: Path, defaults: dict) -> list[JobRow]:
    """Rows of a CSV with a header: ``image``, ``audio`` or ``text``, ``emotion``, ``out`` and
    optionally ``intensity``, ``prompt``; relative paths are relative to the CSV's folder. A UTF-8
    byte-order mark (Excel's "CSV UTF-8") is accepted.

    Every row is checked before any work (:func:`check_job`): a bad row becomes a ``JobRow`` with its
    ``error`` and the others still run. Rows that share an ``out``, or whose ``out`` is another
    row's input, are all refused (one would overwrite the other).

    Raises:
        InputError: a missing or unreadable file, or a header without the needed columns.
    """
    if not path.is_file():
        raise InputError(f"jobs file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path.name}: not a UTF-8 CSV file ({err})") from None
    need = {"image", "emotion", "out"}
    if not rows or not need <= set(rows[0]) or not ({"audio", "text"} & set(rows[0])):
        raise InputError(f"{path.name}: needs a header with image, audio or text, emotion, out")
    base = path.parent

    def rel(value: str | None) -> str | None:
        value = (value or "").strip()
        return None if not value else str(value if Path(value).is_absolute() else base / value)

    parsed: list[tuple[int, Job | None, str | None]] = []
    for line, row in enumerate(rows, start=2):
        try:
            missing = [k for k in ("image", "emotion", "out") if not (row.get(k) or "").strip()]
            if missing:
                raise InputError(f"empty {', '.join(missing)}")
            intensity = row.get("intensity") or defaults.get("intensity")
            job = Job(image=rel(row["image"]), emotion=row["emotion"].strip(), out=rel(row["out"]),
                      audio=rel(row.get("audio")), text=(row.get("text") or "").strip() or None,
                      intensity=check_intensity(intensity), prompt=(row.get("prompt") or "").strip() or None)
            parsed.append((line, job, None))
        except InputError as err:
            parsed.append((line, None, str(err)))
    jobs = [job for _, job, _ in parsed if job is not None]
    outs = Counter(os.path.abspath(job.out) for job in jobs)
    inputs = tuple(p for job in jobs for p in (job.image, job.audio) if p)
    input_paths = {os.path.abspath(p) for p in inputs}
    result = []
    for line, job, error in parsed:
        if job is not None:
            out = os.path.abspath(job.out)
            if outs[out] > 1:
                error = f"out {job.out} is also the out of another row; each row needs its own file"
            elif out in input_paths:
                error = f"out {job.out} is an input of this jobs file; it would be overwritten"
            else:
                try:
                    check_job(job, inputs)
                except InputError as err:
                    error = str(err)
        result.append(JobRow(line, None if error else job, error))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True)
    p.add_argument("--checkpoint", type=Path, help="default: models/<method>/<dataset>/last.ckpt")
    p.add_argument("--dataset", default="crema_d", help="the dataset the checkpoint was trained on")
    p.add_argument("--image")
    speech = p.add_mutually_exclusive_group()
    speech.add_argument("--audio")
    speech.add_argument("--text")
    p.add_argument("--emotion", default="neutral", help=f"one of: {', '.join(EMOTIONS)}")
    p.add_argument("--intensity", help="1 low, 2 medium, 3 high (methods that take one)")
    p.add_argument("--prompt", help="free-text emotion prompt (methods that take one)")
    p.add_argument("--out")
    p.add_argument("--jobs", type=Path, help="CSV of jobs; the model is loaded once")
    p.add_argument("--crop-only", action="store_true", help="write the aligned face crop, not the whole photo")
    p.add_argument("--keep-background", action="store_true",
                   help="do not swap the photo's background for the training backdrop (methods that do)")
    p.add_argument("--tts-engine", default="hibari", help="hibari (neural, default) | espeak-ng")
    p.add_argument("--max-seconds", type=float, default=60.0, help="longest accepted audio")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="preprocess.crop_face_scale / crop_sizes")
    return p


def crop_geometry(params_path: Path) -> dict:
    """``{"face_scale", "lmk_size"}``: the crop geometry the models were trained with, from the params
    file's ``preprocess`` section (``crop_face_scale``, ``max(crop_sizes)``); defaults without a file.

    Raises:
        ParamsError: a params file that is not valid YAML, or a malformed ``preprocess`` (key named).
    """
    if not Path(params_path).is_file():
        return {"face_scale": 0.6, "lmk_size": 256}
    from pipeline.params import get, load_params
    from pipeline.preprocess import preprocess_config  # the stage's own check of the section

    pre = preprocess_config({"preprocess": get(load_params(params_path), "preprocess", dict, default={})})
    return {"face_scale": pre.crop_face_scale, "lmk_size": max(pre.crop_sizes)}


def _config(args: argparse.Namespace) -> GenerateConfig:
    """Raises: ParamsError: see :func:`crop_geometry`."""
    return GenerateConfig(max_seconds=args.max_seconds, crop_only=args.crop_only,
                          replace_background=not args.keep_background, tts_engine=args.tts_engine,
                          **crop_geometry(args.params))


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parser().parse_args(argv)

    def fail(message: str) -> int:
        print(f"generate: error: {message}", file=sys.stderr)
        return 2

    from pipeline.params import ParamsError, error_line

    try:
        cfg = _config(args)
    except ParamsError as err:
        print(error_line("generate", args.params, err), file=sys.stderr)
        return 2
    try:
        if args.jobs:
            rows = read_jobs(args.jobs, {"intensity": args.intensity})
        else:
            if not (args.image and args.out and (args.audio or args.text)):
                return fail("give --image, --audio or --text, and --out (or --jobs FILE)")
            job = Job(args.image, args.emotion, args.out, args.audio, args.text, check_intensity(args.intensity),
                      args.prompt)
            check_job(job)  # before the model is loaded
            rows = [JobRow(0, job)]
        jobs = [row.job for row in rows if row.job is not None]
        for row in rows:
            if row.error:
                print(f"generate: error: {args.jobs.name} line {row.line}: {row.error}", file=sys.stderr)
        if jobs:
            model = load_method(args.method, args.checkpoint or default_checkpoint(args.method, args.dataset))
    except InputError as err:
        return fail(str(err))
    failed = len(rows) - len(jobs)
    for row in (row for row in rows if row.job is not None):
        job, start = row.job, time.perf_counter()
        label = f"{args.jobs.name} line {row.line}" if args.jobs else Path(job.out).name
        with tqdm(total=1, desc=label, disable=len(jobs) == 1 and not sys.stderr.isatty(), file=sys.stderr) as bar:
            try:
                out = run_job(model, job, cfg, log=lambda m: tqdm.write(f"generate: note: {m}", file=sys.stderr))
                bar.update()
                print(f"{out} ({time.perf_counter() - start:.1f} s)")
            except InputError as err:
                failed += 1
                tqdm.write(f"generate: error: {label}: {err}" if args.jobs else f"generate: error: {err}", file=sys.stderr)
    if args.jobs:
        print(f"generate: {len(rows) - failed} done, {failed} failed of {len(rows)} jobs", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

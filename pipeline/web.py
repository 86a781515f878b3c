"""The web demo of paper 000 §4 (Fig. 4): upload a face and speech (or type text), pick an emotion
and a method, watch the video. One static page (``web_page.html``) over :mod:`pipeline.generate`.

    talking-face-demo [--port 7860] [--host 127.0.0.1] [--dataset crema_d] [--max-upload-mb 20]

It binds to 127.0.0.1 unless told otherwise, renders one request at a time (the model is loaded
once per method), refuses uploads over ``--max-upload-mb`` (413) and files that do not decode as
an image / as audio (415), and answers bad input with a JSON ``{"error": one line}`` (400).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from pipeline.generate import GenerateConfig, InputError, Job, load_method, run_job
from primitives.vocab import EMOTIONS

PAGE = Path(__file__).with_name("web_page.html")
AUDIO_TYPES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".mp4")
IMAGE_TYPES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class UploadError(InputError):
    """An upload refused for its size (413) or type (415)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class WebConfig:
    """Server options (CLI flags of the same names).

    Attributes:
        models_dir, dataset: checkpoints are ``<models_dir>/<method>/<dataset>/last.ckpt``.
        max_upload_mb: per-file upload limit.
        out_dir: where videos are kept (a fresh temporary folder by default).
        generate: limits and options passed to every job.
    """

    models_dir: Path = Path("models")
    dataset: str = "crema_d"
    max_upload_mb: float = 20.0
    out_dir: Path | None = None
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(max_seconds=30.0))


def available_methods(cfg: WebConfig) -> list[str]:
    """Video-generating methods with a checkpoint under ``cfg.models_dir`` for ``cfg.dataset``."""
    from lightning_modules import METHODS

    return sorted(m for m, cls in METHODS.items()
                  if hasattr(cls, "generate") and (cfg.models_dir / m / cfg.dataset / "last.ckpt").is_file())


def _save_upload(upload, folder: Path, kinds: tuple[str, ...], limit_bytes: int, what: str) -> Path:
    """Stream one upload to ``folder``; refuse wrong extensions and oversize files."""
    name = Path(upload.filename or "").name
    suffix = Path(name).suffix.lower()
    if suffix not in kinds:
        raise UploadError(f"{name or 'the file'} is not {what} ({', '.join(kinds)})", 415)
    path = folder / f"{what.split()[-1]}{suffix}"
    size = 0
    with open(path, "wb") as fh:
        while block := upload.file.read(1 << 20):
            size += len(block)
            if size > limit_bytes:
                raise UploadError(f"{name} is over the {limit_bytes / 2**20:g} MB upload limit", 413)
            fh.write(block)
    if size == 0:
        raise UploadError(f"{name} is empty", 415)
    return path


def create_app(cfg: WebConfig):
    """The FastAPI app: ``GET /`` the page, ``GET /api/options``, ``POST /api/generate``,
    ``GET /videos/<name>.mp4``."""
    out_dir = cfg.out_dir or Path(tempfile.mkdtemp(prefix="talking-face-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, object] = {}
    lock = threading.Lock()  # one render at a time: the CPU (or GPU) is the bottleneck
    limit = int(cfg.max_upload_mb * 2**20)
    app = FastAPI(title="Emotional talking-face demo")

    def model_for(method: str):
        if method not in models:
            models[method] = load_method(method, cfg.models_dir / method / cfg.dataset / "last.ckpt")
        return models[method]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/options")
    def options() -> dict:
        import inspect

        from lightning_modules import METHODS

        methods = available_methods(cfg)
        takes = {m: inspect.signature(METHODS[m].generate).parameters for m in methods}
        return {"methods": methods, "emotions": list(EMOTIONS),
                "intensity_methods": [m for m in methods if "intensity" in takes[m]],
                "prompt_methods": [m for m in methods if "prompt" in takes[m]],
                "max_upload_mb": cfg.max_upload_mb}

    @app.post("/api/generate")
    def generate(method: str = Form(...), emotion: str = Form("neutral"), image: UploadFile = File(...),
                 audio: UploadFile | None = File(None), text: str = Form(""), intensity: int = Form(0),
                 prompt: str = Form("")) -> JSONResponse:
        try:
            if method not in available_methods(cfg):
                raise InputError(f"no trained {method!r} model here (available: {', '.join(available_methods(cfg))})")
            with tempfile.TemporaryDirectory() as tmp:
                image_path = _save_upload(image, Path(tmp), IMAGE_TYPES, limit, "an image")
                has_audio = audio is not None and bool(audio.filename)
                if has_audio == bool(text.strip()):
                    raise InputError("upload audio or type text (one of the two)")
                audio_path = _save_upload(audio, Path(tmp), AUDIO_TYPES, limit, "an audio") if has_audio else None
                name = f"{secrets.token_hex(8)}.mp4"
                job = Job(image=str(image_path), emotion=emotion, out=str(out_dir / name),
                          audio=str(audio_path) if audio_path else None, text=text if not has_audio else None,
                          intensity=intensity or None, prompt=prompt or None)
                notes: list[str] = []
                with lock:
                    run_job(model_for(method), job, cfg.generate, log=notes.append)
        except UploadError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except InputError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse({"video": f"/videos/{name}", "notes": notes})

    @app.get("/videos/{name}")
    def video(name: str):
        path = out_dir / Path(name).name
        if not (name.endswith(".mp4") and path.is_file()):
            return JSONResponse({"error": "no such video"}, status_code=404)
        return FileResponse(path, media_type="video/mp4", filename=name)

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="talking-face-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--dataset", default="crema_d")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest accepted audio")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    cfg = WebConfig(models_dir=args.models_dir, dataset=args.dataset, max_upload_mb=args.max_upload_mb,
                    generate=GenerateConfig(max_seconds=args.max_seconds))
    if not available_methods(cfg):
        print(f"talking-face-demo: error: no trained video method under {cfg.models_dir}/*/{cfg.dataset}/ (run dvc repro)")
        return 2
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

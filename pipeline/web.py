"""The web demo of paper 000 §4 (Fig. 4): upload a face and speech (or type text), pick an emotion
and a method, watch the video. One static page (``web_page.html``) over :mod:`pipeline.generate`.

    talking-face-demo [--port 7860] [--host 127.0.0.1] [--dataset crema_d] [--max-upload-mb 20]

It binds to 127.0.0.1 unless told otherwise, renders one request at a time (the model is loaded
once per method), refuses uploads over ``--max-upload-mb`` (413) and files that do not decode as
an image / as audio (415), and answers bad input with a JSON ``{"error": one line}`` (400).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from pipeline.generate import GenerateConfig, InputError, Job, check_intensity, crop_geometry, load_method, run_job
from pipeline.params import ParamsError, error_line
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
        max_upload_mb: per-file upload limit; a request's body is cut off while it arrives past
            twice that plus 1 MB (Content-Length checked first).
        out_dir: where videos are kept (a fresh temporary folder by default).
        keep_videos: the newest rendered videos kept; older ones the server wrote are removed.
        generate: limits and options passed to every job.
    """

    models_dir: Path = Path("models")
    dataset: str = "crema_d"
    max_upload_mb: float = 20.0
    out_dir: Path | None = None
    keep_videos: int = 20
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


class BodyLimit:
    """ASGI middleware: a request whose Content-Length, or whose body as it streams in, exceeds
    ``limit_bytes`` is answered 413 ``{"error": ...}`` without reading (or keeping) the rest."""

    def __init__(self, app, limit_bytes: int):
        self.app, self.limit = app, limit_bytes

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"the request is over the {self.limit / 2**20:g} MB limit"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        received, over = 0, False

        async def counting_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # stop reading: the app sees a client that went away
                    over = True
                    return {"type": "http.disconnect"}
            return message

        answered = False

        async def replacing_send(message):  # whatever the app answers to a cut-off body: our 413
            nonlocal answered
            if not over:
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                answered = True
                await self._refuse(send)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except Exception:
            if not over:
                raise
        if over and not answered:
            await self._refuse(send)


def _public_message(message: str, names: dict[str, str]) -> str:
    """An error message without server paths: each known path -> the user's name for it, then any
    other absolute path -> its file name."""
    for path, name in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    return re.sub(r"(?<![\w.])/(?:[^\s/'\"]+/)+([^\s/'\"]*)", r"\1", message)


def _prune(out_dir: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest videos this server wrote (``<16 hex>.mp4``)."""
    videos = sorted((p for p in out_dir.glob("*.mp4") if re.fullmatch(r"[0-9a-f]{16}\.mp4", p.name)),
                    key=lambda p: p.stat().st_mtime)
    for old in videos[:max(len(videos) - keep, 0)]:
        old.unlink(missing_ok=True)


def create_app(cfg: WebConfig):
    """The FastAPI app: ``GET /`` the page, ``GET /api/options``, ``POST /api/generate``,
    ``GET /videos/<name>.mp4``."""
    out_dir = cfg.out_dir or Path(tempfile.mkdtemp(prefix="talking-face-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, object] = {}
    lock = threading.Lock()  # one render at a time: the CPU (or GPU) is the bottleneck
    limit = int(cfg.max_upload_mb * 2**20)
    app = FastAPI(title="Emotional talking-face demo")
    app.add_middleware(BodyLimit, limit_bytes=2 * limit + 2**20)  # image + audio + form fields

    @app.exception_handler(RequestValidationError)
    def invalid_form(request, err: RequestValidationError) -> JSONResponse:
        fields = sorted({str(e.get("loc", ("", "?"))[-1]) for e in err.errors()})
        return JSONResponse({"error": f"missing or invalid form field(s): {', '.join(fields)}"}, status_code=422)

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
                 audio: UploadFile | None = File(None), text: str = Form(""), intensity: str = Form(""),
                 prompt: str = Form("")) -> JSONResponse:
        names: dict[str, str] = {str(cfg.models_dir.resolve()): "models", str(cfg.models_dir): "models",
                                 str(out_dir): "videos"}
        try:
            if method not in available_methods(cfg):
                raise InputError(f"no trained {method!r} model here (available: {', '.join(available_methods(cfg))})")
            with tempfile.TemporaryDirectory() as tmp:
                names[tmp] = "upload"
                image_path = _save_upload(image, Path(tmp), IMAGE_TYPES, limit, "an image")
                names[str(image_path)] = Path(image.filename or "image").name
                has_audio = audio is not None and bool(audio.filename)
                if has_audio == bool(text.strip()):
                    raise InputError("upload audio or type text (one of the two)")
                audio_path = _save_upload(audio, Path(tmp), AUDIO_TYPES, limit, "an audio") if has_audio else None
                if audio_path:
                    names[str(audio_path)] = Path(audio.filename or "audio").name
                name = f"{secrets.token_hex(8)}.mp4"
                job = Job(image=str(image_path), emotion=emotion, out=str(out_dir / name),
                          audio=str(audio_path) if audio_path else None, text=text if not has_audio else None,
                          intensity=check_intensity(intensity), prompt=prompt or None)
                notes: list[str] = []
                with lock:
                    run_job(model_for(method), job, cfg.generate, log=notes.append)
                    _prune(out_dir, cfg.keep_videos)
        except UploadError as err:
            return JSONResponse({"error": _public_message(str(err), names)}, status_code=err.status)
        except InputError as err:
            return JSONResponse({"error": _public_message(str(err), names)}, status_code=400)
        return JSONResponse({"video": f"/videos/{name}", "notes": [_public_message(n, names) for n in notes]})

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
    p.add_argument("--keep-videos", type=int, default=20, help="newest rendered videos kept (older ones removed)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="preprocess.crop_face_scale / crop_sizes")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    try:
        geometry = crop_geometry(args.params)
    except ParamsError as err:
        print(error_line("talking-face-demo", args.params, err), file=sys.stderr)
        return 2
    if args.keep_videos < 1:
        print(f"talking-face-demo: error: --keep-videos must be >= 1, got {args.keep_videos}", file=sys.stderr)
        return 2
    cfg = WebConfig(models_dir=args.models_dir, dataset=args.dataset, max_upload_mb=args.max_upload_mb,
                    keep_videos=args.keep_videos, generate=GenerateConfig(max_seconds=args.max_seconds, **geometry))
    if not available_methods(cfg):
        print(f"talking-face-demo: error: no trained video method under {cfg.models_dir}/*/{cfg.dataset}/ (run dvc repro)")
        return 2
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``fewlabel serve``: a local web app to drop images on a trained model.

FastAPI (rather than Gradio): a small dependency set already pulled in by MLflow, plain HTTP
endpoints that scripts can call too, and full control of upload validation. The page shows
the top-k classes with probabilities and a Grad-CAM overlay per image, and downloads the
results as CSV.

It stays responsive whatever a browser tab sends it (:class:`Limits`): a request over the total
size is refused from its Content-Length (or as soon as its body passes the limit) before it is
stored; the multipart parser stops at the file limit; each image is checked against the pixel
limit from its header and decoded at reduced size (JPEG draft mode, a whole-factor reduction
right after decoding), one file at a time; decoding and inference run in worker threads, at
most ``workers`` at once, so ``/`` and ``/api/info`` answer while a large request is processed.
It listens on 127.0.0.1 unless told otherwise and answers only requests whose Host is an allowed
name (loopback names, or the ``--host`` given), and POSTs only from its own origin: a web page
open in the same browser cannot use it (cross-site requests, DNS rebinding).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import Predictor, load_classifier
from .audit.saliency import grad_cam
from .data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, resize_to_square
from .errors import FewlabelError
from .report.figures import overlay_png

log = logging.getLogger("fewlabel")
PAGE = Path(__file__).parent / "report" / "templates" / "serve.html"
DEFAULT_MAX_UPLOAD_MB = 10.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Limits:
    """What one request may send. ``max_megapixels``: 40 (a 6,300 x 6,300 image decodes to
    120 MB of RGB; two workers stay well under 1 GB); JPEGs are checked after draft mode, so a
    48-megapixel photo passes at an eighth of its size. ``workers``: images decoded and
    predicted at once (each holds at most one decoded image)."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_files: int = 16
    max_request_mb: float = 64.0
    max_megapixels: float = 40.0
    workers: int = 2

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)


def create_app(
    run_dir: str | Path,
    top_k: int = 3,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    limits: Limits | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The app for one run directory; the model is loaded once, here. ``allowed_hosts``: the
    Host names it answers (default loopback names; ``["*"]`` any)."""
    predictor = load_classifier(run_dir, device="cpu")
    limits = limits or Limits(max_upload_mb=max_upload_mb)
    hosts = [h.lower().strip("[]") for h in (allowed_hosts or LOOPBACK_NAMES)]
    limiter = anyio.CapacityLimiter(limits.workers)
    app = FastAPI(title="fewlabel", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GuardMiddleware, hosts=hosts, max_request_bytes=limits.max_request_bytes)
    _plain_errors(app)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        text = PAGE.read_text(encoding="utf-8").replace("{{MAX_MB}}", f"{limits.max_upload_mb:g}")
        return text.replace("{{MAX_FILES}}", str(limits.max_files))

    @app.get("/api/info")
    def info() -> dict:
        return {
            "run": str(run_dir), "arch": predictor.card.arch, "classes": predictor.class_names, "top_k": top_k,
            "max_files": limits.max_files, "max_upload_mb": limits.max_upload_mb,
        }  # fmt: skip

    @app.post("/api/predict")
    async def predict(request: Request) -> dict:
        try:
            form = await request.form(max_files=limits.max_files, max_fields=limits.max_files + 8)
        except StarletteHTTPException as exc:
            raise HTTPException(exc.status_code, f"{exc.detail} (at most {limits.max_files} files a request)") from None
        uploads = [value for key, value in form.multi_items() if key == "files" and isinstance(value, UploadFile)]
        if not uploads:
            raise HTTPException(400, "No files: send images as multipart form fields named 'files'.")
        results = []
        for upload in uploads:  # one at a time: at most one decoded image per request
            data = await _read_upload(upload, limits.max_upload_bytes)
            name = upload.filename or "upload"
            results.append(await anyio.to_thread.run_sync(_predict_bytes, predictor, name, data, top_k, limits,
                                                          limiter=limiter))  # fmt: skip
        return {"results": results}

    return app


def _plain_errors(app: FastAPI) -> None:
    """Every error answers ``{"detail": "one line of text"}`` (FastAPI's 422 is a list)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": f"Bad request: {problems}."}, status_code=422)


async def _read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """Check one upload's name and size; refuse it with a 4xx naming the file."""
    name = upload.filename or "upload"
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        raise HTTPException(415, f"'{name}' is not an image file; accepted: {' '.join(IMAGE_EXTENSIONS)}.")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"'{name}' is larger than the {max_bytes / 2**20:.3g} MB upload limit.")
    return data


def _predict_bytes(predictor: Predictor, name: str, data: bytes, top_k: int, limits: Limits) -> dict:
    """Decode (reduced, pixel-limited) and predict one image; runs in a worker thread."""
    size = predictor.card.img_size
    try:
        image = decode_image(data, min_side=size, max_pixels=int(limits.max_megapixels * 1e6))
    except ImageDecodeError as exc:
        raise HTTPException(400, f"'{name}' cannot be read as an image: {exc}.") from None
    return _predict_one(predictor, name, image, top_k)


def _predict_one(predictor: Predictor, name: str, image: torch.Tensor, top_k: int) -> dict:
    square = resize_to_square(image, predictor.card.img_size)
    x = predictor.transform(square[None])
    with torch.no_grad():
        probs = predictor.model(x).softmax(-1)
    saliency = grad_cam(predictor.model, x, probs.argmax(1))[0]
    return {
        "filename": name,
        "top": predictor.top_classes(probs, top_k)[0],
        "saliency": "data:image/png;base64," + base64.b64encode(overlay_png(square, saliency)).decode(),
    }


def host_name(value: str) -> str:
    """The name in a Host header or an origin's netloc, without port or brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestTooLarge(Exception):
    """A request body grew past the limit while it was being received."""


class GuardMiddleware:
    """ASGI guard before any handler: the Host allow-list, the Origin check on POST, and the
    request size (from Content-Length, or counted as the body arrives)."""

    def __init__(self, app, hosts: list[str], max_request_bytes: int) -> None:
        self.app, self.hosts, self.max_request_bytes = app, hosts, max_request_bytes

    def allowed(self, name: str) -> bool:
        return "*" in self.hosts or name in self.hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope["method"], headers)
        if refusal is not None:
            return await _answer(send, *refusal)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_request_bytes:
            return await _answer(send, 413, self.too_large())
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self.counted(receive), tracked)
        except RequestTooLarge:
            if not started:
                await _answer(send, 413, self.too_large())

    def refusal(self, method: str, headers: dict) -> tuple[int, str] | None:
        """(status, text) for a request from the wrong host or origin, else None."""
        host = host_name(headers.get("host", ""))
        if not self.allowed(host):
            return 421, f"Host '{host}' is not served here; open the app at an allowed name ({', '.join(self.hosts)})."
        origin = headers.get("origin")
        own = origin is None or urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
        if method == "POST" and not own:
            return 403, "Cross-origin requests are refused: use the app's own page."
        return None

    def too_large(self) -> str:
        return (
            f"The request is larger than the {self.max_request_bytes / 2**20:.3g} MB limit; send fewer or smaller "
            "files."
        )

    def counted(self, receive):
        """``receive`` that stops a body growing past the limit (a request without Content-Length)."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_request_bytes:
                raise RequestTooLarge
            return message

        return wrapped


async def _answer(send, status: int, text: str) -> None:
    body = json.dumps({"detail": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str) -> list[str]:
    """Loopback names; a specific other address or name adds itself; a wildcard bind any Host."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return [*LOOPBACK_NAMES, host] if not is_loopback(host) else list(LOOPBACK_NAMES)


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise FewlabelError(f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port.") from None


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    top_k: int = 3,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    limits: Limits | None = None,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Check the port, build the app and run it until interrupted."""
    import uvicorn

    check_port_free(host, port)
    hosts = allowed_hosts or default_allowed_hosts(host)
    if not is_loopback(host):
        log.warning(
            "listening on %s, not loopback: any machine that can reach this one can send images to the model "
            "(Host names answered: %s)", host, ", ".join(hosts),
        )  # fmt: skip
    app = create_app(run_dir, top_k, max_upload_mb, limits=limits, allowed_hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level="info")  # it announces the address; Ctrl+C stops

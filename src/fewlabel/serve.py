"""``fewlabel serve``: a local web app to drop images on a trained model.

FastAPI (rather than Gradio): a small dependency set already pulled in by MLflow, plain HTTP
endpoints that scripts can call too, and full control of upload validation. The page shows
the top-k classes with probabilities and a Grad-CAM overlay per image, and downloads the
results as CSV. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import HTMLResponse

from .api import Predictor, load_classifier
from .audit.saliency import grad_cam
from .data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, resize_to_square
from .errors import FewlabelError
from .report.figures import overlay_png

PAGE = Path(__file__).parent / "report" / "templates" / "serve.html"
DEFAULT_MAX_UPLOAD_MB = 10.0


def create_app(run_dir: str | Path, top_k: int = 3, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> FastAPI:
    """The app for one run directory; the model is loaded once, here."""
    predictor = load_classifier(run_dir, device="cpu")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="fewlabel", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8").replace("{{MAX_MB}}", f"{max_upload_mb:g}")

    @app.get("/api/info")
    def info() -> dict:
        return {"run": str(run_dir), "arch": predictor.card.arch, "classes": predictor.class_names, "top_k": top_k}

    @app.post("/api/predict")
    async def predict(files: list[UploadFile]) -> dict:
        images = [await _read_upload(f, max_bytes) for f in files]
        return {"results": [_predict_one(predictor, name, image, top_k) for name, image in images]}

    return app


async def _read_upload(upload: UploadFile, max_bytes: int) -> tuple[str, torch.Tensor]:
    """Validate one upload (type, size, decodability); refuse it with a 4xx naming the file."""
    name = upload.filename or "upload"
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        raise HTTPException(415, f"'{name}' is not an image file; accepted: {' '.join(IMAGE_EXTENSIONS)}.")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"'{name}' is larger than the {max_bytes / 2**20:g} MB upload limit.")
    try:
        return name, decode_image(data)
    except ImageDecodeError as exc:
        raise HTTPException(400, f"'{name}' cannot be read as an image: {exc}.") from None


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
) -> None:
    """Check the port, build the app and run it until interrupted."""
    import uvicorn

    check_port_free(host, port)
    app = create_app(run_dir, top_k, max_upload_mb)
    uvicorn.run(app, host=host, port=port, log_level="info")  # it announces the address; Ctrl+C stops

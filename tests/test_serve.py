"""fewlabel serve: the API with its upload checks, and the page driven in headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import sync_playwright

import fewlabel
from conftest import CHROMIUM_ARGS, FAST
from fewlabel.errors import FewlabelError
from fewlabel.serve import check_port_free, create_app


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("serve")
    make_image_folder(root / "data" / "train", per_class=8, seed=1)
    make_image_folder(root / "data" / "test", per_class=2, seed=3)
    fewlabel.train(str(root / "data"), root / "run", strategy="full", **FAST | {"epochs": 6})
    return root


def local(app) -> TestClient:
    """A client that calls the app as the page on this machine does (Host 127.0.0.1:8000)."""
    return TestClient(app, base_url="http://127.0.0.1:8000")


def png_bytes(path) -> bytes:
    return path.read_bytes()


def test_predict_returns_top_k_and_an_overlay(trained):
    client = local(create_app(trained / "run", top_k=2))
    assert client.get("/api/info").json()["classes"] == ["blue", "green", "red"]
    files = [("files", (p.name, png_bytes(p), "image/png")) for p in sorted((trained / "data/test/red").iterdir())]
    response = client.post("/api/predict", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["0.png", "1.png"] and all(len(r["top"]) == 2 for r in results)
    overlay = Image.open(io.BytesIO(base64.b64decode(results[0]["saliency"].split(",", 1)[1])))
    assert overlay.size == (32, 32)


def test_bad_uploads_get_4xx_and_the_server_keeps_serving(trained, monkeypatch):
    client = local(create_app(trained / "run", max_upload_mb=0.01))
    good = next((trained / "data/test/blue").iterdir())
    big = io.BytesIO()
    Image.new("RGB", (200, 200)).save(big, format="BMP")
    cases = [
        (("notes.txt", b"hello", "text/plain"), 415, "'notes.txt' is not an image file"),
        (("big.bmp", big.getvalue(), "image/bmp"), 413, "'big.bmp' is larger than"),
        (("cut.png", good.read_bytes()[:60], "image/png"), 400, "'cut.png' cannot be read as an image"),
        (("fake.jpg", b"\xff\xd8 not really", "image/jpeg"), 400, "'fake.jpg' cannot be read"),
    ]
    for upload, status, message in cases:
        response = client.post("/api/predict", files=[("files", upload)])
        assert response.status_code == status and message in response.json()["detail"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    response = client.post("/api/predict", files=[("files", (good.name, good.read_bytes(), "image/png"))])
    assert response.status_code == 400 and "decompression bomb" in response.json()["detail"]
    monkeypatch.undo()
    assert (
        client.post("/api/predict", files=[("files", (good.name, good.read_bytes(), "image/png"))]).status_code == 200
    )


def test_port_in_use_and_missing_model_are_clear_errors(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(FewlabelError, match=f"Cannot listen on 127.0.0.1:{port}.*choose another --port"):
            check_port_free("127.0.0.1", port)
    with pytest.raises(FewlabelError, match="holds no model"):
        create_app(tmp_path)


def test_page_end_to_end_in_headless_chromium(trained, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: make test installs it (apt-get install chromium)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(trained / "run"), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    images = sorted(str(p) for p in (trained / "data/test/green").iterdir())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#model:has-text('blue, green, red')")
            page.set_input_files("#files", images)
            page.wait_for_function("document.querySelectorAll('#results tbody tr').length === 2")
            rows = page.locator("#results tbody tr")
            assert "0.png" in rows.nth(0).inner_text() and "%" in rows.nth(0).inner_text()
            assert page.evaluate("document.querySelector('img.overlay').naturalWidth") == 32
            with page.expect_download() as download_info:
                page.click("#download")
            csv_text = download_info.value.path().read_text()
            assert csv_text.startswith("image,rank,class,probability\n") and csv_text.count("\n") == 1 + 2 * 3
            (tmp_path / "x.txt").write_text("not an image")
            page.set_input_files("#files", [str(tmp_path / "x.txt")])
            page.wait_for_selector("#error:has-text('is not an image file')")
            browser.close()
        assert not errors or all("Failed to load resource" in e for e in errors), errors
    finally:
        server.should_exit = True
        thread.join(timeout=10)

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


def start_server(run) -> tuple[uvicorn.Server, threading.Thread, int]:
    """The app of ``run`` served by uvicorn in a thread on a free loopback port, once it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    return server, thread, port


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
    server, thread, port = start_server(trained / "run")
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
            page.set_input_files("#files", [images[0]] * 17)  # over the 16 files a request may send
            page.wait_for_selector("#error:has-text('Too many files')")
            assert "[object Object]" not in page.inner_text("#error")
            browser.close()
        assert not errors or all("Failed to load resource" in e for e in errors), errors
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def huge_png_header(width: int = 9000, height: int = 9000) -> bytes:
    """A small PNG whose header declares ``width`` x ``height``: what a 9000 x 9000 upload looks
    like before it is decoded (the size check must not need the pixels)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_requests_from_other_hosts_and_origins_are_refused(trained):
    app = create_app(trained / "run")
    good = next((trained / "data/test/blue").iterdir())
    upload = [("files", (good.name, good.read_bytes(), "image/png"))]
    rebinding = TestClient(app, base_url="http://attacker.example:8000")
    answer = rebinding.get("/api/info")
    assert answer.status_code == 421 and "'attacker.example' is not served here" in answer.json()["detail"]
    client = local(app)
    cross = client.post("/api/predict", files=upload, headers={"Origin": "http://attacker.example"})
    assert cross.status_code == 403 and "Cross-origin" in cross.json()["detail"]
    assert client.post("/api/predict", files=upload, headers={"Origin": "null"}).status_code == 403
    same = client.post("/api/predict", files=upload, headers={"Origin": "http://127.0.0.1:8000"})
    assert same.status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://[::1]:8000").get("/api/info").status_code == 200


def test_request_limits_refuse_before_storing_and_errors_are_plain_text(trained):
    from fewlabel.serve import Limits

    limits = Limits(max_upload_mb=1, max_files=3, max_request_mb=0.05, max_megapixels=4)
    client = local(create_app(trained / "run", limits=limits))
    good = next((trained / "data/test/blue").iterdir())
    many = [("files", (f"{i}.png", good.read_bytes(), "image/png")) for i in range(4)]
    answer = client.post("/api/predict", files=many)
    assert answer.status_code == 400 and "Too many files" in answer.json()["detail"]
    big = [("files", ("big.png", b"\x89PNG" + bytes(80_000), "image/png"))]
    answer = client.post("/api/predict", files=big)
    assert answer.status_code == 413 and "larger than the 0.05 MB limit" in answer.json()["detail"]
    chunks = (bytes(10_000) for _ in range(10))  # no Content-Length: counted as it arrives
    answer = client.post("/api/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "MB limit" in answer.json()["detail"]
    huge = [("files", ("huge.png", huge_png_header(), "image/png"))]
    answer = client.post("/api/predict", files=huge)
    assert answer.status_code == 400 and "9000x9000 pixels exceeds the limit of 4000000" in answer.json()["detail"]
    junk = [("files", ("junk.png", b"GIF89a" + bytes(40), "image/png"))]
    answer = client.post("/api/predict", files=junk)
    assert answer.status_code == 400 and "object at 0x" not in answer.json()["detail"]
    assert client.post("/api/predict", data={"x": "1"}).json()["detail"].startswith("No files")
    assert client.post("/api/predict", files=[("files", (good.name, good.read_bytes(), "image/png"))]).is_success


def test_a_large_jpeg_is_decoded_at_reduced_size():
    from fewlabel.data.images import decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(buffer, format="JPEG")
    full, reduced = decode_image(buffer.getvalue()), decode_image(buffer.getvalue(), min_side=224)
    assert tuple(full.shape) == (3, 3000, 4000) and tuple(reduced.shape) == (3, 375, 500)  # draft mode: 1/8
    png = io.BytesIO()
    Image.new("RGBA", (2400, 1200), (0, 0, 255, 128)).save(png, format="PNG")
    assert tuple(decode_image(png.getvalue(), min_side=224).shape) == (3, 240, 480)  # reduced by 5 after decoding


def test_the_app_answers_while_a_prediction_is_running(trained, monkeypatch):
    """A prediction held in its worker thread does not stop the page or /api/info."""
    import httpx

    import fewlabel.serve as serve_module

    release, entered = threading.Event(), threading.Event()
    predict_one = serve_module._predict_one

    def held(*args):
        entered.set()
        assert release.wait(timeout=60)
        return predict_one(*args)

    monkeypatch.setattr(serve_module, "_predict_one", held)
    server, thread, port = start_server(trained / "run")
    good = next((trained / "data/test/blue").iterdir())
    posted: dict = {}

    def post():
        files = [("files", (good.name, good.read_bytes(), "image/png"))]
        posted["status"] = httpx.post(f"http://127.0.0.1:{port}/api/predict", files=files, timeout=60).status_code

    sender = threading.Thread(target=post)
    try:
        sender.start()
        assert entered.wait(timeout=30)
        info = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=10)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert info.status_code == 200 and page.status_code == 200 and "status" not in posted
        release.set()
        sender.join(timeout=60)
        assert posted["status"] == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)


def test_listening_off_loopback_warns_and_sets_the_host_list(trained, monkeypatch, caplog):
    import fewlabel.serve as serve_module
    from fewlabel.serve import default_allowed_hosts, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.5")
    assert default_allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert default_allowed_hosts("10.0.0.5")[-1] == "10.0.0.5" and default_allowed_hosts("0.0.0.0") == ["*"]
    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw))
    monkeypatch.setattr(serve_module, "check_port_free", lambda host, port: None)
    with caplog.at_level("WARNING", logger="fewlabel"):
        serve_module.serve(trained / "run", host="0.0.0.0", port=8765)
    assert ran["host"] == "0.0.0.0" and "not loopback" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fewlabel"):
        serve_module.serve(trained / "run", host="127.0.0.1", port=8765)
    assert "not loopback" not in caplog.text


@pytest.mark.parametrize("mode", ["P", "1", "L", "LA", "RGBA", "I;16", "I", "F", "CMYK"])
def test_reduced_decoding_takes_every_mode(mode):
    """Every mode a full-size decode takes also decodes at reduced size, to the same channels."""
    from fewlabel.data.images import decode_image

    buffer = io.BytesIO()
    Image.new(mode, (900, 700)).save(buffer, format="TIFF" if mode in ("LA", "I;16", "I", "F", "CMYK") else "PNG")
    full, reduced = decode_image(buffer.getvalue()), decode_image(buffer.getvalue(), min_side=224)
    assert reduced.shape[0] == full.shape[0] and min(reduced.shape[1:]) >= 224

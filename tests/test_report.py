"""The report: built from the run directory alone, with every section, and clean in a browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import torch
from PIL import Image

import fewlabel
from conftest import CHROMIUM_ARGS, FAST
from fewlabel.data.duplicates import cross_duplicates
from fewlabel.data.imageset import ImageSet
from fewlabel.evaluate.predictions import Predictions, read_predictions, write_predictions
from fewlabel.report import write_report

SECTIONS = (
    "Confusion matrix",
    "Per class",
    "Calibration and ROC",
    "Most confidently wrong",
    "Grad-CAM",
    "Learning curves",
    "Identical images across splits",
    "Config",
)


def embedded_images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", html)]


def test_predictions_round_trip(tmp_path):
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    original = Predictions(["a.png", "b,c.png"], probs, torch.tensor([0, 0]), ["x", "y"])
    loaded = read_predictions(write_predictions(tmp_path / "p.csv", original))
    assert loaded.ids == original.ids and torch.equal(loaded.labels, original.labels)
    assert torch.allclose(loaded.probs, probs) and loaded.predicted.tolist() == [0, 1]


def test_duplicates_between_splits_are_found_by_pixels():
    images = torch.randint(0, 255, (4, 1, 5, 5), dtype=torch.uint8)
    first = ImageSet(images[:3], torch.zeros(3, dtype=torch.long), ["a"], ["t0", "t1", "t2"])
    second = ImageSet(
        torch.stack([images[1], images[3], images[1]]), torch.zeros(3, dtype=torch.long), ["a"], ["e0", "e1", "e2"]
    )
    assert cross_duplicates(first, second) == {"count": 2, "examples": [["t1", "e0"], ["t1", "e2"]]}


def test_report_has_every_section_and_only_needs_the_run_directory(split_folder, tmp_path):
    leak = next((split_folder / "train" / "red").iterdir())
    shutil.copy(leak, split_folder / "test" / "red" / "leak.png")  # one train image also in test
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="freeze-unfreeze", **FAST)
    html = (result.run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert section in html, section
    assert "train/eval</td><td>1</td>" in html and "leak.png" in html
    images = embedded_images(html)
    assert len(images) == 7 and all(im.size[0] > 100 for im in images)
    moved = shutil.move(result.run_dir, tmp_path / "moved")
    (tmp_path / "moved" / "report.html").unlink()
    write_report(moved)
    assert len(embedded_images((tmp_path / "moved" / "report.html").read_text())) == 7


def test_report_opens_in_headless_chromium_without_console_errors(split_folder, tmp_path):
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="linear-probe", **FAST)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: make test installs it (apt-get install chromium)"
    screenshot = tmp_path / "report.png"
    completed = subprocess.run(
        [
            chromium,
            "--headless",
            *CHROMIUM_ARGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2400",
            f"--screenshot={screenshot}",
            (result.run_dir / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [line for line in completed.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    shot = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    blue = (shot[..., 2] > shot[..., 0] + 60).mean()  # the confusion matrices' blue cells
    assert (shot.sum(-1) < 600).mean() > 0.05 and blue > 0.002

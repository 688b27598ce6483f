"""Shared fixtures: tiny image folders made on the fly, and fast training options."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one test file per worker process, one worker per core (see the Makefile): a
    # second torch thread per worker would only contend with the other worker for the same cores.
    import torch

    torch.set_num_threads(1)

CLASSES = ("red", "green", "blue")

# A tiny timm model, random init, 32 px: one epoch on 24 images takes well under a second.
FAST = dict(
    model="test_efficientnet",
    pretrained="none",
    img_size=32,
    epochs=2,
    head_epochs=2,
    batch_size=8,
    progress=False,
    feature_cache="memory",
    lr=1e-2,
    head_lr=1e-2,
)


# Debian's Chromium, headless, without the background network calls this closed machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEWLABEL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def colour_image(class_index: int, rng: np.random.Generator, size: tuple[int, int] = (20, 20)) -> Image.Image:
    """A noisy image whose dominant channel is the class: learnable in a few steps."""
    arr = rng.integers(0, 90, size=(*size, 3), dtype=np.uint8)
    arr[..., class_index] = rng.integers(150, 255, size=size, dtype=np.uint8)
    return Image.fromarray(arr)


def make_image_folder(root: Path, per_class: int = 8, seed: int = 0, classes=CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (20, 20) if i % 3 else (24, 30)  # images of different sizes are fine
            colour_image(c, rng, size).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "folder")


@pytest.fixture
def split_folder(tmp_path) -> Path:
    root = tmp_path / "splits"
    make_image_folder(root / "train", per_class=8, seed=1)
    make_image_folder(root / "val", per_class=3, seed=2)
    make_image_folder(root / "test", per_class=4, seed=3)
    return root

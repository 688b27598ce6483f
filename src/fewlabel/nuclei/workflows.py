"""What the ``fewlabel nuclei`` commands do with a trained detector: detect nuclei in image
files (a CSV and an overlay per image) and evaluate on annotated data at a chosen radius."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data.images import decode_rgb_files
from ..fileio import atomic_write
from .inference import NucleusDetector

OVERLAY_COLOUR = (0, 230, 64)


def overlay(image: np.ndarray, points: np.ndarray, radius: float) -> Image.Image:
    """The image (H x W x 3 uint8) with a circle of ``radius`` around every detection."""
    picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for x, y in points:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=OVERLAY_COLOUR, width=2)
    return picture


def detect_files(
    detector: NucleusDetector,
    paths: list[str | Path],
    out: str | Path,
    overlays: str | Path | None = None,
    threshold: float | None = None,
) -> dict:
    """Detect nuclei in every image file: ``out`` gets ``image,x,y,score`` rows, ``overlays``
    (default: beside ``out``) one ``<stem>.detections.png`` per image. An unreadable file is
    refused before anything is written. Returns the count per image."""
    paths = [Path(p) for p in paths]
    images = dict(zip(paths, decode_rgb_files(paths), strict=True))
    out = Path(out)
    folder = Path(overlays) if overlays is not None else out.parent
    folder.mkdir(parents=True, exist_ok=True)
    rows, counts = ["image,x,y,score"], {}
    radius = float(detector.card.extras.get("match_radius", 6.0)) / 2 + 1
    for path, image in images.items():
        points, scores = detector.detect(image, threshold)
        rows += [f"{path},{x:.1f},{y:.1f},{s:.4f}" for (x, y), s in zip(points, scores, strict=True)]
        counts[str(path)] = len(points)
        picture = overlay(image.permute(1, 2, 0).numpy(), points, radius)
        atomic_write(folder / f"{path.stem}.detections.png", lambda p, pic=picture: pic.save(p, format="PNG"))
    atomic_write(out, lambda p: p.write_text("\n".join(rows) + "\n"))
    return counts

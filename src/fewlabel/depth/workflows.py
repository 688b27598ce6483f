"""Depth of image files (``fewlabel depth predict``): a colour-mapped PNG and the raw map as .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import decode_rgb_files
from ..fileio import atomic_write, write_arrays


def colour_map(depth: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """uint8 RGB of a depth map: near bright yellow, far dark blue (matplotlib's viridis reversed),
    between its 1st and 99th percentiles unless ``low`` and ``high`` are given."""
    from matplotlib import colormaps

    finite = depth[np.isfinite(depth)]
    low = float(np.percentile(finite, 1)) if low is None else low
    high = float(np.percentile(finite, 99)) if high is None else high
    scaled = np.clip((depth - low) / max(high - low, 1e-9), 0, 1)
    return (colormaps["viridis_r"](np.nan_to_num(scaled))[..., :3] * 255).astype(np.uint8)


def predict_files(predictor, images: list[str | Path], out: str | Path | None = None) -> list[dict]:
    """Every image decoded first (an unreadable one is refused before anything is written), then
    ``<stem>-depth.png`` and ``<stem>-depth.npy`` beside ``out`` (a file name for one image, a
    folder for several) or beside each image."""
    paths = [Path(p) for p in images]
    decoded = decode_rgb_files(paths)
    targets = _targets(paths, out)
    results = []
    for path, depth, target in zip(paths, predictor.predict(decoded), targets, strict=True):
        png, npy = target.with_suffix(".png"), target.with_suffix(".npy")
        atomic_write(png, lambda p, d=depth: Image.fromarray(colour_map(d)).save(p, format="PNG"))
        write_arrays(npy, depth.astype(np.float32))
        summary = {"min": float(depth.min()), "median": float(np.median(depth)), "max": float(depth.max())}
        results.append({"image": str(path), "png": str(png), "npy": str(npy), "units": predictor.units} | summary)
    return results


def _targets(paths: list[Path], out: str | Path | None) -> list[Path]:
    """Where each image's depth goes (without suffix)."""
    if out is None:
        return [p.with_name(p.stem + "-depth") for p in paths]
    out = Path(out)
    if len(paths) == 1 and out.suffix:
        return [out.with_suffix("")]
    return [out / (p.stem + "-depth") for p in paths]

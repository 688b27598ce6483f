"""Proximity maps of whole images of any size, and the detector users call.

A large image is cut into overlapping tiles (``tile`` pixels, ``overlap`` shared between
neighbours); each tile is predicted and keeps only the part of the image nearer its own centre
than its neighbour's (the boundary runs through the middle of every overlap), so the result
has no seams as long as half the overlap exceeds the distance over which a tile's border
changes the network's output. Tiles are predicted in batches. An image (or tile) whose sides are
not multiples of the network's stride is reflect-padded and cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import axis_starts, normalise
from .peaks import find_peaks

DEFAULT_TILE, DEFAULT_OVERLAP = 384, 64


def _owned(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The interval of the axis each tile writes: up to the middle of each overlap."""
    spans = []
    for k, start in enumerate(starts):
        begin = 0 if k == 0 else (starts[k - 1] + tile + start) // 2
        end = length if k == len(starts) - 1 else (start + tile + starts[k + 1]) // 2
        spans.append((begin, end))
    return spans


def _pad_reflect(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _multiple(value: int, stride: int) -> int:
    return -(-value // stride) * stride


@torch.no_grad()
def predict_proximity(
    model: nn.Module,
    image: torch.Tensor,
    mean,
    std,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
) -> np.ndarray:
    """The proximity map (H x W float32) of a uint8 3 x H x W image, tiled as the module
    docstring says; ``model`` in eval mode. ``batch_size`` tiles per forward pass: by default
    8 on a GPU and 1 on the CPU, where a batch of large tiles runs slower per pixel than one
    tile at a time (bench/nuclei.py)."""
    device = next(model.parameters()).device
    batch_size = batch_size or (8 if device.type == "cuda" else 1)
    stride = int(getattr(model, "stride", 32))
    tile = _multiple(max(tile, stride), stride)
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    height, width = image.shape[-2:]
    x = normalise(image, mean, std)
    rows, cols = axis_starts(height, tile, tile - overlap), axis_starts(width, tile, tile - overlap)
    out = torch.zeros(height, width)
    jobs = [(top, left, rspan, cspan)
            for top, rspan in zip(rows, _owned(rows, tile, height), strict=True)
            for left, cspan in zip(cols, _owned(cols, tile, width), strict=True)]  # fmt: skip
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        crops = [x[:, top : top + tile, left : left + tile] for top, left, _, _ in chunk]
        side_h = _multiple(max(c.shape[-2] for c in crops), stride)
        side_w = _multiple(max(c.shape[-1] for c in crops), stride)
        batch = torch.stack([_pad_reflect(c, side_h, side_w) for c in crops]).to(device)
        maps = model(batch)[:, 0].float().cpu()
        for m, (top, left, (r0, r1), (c0, c1)) in zip(maps, chunk, strict=True):
            out[r0:r1, c0:c1] = m[r0 - top : r1 - top, c0 - left : c1 - left]
    return out.numpy()


@dataclass
class DetectionSettings:
    """How peaks become detections, chosen on validation images and stored in model.json."""

    threshold: float = 0.5
    min_distance: int = 3
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP


class NucleusDetector:
    """Finds nuclei in images with a trained detector and its stored settings."""

    def __init__(self, model: nn.Module, card, device: str | None = None) -> None:
        self.model = model.eval().to(device or "cpu")
        self.card = card
        extras = card.extras
        self.settings = DetectionSettings(
            float(extras.get("threshold", 0.5)), int(extras.get("min_distance", 3)),
            int(extras.get("tile", DEFAULT_TILE)), int(extras.get("overlap", DEFAULT_OVERLAP)),
        )  # fmt: skip

    def proximity(self, image: torch.Tensor) -> np.ndarray:
        s = self.settings
        return predict_proximity(self.model, image, self.card.mean, self.card.std, s.tile, s.overlap)

    def detect(self, image: torch.Tensor, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(centres N x 2 as x y, scores N) of one uint8 3 x H x W image."""
        chosen = self.settings.threshold if threshold is None else threshold
        return find_peaks(self.proximity(image), chosen, self.settings.min_distance)

    def predict(self, images: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.detect(image) for image in images]

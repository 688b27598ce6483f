"""Depth of new images with a trained network and its model card: each image resized whole to
the training size, the network's log depth plus the stored offset turned into depth, and the
map resized back to the image's own size (bilinear)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nuclei.augment import normalise
from .augment import resize_image


def log_depth_offset(card) -> float:
    return float(card.extras.get("log_depth_offset", 0.0))


class DepthPredictor:
    """Predicts depth maps (in the card's ``units``) for uint8 3 x H x W images."""

    def __init__(self, model: nn.Module, card, device: str | None = None, batch_size: int = 16) -> None:
        self.model = model.eval().to(device or "cpu")
        self.card, self.batch_size = card, batch_size
        self.device = next(self.model.parameters()).device
        self.offset = log_depth_offset(card)
        self.units = str(card.extras.get("units", "mm"))

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        """One depth map (float32, H x W of its image) per image."""
        size = int(self.card.img_size)
        maps = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            x = torch.stack([normalise(resize_image(im, size), self.card.mean, self.card.std) for im in chunk])
            log_depth = self.model(x.to(self.device)).float().cpu() + self.offset
            for image, one in zip(chunk, log_depth, strict=True):
                full = F.interpolate(one[None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
                maps.append(torch.exp(full[0, 0]).numpy())
        return maps

    def depth(self, image: torch.Tensor) -> np.ndarray:
        return self.predict([image])[0]


def median_offset(median_depth: float) -> float:
    """The log-depth offset that makes the untrained network's output (near 0) the median depth."""
    return math.log(max(median_depth, 1e-6))

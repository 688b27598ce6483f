"""Depth of new images with a trained network and its model card: each image resized whole to
the training size, the network's log depth plus the stored offset turned into depth, and the
map resized back to the image's own size (bilinear). With the task option ``test_symmetries`` the
network sees each image under the square's 8 symmetries (flips and quarter turns), each output is
turned back, and their log depths are averaged (a geometric mean of the 8 depth maps)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewlabelError
from ..nuclei.augment import normalise, symmetry, undo_symmetry
from .augment import resize_image
from .options import UNTRAINED_SYMMETRIES


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
        self.symmetries = bool(card.extras.get("test_symmetries", False))

    @property
    def trained_on_symmetries(self) -> bool:
        """Whether the network was trained on the square's symmetries (else none may be averaged)."""
        return bool(self.card.extras.get("symmetries", True))

    @property
    def symmetries(self) -> bool:
        """Whether predictions average the network over each image's 8 symmetries."""
        return self._symmetries

    @symmetries.setter
    def symmetries(self, wanted: bool) -> None:
        if wanted and not self.trained_on_symmetries:
            raise FewlabelError(UNTRAINED_SYMMETRIES)
        self._symmetries = wanted

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        """One depth map (float32, H x W of its image) per image."""
        size = int(self.card.img_size)
        maps = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            x = torch.stack([normalise(resize_image(im, size), self.card.mean, self.card.std) for im in chunk])
            log_depth = self.log_depth(x.to(self.device)).float().cpu() + self.offset
            for image, one in zip(chunk, log_depth, strict=True):
                full = F.interpolate(one[None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
                maps.append(torch.exp(full[0, 0]).numpy())
        return maps

    def log_depth(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for a normalised square batch, averaged over the 8 symmetries when
        ``symmetries`` is on (each output turned back onto the image's own pixels first)."""
        if not self.symmetries:
            return self.model(x)
        eight = [(turns, flip) for flip in (False, True) for turns in range(4)]
        views = [undo_symmetry(self.model(symmetry(x, turns, flip)), turns, flip) for turns, flip in eight]
        return torch.stack(views).mean(0)

    def depth(self, image: torch.Tensor) -> np.ndarray:
        return self.predict([image])[0]


def median_offset(median_depth: float) -> float:
    """The log-depth offset that makes the untrained network's output (near 0) the median depth."""
    return math.log(max(median_depth, 1e-6))

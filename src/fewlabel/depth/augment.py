"""Training pairs of an image and its depth map, transformed together.

Images are resized whole to the network's square input (``img_size``; the depth map by a
NaN-aware area average, so invalid pixels do not leak into valid ones). Geometric changes apply
to both: one of the square's 8 symmetries (flips and quarter turns), valid for an endoscope,
which has no preferred up (``symmetries`` off for scenes that have one). Crops and zooms are
not used: they change the apparent focal length, and with it the depth a monocular network
must infer. Colour changes apply to the image only: brightness and contrast factors and a gain
per channel, each ``U(1 - s, 1 + s)`` with ``s`` the ``colour_jitter``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.datasets import image_rng
from ..nuclei.augment import normalise, random_symmetry
from .data import images_per_epoch


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 3 x H x W to float 3 x size x size (0-255), antialiased."""
    return F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[
        0
    ]


def resize_depth(depth: torch.Tensor, size: int) -> torch.Tensor:
    """1 x H x W depth (NaN invalid) to 1 x size x size: the area mean of valid depths, NaN where none."""
    valid = torch.isfinite(depth).float()
    total = F.adaptive_avg_pool2d(torch.nan_to_num(depth, nan=0.0)[None] * valid[None], size)[0]
    share = F.adaptive_avg_pool2d(valid[None], size)[0]
    return torch.where(share > 0, total / share.clamp(min=1e-12), torch.full_like(total, float("nan")))


def resized_pairs(split, size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every image and depth map of ``split`` at ``size`` (computed once per split and size)."""
    if size not in split.cache:
        split.cache[size] = (
            [resize_image(im, size) for im in split.images],
            [resize_depth(d, size) for d in split.depths],
        )
    return split.cache[size]


def colour_jitter(image: torch.Tensor, strength: float) -> torch.Tensor:
    if strength <= 0:
        return image
    brightness, contrast = (1.0 + (torch.rand(2) * 2 - 1) * strength).tolist()
    gains = 1.0 + (torch.rand(3, 1, 1) * 2 - 1) * strength
    mean = image.mean()
    return (((image - mean) * contrast + mean) * brightness * gains).clamp(0, 255)


class DepthPairs(Dataset):
    """(normalised image, depth) pairs; with ``seed`` set, augmented and keyed by (epoch, index)
    so every draw is seeded (resume and worker counts give the same batches). ``replay`` (pool,
    per_epoch): the last ``pool`` images are a rehearsal pool; an epoch has the others and
    ``per_epoch`` of the pool, a seeded draw of its own each epoch."""

    keyed = True

    def __init__(self, images, depths, mean, std, seed: int | None = None, symmetries: bool = True,
                 jitter: float = 0.0, replay: tuple[int, int] | None = None) -> None:  # fmt: skip
        self.images, self.depths, self.mean, self.std = images, depths, mean, std
        self.seed, self.symmetries, self.jitter = seed, symmetries, jitter
        self.replay = replay if seed is not None else None
        self.own = len(images) - (self.replay[0] if self.replay else 0)
        self._drawn: tuple[int, np.ndarray] | None = None  # (epoch, the pool's images it sees)

    def __len__(self) -> int:
        return images_per_epoch(len(self.images), self.replay)

    def _pool_index(self, epoch: int, slot: int) -> int:
        if self._drawn is None or self._drawn[0] != epoch:
            order = np.random.default_rng([self.seed, epoch, 2]).permutation(self.replay[0])[: self.replay[1]]
            self._drawn = (epoch, order)
        return self.own + int(self._drawn[1][slot])

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.replay and index >= self.own:
            index = self._pool_index(epoch, index - self.own)
        image, depth = self.images[index], self.depths[index]
        if self.seed is not None:
            with image_rng(self.seed, epoch, index):
                if self.symmetries:
                    image, depth = random_symmetry(image, depth)
                image = colour_jitter(image, self.jitter)
        return normalise(image, self.mean, self.std), depth.contiguous()

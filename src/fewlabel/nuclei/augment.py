"""Training crops of an image and its proximity map, transformed together.

Every geometric change (a random crop, horizontal and vertical flips, a rotation by a multiple
of 90 degrees) maps the target exactly as the image: the 8 symmetries of the square are valid
for nuclei, which have no preferred orientation. Colour changes only the image: a stain jitter
in haematoxylin-eosin-DAB space (Tellez et al. 2019), where each stain's optical density is
scaled by ``U(1 - s, 1 + s)`` and shifted by ``U(-s/5, s/5)``, ``s`` the ``stain_jitter``
(the shift is in optical-density units; the one-fifth is this project's choice), then a
brightness factor ``U(1 - s, 1 + s)``. A crop larger than its image is padded with zeros
(image and target).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed
from torch.utils.data import Dataset

from ..data.datasets import image_rng

_HED_FROM_RGB = torch.tensor(hed_from_rgb, dtype=torch.float32)
_RGB_FROM_HED = torch.tensor(rgb_from_hed, dtype=torch.float32)


def pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad (bottom and right) a C x H x W tensor to at least ``height`` x ``width``."""
    return F.pad(image, (0, max(0, width - image.shape[-1]), 0, max(0, height - image.shape[-2])))


def random_crop(image: torch.Tensor, target: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``size`` square at the same random place of ``image`` and ``target`` (padded first
    when smaller); torch's default generator draws the place."""
    image, target = pad_to(image, size, size), pad_to(target, size, size)
    top = int(torch.randint(0, image.shape[-2] - size + 1, ()))
    left = int(torch.randint(0, image.shape[-1] - size + 1, ()))
    return image[:, top : top + size, left : left + size], target[:, top : top + size, left : left + size]


def symmetry(tensor: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """One of the square's 8 symmetries of the last two axes: mirrored (``flip``), then ``turns``
    quarter turns."""
    return torch.rot90(tensor.flip(-1) if flip else tensor, turns, (-2, -1))


def undo_symmetry(tensor: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`symmetry` with the same ``turns`` and ``flip``."""
    turned = torch.rot90(tensor, -turns, (-2, -1))
    return turned.flip(-1) if flip else turned


def random_symmetry(image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the square's 8 symmetries, the same for both."""
    turns, flip = int(torch.randint(0, 4, ())), bool(torch.randint(0, 2, ()))
    return symmetry(image, turns, flip), symmetry(target, turns, flip)


def stain_jitter(image: torch.Tensor, strength: float) -> torch.Tensor:
    """The module docstring's stain and brightness jitter of a uint8 RGB image (float 0-255 out)."""
    if strength <= 0:
        return image.float()
    density = -torch.log((image.float().permute(1, 2, 0) + 1.0) / 256.0)  # H x W x RGB optical density
    stains = density @ _HED_FROM_RGB
    scale = 1.0 + (torch.rand(3) * 2 - 1) * strength
    shift = (torch.rand(3) * 2 - 1) * strength / 5
    density = (stains * scale + shift) @ _RGB_FROM_HED
    brightness = 1.0 + (float(torch.rand(())) * 2 - 1) * strength
    rgb = (256.0 * torch.exp(-density) - 1.0) * brightness
    return rgb.clamp(0, 255).permute(2, 0, 1)


def normalise(image: torch.Tensor, mean, std) -> torch.Tensor:
    """0-255 image to the network's input."""
    mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image.float() / 255.0 - mean) / std


class TrainingCrops(Dataset):
    """``crops_per_image`` random crops of each image per epoch with their proximity maps,
    augmented; indexed by (epoch, index) so every crop is seeded (resume and worker counts give
    the same batches)."""

    keyed = True

    def __init__(self, images, targets, size: int, mean, std, seed: int, crops_per_image: int, jitter: float):
        self.images, self.targets, self.size = images, targets, size
        self.mean, self.std, self.seed = mean, std, seed
        self.crops_per_image, self.jitter = crops_per_image, jitter

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        source = index // self.crops_per_image
        with image_rng(self.seed, epoch, index):
            image, target = random_crop(self.images[source], self.targets[source], self.size)
            image, target = random_symmetry(image, target)
            image = stain_jitter(image, self.jitter)
        return normalise(image, self.mean, self.std), target.contiguous()


class ValidationTiles(Dataset):
    """Every image cut into ``size`` squares (a grid covering it, the last row and column
    shifted back inside, or padded when the image is smaller): a fixed, batchable validation set."""

    def __init__(self, images, targets, size: int, mean, std) -> None:
        self.images, self.targets, self.size, self.mean, self.std = images, targets, size, mean, std
        self.tiles = [(i, top, left) for i, im in enumerate(images) for top, left in grid_origins(im.shape[-2:], size)]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index):
        source, top, left = self.tiles[index]
        image = pad_to(self.images[source], self.size, self.size)[:, top : top + self.size, left : left + self.size]
        target = pad_to(self.targets[source], self.size, self.size)[:, top : top + self.size, left : left + self.size]
        return normalise(image, self.mean, self.std), target.contiguous()


def axis_starts(length: int, size: int, step: int) -> list[int]:
    """Where windows of ``size`` start along an axis of ``length``, every ``step``, the last one
    moved back to end at the axis's end (one at 0 when the axis is shorter than a window)."""
    if length <= size:
        return [0]
    return sorted({*range(0, length - size, step), length - size})


def grid_origins(shape, size: int, step: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` squares covering an H x W image every ``step`` pixels
    (default ``size``), none leaving the image (see :func:`axis_starts`)."""
    step = step or size
    rows, cols = axis_starts(int(shape[0]), size, step), axis_starts(int(shape[1]), size, step)
    return [(top, left) for top in rows for left in cols]


def to_targets(maps: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(m)[None] for m in maps]

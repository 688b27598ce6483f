"""Datasets of the semi-supervised fits: images or cached features with per-module soft targets,
and unlabeled images as (weak view, strong view). Image datasets are keyed by (epoch, index)
so every image's augmentation is seeded as in supervised training."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.datasets import image_rng
from ..data.imageset import ImageSet


class TargetImages(Dataset):
    """Images with soft targets for M modules (N x M x C) and a mask (N x M) of the modules each
    image trains."""

    keyed = True

    def __init__(self, images: ImageSet, targets: torch.Tensor, mask: torch.Tensor, transform, seed: int) -> None:
        self.images, self.targets, self.mask, self.transform, self.seed = images, targets, mask, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with image_rng(self.seed, epoch, index):
            return self.transform(self.images.images[index]), self.targets[index], self.mask[index]


class FeatureTargets(Dataset):
    """Cached features (N x D, or N x M x D per module) with soft targets and a mask."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        self.features, self.targets, self.mask = features, targets, mask

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        return self.features[index], self.targets[index], self.mask[index]


class TwoViews(Dataset):
    """Unlabeled images as (weak view, strong view), seeded per (epoch, index)."""

    keyed = True

    def __init__(self, images: ImageSet, weak, strong, seed: int) -> None:
        self.images, self.weak, self.strong, self.seed = images, weak, strong, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with image_rng(self.seed, epoch, index):
            image = self.images.images[index]
            return self.weak(image), self.strong(image)


def concat(first: ImageSet, second: ImageSet) -> ImageSet:
    """Two image sets as one (the second's labels are placeholders: pool images)."""
    channels = max(first.images.shape[1], second.images.shape[1])
    images = torch.cat([first.images.expand(-1, channels, -1, -1), second.images.expand(-1, channels, -1, -1)])
    labels = torch.cat([first.labels, torch.zeros(len(second), dtype=torch.long)])
    return ImageSet(images.contiguous(), labels, first.class_names, first.ids + second.ids, first.source)

"""Data of the semi-supervised fits that is not a batch of images: cached features with
per-module soft targets, and the labelled and pool images joined into one set. (Images with
targets and masks, and the pool's two views, are :class:`fewlabel.data.datasets.ImageBatches`.)"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.imageset import ImageSet


class FeatureTargets(Dataset):
    """Cached features (N x D, or N x M x D per module) with soft targets and a mask."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        self.features, self.targets, self.mask = features, targets, mask

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        return self.features[index], self.targets[index], self.mask[index]


def concat(first: ImageSet, second: ImageSet) -> ImageSet:
    """Two image sets as one (the second's labels are placeholders: pool images)."""
    channels = max(first.images.shape[1], second.images.shape[1])
    images = torch.cat([first.images.expand(-1, channels, -1, -1), second.images.expand(-1, channels, -1, -1)])
    labels = torch.cat([first.labels, torch.zeros(len(second), dtype=torch.long)])
    return ImageSet(images.contiguous(), labels, first.class_names, first.ids + second.ids, first.source)

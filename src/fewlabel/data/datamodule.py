"""Datasets, a seeded epoch sampler and the LightningDataModule that serves them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .imageset import ImageSet


class TransformedImages(Dataset):
    """An ImageSet seen through a per-image transform; returns (image, label)."""

    def __init__(self, images: ImageSet, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images.images[index]), self.images.labels[index]


class EpochSampler(Sampler[int]):
    """Shuffles (or, balanced, draws with class-inverse weights) from a generator seeded by
    (seed, epoch), so an interrupted run that resumes at epoch e sees the same order."""

    def __init__(self, labels: torch.Tensor, seed: int, balanced: bool = False) -> None:
        self.labels = labels
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        if not self.balanced:
            return iter(torch.randperm(n, generator=generator).tolist())
        counts = torch.bincount(self.labels).float()
        weights = 1.0 / counts[self.labels]
        return iter(torch.multinomial(weights, n, replacement=True, generator=generator).tolist())


class ClassificationDataModule(L.LightningDataModule):
    """Serves a training set and an optional validation set (images or cached features)."""

    def __init__(
        self,
        train: Dataset,
        train_labels: torch.Tensor,
        val: Dataset | None,
        batch_size: int,
        seed: int,
        balanced: bool = False,
        workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = train
        self.train_labels = train_labels
        self.val_set = val
        self.batch_size = batch_size
        self.seed = seed
        self.balanced = balanced
        self.workers = workers

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.train_labels, self.seed, self.balanced)
        return self._loader(self.train_set, sampler=sampler, drop_last=len(self.train_set) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set)

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.workers,
            persistent_workers=self.workers > 0, **kwargs,
        )

"""Datasets, a seeded epoch sampler and the LightningDataModule that serves them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .imageset import ImageSet


@contextmanager
def image_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed torch's CPU generator for one image's random transform from (seed, epoch, index),
    restoring it afterwards. The CPU generator only: torch.manual_seed would also queue a
    (slow) CUDA seeding."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)
        yield


class TransformedImages(Dataset):
    """An ImageSet seen through a per-image transform; returns (image, label).

    Indexed by ``(epoch, index)`` (as :class:`EpochSampler` yields with ``keyed=True``), the
    random transform of each image is seeded by (seed, epoch, index): augmentation is then the
    same whatever the number of workers, the batch order, or a resume in between.
    """

    def __init__(self, images: ImageSet, transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(key, tuple):
            epoch, index = key
            with image_rng(self.seed, epoch, index):
                return self.transform(self.images.images[index]), self.images.labels[index]
        return self.transform(self.images.images[key]), self.images.labels[key]


class EpochSampler(Sampler[int]):
    """Shuffles (or, balanced, draws with class-inverse weights) from a generator seeded by
    (seed, epoch), so an interrupted run that resumes at epoch e sees the same order.
    It also shards that order across DDP processes (Lightning's own sampler is switched off)."""

    def __init__(
        self,
        labels: torch.Tensor,
        seed: int,
        balanced: bool = False,
        keyed: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = labels
        self.seed = seed
        self.balanced = balanced
        self.keyed = keyed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels) // self.world_size

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        if self.balanced:
            weights = 1.0 / torch.bincount(self.labels).float()[self.labels]
            order = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(n, generator=generator).tolist()
        # Under DDP each process takes every world_size-th index of the same order (the tail that
        # does not divide evenly is dropped), so one step of all processes sees the images one
        # step of a single process with world_size times the batch would see.
        order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        return iter([(self.epoch, i) for i in order] if self.keyed else order)


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
        keyed = isinstance(self.train_set, TransformedImages)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochSampler(self.train_labels, self.seed, self.balanced, keyed, rank, world)
        return self._loader(self.train_set, sampler=sampler, drop_last=len(self.train_set) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set)

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            **kwargs,
        )

"""Datasets over images held in memory and a seeded epoch sampler (torch only, no Lightning).

Indexed by ``(epoch, index)`` keys, a dataset seeds the random transform of each image from
(seed, epoch, index): augmentation is then the same whatever the number of workers, the
batch order, the number of processes, or a resume in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset, Sampler


@contextmanager
def image_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed torch's CPU generator for one image's random transform from (seed, epoch, index),
    restoring it afterwards. The CPU generator only: torch.manual_seed would also queue a
    (slow) CUDA seeding."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)
        yield


@dataclass
class RawImages:
    """A batch of uint8 images with their (epoch, index) keys and the transform that turns them
    into the network's input once they are on the device (:meth:`apply`, which the datamodule
    calls after the transfer)."""

    images: torch.Tensor
    keys: torch.Tensor
    transform: Callable
    seed: int

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> RawImages:
        device = torch.device(device)
        blocking = device.type == "cpu" if non_blocking is None else not non_blocking
        return replace(self, images=self.images.to(device, non_blocking=not blocking), keys=self.keys.to(device))

    def pin_memory(self) -> RawImages:
        return replace(self, images=self.images.pin_memory(), keys=self.keys.pin_memory())

    def __len__(self) -> int:
        return len(self.images)

    def apply(self):
        return self.transform(self.images, self.keys, self.seed)


class ImageBatches(Dataset):
    """Images held as one uint8 tensor, with per-image fields (labels, targets, masks), fetched a
    whole batch at a time: ``(RawImages, *fields)``. The transform runs on the batch after it
    reached the device (:class:`fewlabel.data.augment.BatchTransform`), seeded per image by
    the (epoch, index) keys the :class:`EpochSampler` yields (evaluation: plain indices)."""

    keyed = True

    def __init__(
        self, images: torch.Tensor, fields: Sequence[torch.Tensor], transform: Callable, seed: int = 0
    ) -> None:
        self.images = images
        self.fields = tuple(fields)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, keys: list) -> tuple:
        keyed = bool(keys) and isinstance(keys[0], tuple)
        pairs = torch.tensor(keys if keyed else [(0, k) for k in keys], dtype=torch.long).view(-1, 2)
        indices = pairs[:, 1]
        batch = RawImages(self.images[indices], pairs, self.transform, self.seed)
        return (batch, *(field[indices] for field in self.fields))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        raw, *fields = self.__getitems__([key])
        return (raw.apply()[0], *(f[0] for f in fields))

    @staticmethod
    def collate(batch: tuple) -> tuple:
        """The DataLoader's collate: ``__getitems__`` already made the batch."""
        return batch


PASS_STRIDE = 100_000  # key epoch of the k-th pass within one epoch: epoch + k * PASS_STRIDE


class EpochSampler(Sampler):
    """Shuffles (or, balanced, draws with class-inverse weights) from a generator seeded by
    (seed, epoch), so an interrupted run that resumes at epoch e sees the same order.

    ``num_samples`` (default: one pass) longer than the data chains further seeded passes, each
    keyed with its own epoch value so that a repeated image gets another augmentation. The
    order is sharded across DDP processes (Lightning's own sampler is switched off): each
    process takes every world_size-th index of the same order, the tail that does not divide
    evenly is dropped, so one step of all processes sees the images one step of a single
    process with world_size times the batch would see.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        seed: int,
        balanced: bool = False,
        keyed: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_samples: int | None = None,
    ) -> None:
        self.labels = labels
        self.seed = seed
        self.balanced = balanced
        self.keyed = keyed
        self.rank = rank
        self.world_size = world_size
        self.num_samples = num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.num_samples or len(self.labels)) // self.world_size

    def _one_pass(self, generator: torch.Generator) -> list[int]:
        n = len(self.labels)
        if self.balanced:
            weights = 1.0 / torch.bincount(self.labels).float()[self.labels]
            return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        return torch.randperm(n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        wanted = len(self) * self.world_size if len(self.labels) else 0
        keys: list[tuple[int, int]] = []
        passes = 0
        while len(keys) < wanted:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + passes * PASS_STRIDE)
            key_epoch = self.epoch + passes * PASS_STRIDE
            keys += [(key_epoch, i) for i in self._one_pass(generator)]
            passes += 1
        keys = keys[:wanted][self.rank :: self.world_size]
        return iter(keys if self.keyed else [i for _, i in keys])

"""The LightningDataModule of every fit: a training set (images or cached features), an optional
validation set and, for methods that learn from unlabeled images, an unlabeled stream that
gives ``unlabeled_batch`` images alongside every labelled batch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import EpochSampler, RawImages

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig


def default_workers(cuda: bool) -> int:
    """Loader processes when ``workers`` is not set. A loader only gathers uint8 images already
    in memory (the transform runs on the device after the transfer): on the CPU a worker would
    only take cores from the training step, so none; feeding a GPU, one per four cores (at most
    4) gathers and pins the next batches while the GPU computes."""
    if not cuda:
        return 0
    return min(4, (os.cpu_count() or 1) // 4)


class EngineDataModule(L.LightningDataModule):
    """Seeded, DDP-sharded loaders. A dataset with ``keyed = True`` is indexed by (epoch, index)
    so its per-image augmentation is seeded (see :mod:`fewlabel.data.datasets`)."""

    def __init__(
        self,
        train: Dataset,
        train_labels: torch.Tensor,
        val: Dataset | None,
        batch_size: int,
        seed: int,
        *,
        balanced: bool = False,
        workers: int | None = 0,
        unlabeled: Dataset | None = None,
        unlabeled_batch: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = train
        self.train_labels = train_labels
        self.val_set = val
        self.batch_size = batch_size
        self.seed = seed
        self.balanced = balanced
        self.workers = workers
        self.unlabeled = unlabeled
        self.unlabeled_batch = unlabeled_batch

    @property
    def has_validation(self) -> bool:
        return self.val_set is not None

    def _shard(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        rank, world = self._shard()
        keyed = getattr(self.train_set, "keyed", False)
        sampler = EpochSampler(self.train_labels, self.seed, self.balanced, keyed, rank, world)
        labelled = self._loader(self.train_set, self.batch_size, sampler, drop_last=len(sampler) > self.batch_size)
        if self.unlabeled is None:
            return labelled
        steps = max(1, len(labelled))
        stream = EpochSampler(
            torch.zeros(len(self.unlabeled), dtype=torch.long),
            self.seed + 17,
            keyed=getattr(self.unlabeled, "keyed", False),
            rank=rank,
            world_size=world,
            num_samples=steps * self.unlabeled_batch * world,
        )
        unlabeled = self._loader(self.unlabeled, self.unlabeled_batch, stream, drop_last=True)
        return CombinedLoader({"labelled": labelled, "unlabeled": unlabeled}, mode="min_size")

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, self.batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment (or, for evaluation, resize and normalise) every image batch where it now
        is, on the device; channels-last on CUDA, where convolutions run faster so."""
        from lightning_utilities.core.apply_func import apply_to_collection

        def transform(raw: RawImages):
            out = raw.apply()
            if raw.images.is_cuda:
                out = apply_to_collection(out, torch.Tensor, lambda t: t.contiguous(memory_format=torch.channels_last))
            return out

        return apply_to_collection(batch, RawImages, transform)

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer else torch.device("cpu")

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        in_memory = not getattr(dataset, "keyed", False)  # cached features: workers only cost
        cuda = self._device().type == "cuda"
        workers = 0 if in_memory else (default_workers(cuda) if self.workers is None else self.workers)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=cuda and not in_memory,
            collate_fn=getattr(dataset, "collate", None),
        )


def datamodule(
    cfg: TrainConfig, seed: int, train_set: Dataset, val_set: Dataset | None, labels: torch.Tensor, **kwargs
):
    """The datamodule of a fit with ``cfg``'s batch size and workers; ``labels`` drive the sampler
    (balanced with ``imbalance: balanced-sampler``)."""
    return EngineDataModule(
        train_set,
        labels,
        val_set,
        cfg.batch_size,
        seed,
        balanced=cfg.imbalance == "balanced-sampler",
        workers=cfg.workers,
        **kwargs,
    )

"""ImageSet: a labelled set of images held in memory as one uint8 tensor."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images decoded once (N x C x H x W uint8, C is 1 or 3), their labels and their origin.

    ``ids`` names where each image came from (a file path or ``dataset:split/index``), so
    warnings, reports and duplicate checks can point at the file.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ids: list[str]
    source: str = ""
    original_sizes: list[tuple[int, int]] | None = None  # (height, width) before resizing; None: as stored
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be an N x C x H x W uint8 tensor, got {self.images.shape}")
        if len(self.images) != len(self.labels) or len(self.labels) != len(self.ids):
            raise ValueError("images, labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: torch.Tensor | list[int]) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.long).tolist()
        return ImageSet(
            self.images[idx],
            self.labels[idx],
            list(self.class_names),
            [self.ids[i] for i in idx],
            self.source,
            [self.original_sizes[i] for i in idx] if self.original_sizes is not None else None,
        )

    def join(self, other: ImageSet) -> ImageSet:
        """This set followed by ``other`` (same classes, same image shape)."""
        if other.class_names != self.class_names:
            raise ValueError("only image sets with the same classes can be joined")
        sizes = (
            self.original_sizes + other.original_sizes
            if self.original_sizes is not None and other.original_sizes is not None
            else None
        )
        return ImageSet(
            torch.cat([self.images, other.images]),
            torch.cat([self.labels, other.labels]),
            list(self.class_names),
            self.ids + other.ids,
            self.source,
            sizes,
        )

    def fingerprint(self) -> str:
        """A hash of the pixels, labels and class names: the data part of a feature-cache key."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(self.images.numpy().tobytes())
            digest.update(self.labels.numpy().tobytes())
            digest.update("\x00".join(self.class_names).encode())
            self._fingerprint = digest.hexdigest()[:24]
        return self._fingerprint

    def summary(self) -> dict:
        sizes = self.original_sizes or [tuple(self.images.shape[2:])] * len(self)
        common = Counter(sizes).most_common(3)
        return {
            "source": self.source,
            "n_images": len(self),
            "image_shape": list(self.images.shape[1:]),
            "original_sizes": {
                "min": list(min(sizes)),
                "max": list(max(sizes)),
                "most_common": [{"size": list(size), "count": n} for size, n in common],
            },
            "class_counts": dict(zip(self.class_names, self.class_counts(), strict=True)),
        }

"""Seeded, stratified splits: a labelled subset of K per class, and a held-out fraction."""

from __future__ import annotations

import torch

from ..errors import FewlabelError
from .imageset import ImageSet


def per_class_subset(
    labels: torch.Tensor, k: int, seed: int, class_names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``k`` indices of every class (seeded); return (chosen, rest), both sorted."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, name in enumerate(class_names):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < k:
            raise FewlabelError(
                f"--labels-per-class {k} is larger than class '{name}', which has {len(members)} "
                f"image(s); use at most {min(int((labels == i).sum()) for i in range(len(class_names)))}."
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return _chosen_and_rest(torch.cat(chosen), len(labels))


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``fraction`` of each class (at least one image of any class with two or more)."""
    if not 0.0 < fraction < 1.0:
        raise FewlabelError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}.")
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        n_held = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(members[torch.randperm(len(members), generator=generator)[:n_held]])
    return _chosen_and_rest(torch.cat(held), len(labels))


def check_holdout(labels: torch.Tensor, fraction: float, class_names: list[str], asked: bool) -> None:
    """Refuse a validation split that would hold out less than one image of some class (or
    leave it none to train on), naming the class, its count and what would work."""
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    smallest = min(range(len(counts)), key=counts.__getitem__)
    n = counts[smallest]
    if n >= 2 and fraction * n >= 0.5:
        return
    flag = f"--val-split {fraction:g}" if asked else f"the default validation split ({fraction:g})"
    need = f"--val-split {min(0.5, 0.5 / n):.2g} or more" if n >= 2 else "more labelled images of that class"
    raise FewlabelError(
        f"{flag} holds out {fraction * n:.1f} of the {n} labelled image(s) of class '{class_names[smallest]}': "
        f"less than one image per class. Use {need}, or give DATA a val/ folder."
    )


def _chosen_and_rest(chosen: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()


def align_classes(dataset: ImageSet, class_names: list[str], stage: str) -> ImageSet:
    """Relabel ``dataset`` to ``class_names`` order; refuse classes the model has never seen."""
    if dataset.class_names == class_names:
        return dataset
    unknown = [
        c for c, n in zip(dataset.class_names, dataset.class_counts(), strict=True) if n and c not in class_names
    ]
    if unknown:
        raise FewlabelError(
            f"{stage} data '{dataset.source}' has classes the model does not know: "
            f"{', '.join(unknown)}. Model classes: {', '.join(class_names)}."
        )
    remap = torch.tensor([class_names.index(c) if c in class_names else -1 for c in dataset.class_names])
    return ImageSet(dataset.images, remap[dataset.labels], list(class_names), dataset.ids, dataset.source)


def random_subset(images: ImageSet, size: int | None, seed: int) -> ImageSet:
    """A seeded random subset of ``size`` images in their original order (all when fewer)."""
    if size is None or size >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images.subset(order[:size].sort().values)

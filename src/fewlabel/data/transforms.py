"""Per-image tensor transforms: uint8 C x H x W in, normalised float 3 x S x S out.

Images are decoded once and kept as uint8; these transforms run on those tensors every epoch,
so no file is decoded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

AUGMENTATIONS = ("none", "light", "standard", "randaugment")


def build_transform(
    augment: str, img_size: int, mean: Sequence[float], std: Sequence[float], train: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the transform for one image.

    Presets (training only; evaluation always resizes and normalises):
    ``none`` resize; ``light`` random resized crop (scale 0.8-1) and horizontal flip;
    ``standard`` adds crop scale 0.5-1 and colour jitter 0.2; ``randaugment`` is
    ``standard`` plus RandAugment (2 ops, magnitude 9).
    """
    steps: list[Callable] = [_to_rgb]
    if not train or augment == "none":
        steps.append(v2.Resize((img_size, img_size), antialias=True))
    else:
        scale = (0.8, 1.0) if augment == "light" else (0.5, 1.0)
        steps += [v2.RandomResizedCrop(img_size, scale=scale, antialias=True), v2.RandomHorizontalFlip()]
        if augment in ("standard", "randaugment"):
            steps.append(v2.ColorJitter(0.2, 0.2, 0.2))
        if augment == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def _to_rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def describe_eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> str:
    """A string that identifies the evaluation transform, for cache keys and logs."""
    return f"resize{img_size}-mean{tuple(round(m, 4) for m in mean)}-std{tuple(round(s, 4) for s in std)}"


def build_dense_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], train: bool, flip: bool = True
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Image (uint8 C x H x W) and per-pixel target (K x H x W) together, for dense tasks.

    Training: one random ``img_size`` square crop (padded with zeros where the image is
    smaller) and, with ``flip``, one random horizontal flip, drawn once and applied to both, so
    every target pixel stays on its image pixel; no resampling, so targets keep their values.
    Evaluation: the whole image, uncropped. The image is normalised, the target left as it is.
    """
    from torchvision import tv_tensors

    geometry = [v2.RandomCrop(img_size, pad_if_needed=True)] + ([v2.RandomHorizontalFlip()] if flip else [])
    joint = v2.Compose(geometry) if train else None
    to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def transform(image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = _to_rgb(image)
        if joint is not None:
            image, target = joint(tv_tensors.Image(image), tv_tensors.Mask(target))
        return to_float(image.as_subclass(torch.Tensor)), target.as_subclass(torch.Tensor)

    return transform

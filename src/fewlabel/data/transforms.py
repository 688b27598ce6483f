"""Per-image transforms of an image and its per-pixel target together, for dense tasks.

Classification images are transformed in whole batches on the device
(:mod:`fewlabel.data.augment`); a dense task's target must follow its image's geometry, which
these joint transforms guarantee one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from .images import to_rgb


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
        image = to_rgb(image)
        if joint is not None:
            image, target = joint(tv_tensors.Image(image), tv_tensors.Mask(target))
        return to_float(image.as_subclass(torch.Tensor)), target.as_subclass(torch.Tensor)

    return transform

"""Natural photos as building images for an audit (the UAP of issue 13): any folder of photos of
any size and mode, cut into random square crops at a model's input size."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import FewlabelError
from .images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_image_file

log = logging.getLogger("fewlabel.data")
CROP_SCALE = (0.5, 1.0)  # a crop's side as a share of the photo's shorter side


def photo_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted); refuses a missing or empty one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FewlabelError(f"Photo folder '{folder}' does not exist or is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise FewlabelError(f"Photo folder '{folder}' holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return files


def natural_crops(folder: str | Path, size: int, channels: int, count: int | None = None, seed: int = 0):
    """``count`` random square crops (default: one per photo), each from a photo taken in a
    seeded shuffled order (cycling when ``count`` exceeds the photos), its side a random share
    :data:`CROP_SCALE` of the photo's shorter side, resized to ``size``; as floats in [0, 1]
    with ``channels`` channels (colour photos averaged to gray for a grayscale model, gray ones
    repeated for a colour model; said once). Unreadable files are skipped with a warning naming
    each; a folder with no readable photo is refused."""
    files = photo_files(folder)
    generator = torch.Generator().manual_seed(seed)
    order = [files[i] for i in torch.randperm(len(files), generator=generator).tolist()]
    photos, skipped, converted, enlarged = [], [], set(), 0
    for path in order:
        try:
            photos.append(decode_image(path))
        except (ImageDecodeError, OSError) as exc:
            skipped.append(f"{path} ({exc})")
    for entry in skipped:
        log.warning("skipped unreadable photo %s", entry)
    if not photos:
        raise FewlabelError(f"Photo folder '{folder}': none of its {len(files)} image files could be read.")
    crops = []
    for i in range(count or len(photos)):
        photo = photos[i % len(photos)]
        if photo.shape[0] != channels:
            converted.add(photo.shape[0])
            photo = photo.float().mean(0, keepdim=True) if channels == 1 else photo.expand(channels, -1, -1)
        side = max(1, round(float(torch.empty(1).uniform_(*CROP_SCALE, generator=generator)) * min(photo.shape[1:])))
        top = int(torch.randint(0, photo.shape[1] - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - side + 1, (1,), generator=generator))
        enlarged += side < size
        crop = photo[:, top : top + side, left : left + side].float()[None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    if converted:
        kinds = {1: "grayscale", 3: "colour"}
        log.info(
            "photos converted from %s to the model's %s", "/".join(kinds[c] for c in sorted(converted)), kinds[channels]
        )
    if enlarged:
        log.info("%d of %d crops were smaller than the model's %d px input: enlarged", enlarged, len(crops), size)
    return (torch.stack(crops) / 255).clamp(0, 1)

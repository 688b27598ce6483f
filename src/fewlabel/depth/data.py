"""Depth data: images with a depth map each, at their own size.

DATA for the depth task is a folder of images, each with a depth map of the same stem beside it:
``frame.png`` with ``frame_depth.npy`` (float, in the task's ``units``) or ``frame_depth.png``
(16-bit, ``png_scale`` units per count). ``train/``, ``val/`` and ``test/`` sub-folders hold
splits (``DATA:test`` names one). Pixels without a valid depth (NaN, infinite, zero or
negative) are masked out of training and scoring, counted and warned about. An image without a
depth map is skipped with a warning (refused with ``--strict``); a depth map whose size differs
from its image is refused, naming both sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import is_image_file, to_rgb
from ..data.sources import decode_files, split_folder
from ..errors import FewlabelError

log = logging.getLogger("fewlabel.data")
DEPTH_SUFFIXES = ("_depth.npy", "_depth.png")


def images_per_epoch(total: int, replay: tuple[int, int] | None) -> int:
    """Images one training epoch sees of ``total``: all, or with ``replay`` (pool, per_epoch) the
    ones outside the pool and ``per_epoch`` of it."""
    return total if replay is None else total - replay[0] + replay[1]


@dataclass
class DepthSet:
    """Images (uint8 3 x H x W, each at its own size), their depth maps (float32 1 x H x W, NaN
    where invalid) and ids. ``replay`` (pool, per_epoch): the last ``pool`` images are a rehearsal
    pool of which training sees ``per_epoch``, drawn anew each epoch (:class:`DepthPairs`)."""

    images: list[torch.Tensor]
    depths: list[torch.Tensor]
    ids: list[str]
    source: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False)  # computed from the split: resized copies, depth stats
    replay: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> DepthSet:
        indices = [int(i) for i in indices]
        return DepthSet(
            [self.images[i] for i in indices], [self.depths[i] for i in indices], [self.ids[i] for i in indices],
            self.source,
        )  # fmt: skip

    def joined(self, other: DepthSet) -> DepthSet:
        """This split's images followed by ``other``'s, with this split's source; a rehearsal pool
        (``replay``) stays last."""
        if self.replay is None:
            return DepthSet(self.images + other.images, self.depths + other.depths, self.ids + other.ids, self.source)
        own = len(self) - self.replay[0]
        tail = self.subset(range(own, len(self)))
        joined = self.subset(range(own)).joined(other).joined(tail)
        joined.replay = self.replay
        return joined

    def seen_per_epoch(self) -> int:
        """Images one training epoch sees: all, or the own ones and ``per_epoch`` of the pool."""
        return images_per_epoch(len(self), self.replay)

    def depth_range(self) -> tuple[float, float]:
        """The least and greatest valid depth of the split."""
        stats = self._depth_stats()
        return stats["min"], stats["max"]

    def median_depth(self) -> float:
        return self._depth_stats()["median"]

    def _depth_stats(self) -> dict:
        """Least, greatest and median valid depth, computed once (the card, the summary and the
        training offset all ask, and the valid depths of a large split are hundreds of MB)."""
        if "depth_stats" not in self.cache:
            values = torch.cat([d[torch.isfinite(d)] for d in self.depths])
            self.cache["depth_stats"] = {
                "min": float(values.min()), "max": float(values.max()), "median": float(values.median()),
            }  # fmt: skip
        return self.cache["depth_stats"]


def depth_file_of(image: Path) -> Path | None:
    for suffix in DEPTH_SUFFIXES:
        candidate = image.with_name(image.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_depth(path: Path, png_scale: float = 0.01) -> np.ndarray:
    """A depth map as float32 H x W, invalid values (NaN, infinite, <= 0) as NaN."""
    try:
        if path.suffix == ".npy":
            depth = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as handle:
                depth = np.asarray(handle, dtype=np.float64) * png_scale
    except (OSError, ValueError) as exc:
        raise FewlabelError(
            f"Depth map '{path}' cannot be read ({exc}); accepted: .npy (float) or 16-bit .png."
        ) from None
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise FewlabelError(f"Depth map '{path}' has shape {depth.shape}; accepted: one value per pixel (H x W).")
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def _pairs(folder: Path, strict: bool) -> tuple[list[Path], list[Path]]:
    """Images of ``folder`` with their depth files; images without one skipped (warned) or refused."""
    images = sorted(p for p in folder.iterdir() if is_image_file(p) and not p.stem.endswith("_depth"))
    if not images:
        raise FewlabelError(f"DATA '{folder}' holds no images (accepted: .png, .jpg, .tif ... with NAME_depth.npy).")
    paired = [(image, depth_file_of(image)) for image in images]
    missing = [image.name for image, depth in paired if depth is None]
    if missing:
        named = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        if strict:
            raise FewlabelError(f"--strict: {len(missing)} image(s) in '{folder}' have no depth map: {named}")
        log.warning("skipped %d image(s) in '%s' without a depth map (NAME_depth.npy or .png): %s",
                    len(missing), folder, named)  # fmt: skip
    kept = [(image, depth) for image, depth in paired if depth is not None]
    if not kept:
        raise FewlabelError(f"DATA '{folder}': no image has a depth map; accepted: frame.png with frame_depth.npy "
                            "(float) or frame_depth.png (16-bit) beside it.")  # fmt: skip
    return [image for image, _ in kept], [depth for _, depth in kept]


def load_depth(spec: str, strict: bool = False, progress: bool = False, png_scale: float = 0.01) -> DepthSet:
    """The images and depth maps a depth DATA spec names (see the module docstring)."""
    folder = split_folder(spec)
    if not folder.is_dir():
        raise FewlabelError(f"DATA '{spec}' is a file; the depth task reads a folder of images with depth maps.")
    paths, depth_paths = _pairs(folder, strict)
    images, depths, ids, invalid = [], [], [], 0
    for index, image, (height, width) in decode_files(paths, None, strict, progress):
        depth = read_depth(depth_paths[index], png_scale)
        if depth.shape != (height, width):
            raise FewlabelError(
                f"Depth map '{depth_paths[index]}' is {depth.shape[1]}x{depth.shape[0]} but its image "
                f"'{paths[index].name}' is {width}x{height} (width x height); they must match pixel for pixel."
            )
        invalid += int(np.isnan(depth).sum())
        images.append(to_rgb(image))
        depths.append(torch.from_numpy(depth)[None])
        ids.append(str(paths[index]))
    if invalid:
        log.warning("%d pixel(s) in '%s' have no valid depth (NaN, infinite or <= 0); masked out", invalid, folder)
    if not images:
        raise FewlabelError(f"DATA '{spec}': no readable image with a depth map.")
    return DepthSet(images, depths, ids, source={"spec": spec, "location": str(folder), "invalid_pixels": invalid})

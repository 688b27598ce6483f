"""Nucleus annotations: images at their own size and the exact centres of their nuclei.

DATA for the nuclei task is one of:

* a folder of images, each with a point CSV of the same stem beside it (``tile.png`` and
  ``tile.csv`` with columns ``x,y``); an image without one has no nuclei (warned);
* a folder of images, each with an instance-label mask (``tile_mask.png`` or ``tile_mask.tif``:
  0 background, one integer per nucleus); centres are the masks' centroids;
* one CSV with columns ``image,x,y`` (paths relative to the CSV; an image with no nucleus
  appears once with empty x and y).

A folder with ``train/`` (and ``val/``, ``test/``) sub-folders holds its splits there;
``DATA:test`` names one. Points outside their image are dropped with a warning giving the count.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import is_image_file, to_rgb
from ..data.sources import decode_files, split_folder
from ..errors import FewlabelError
from ..fileio import read_text

log = logging.getLogger("fewlabel.data")
MASK_SUFFIXES = ("_mask.png", "_mask.tif", "_mask.tiff")
POINT_COLUMNS = ("x", "y")
TABLE_COLUMNS = ("image", "x", "y")


@dataclass
class NucleusSet:
    """Images (uint8 3 x H x W, each at its own size), their centres (N x 2, x y) and ids.
    ``crops_per_image``: training crops drawn from each image per epoch."""

    images: list[torch.Tensor]
    points: list[np.ndarray]
    ids: list[str]
    crops_per_image: int = 1
    source: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False)  # what is computed from this split (target maps)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> NucleusSet:
        indices = [int(i) for i in indices]
        return NucleusSet(
            [self.images[i] for i in indices],
            [self.points[i] for i in indices],
            [self.ids[i] for i in indices],
            self.crops_per_image,
            self.source,
        )

    def join(self, other: NucleusSet) -> NucleusSet:
        return NucleusSet(
            self.images + other.images, self.points + other.points, self.ids + other.ids, self.crops_per_image,
            self.source,
        )  # fmt: skip

    @property
    def n_nuclei(self) -> int:
        return int(sum(len(p) for p in self.points))

    def megapixels(self) -> float:
        return sum(im.shape[1] * im.shape[2] for im in self.images) / 1e6


def _checked_rows(path: Path, columns: tuple[str, ...], what: str, accepted: str) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV whose header starts with ``columns``; another header is
    refused naming the columns found."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    found = [c.strip() for c in reader.fieldnames or []]
    if found[: len(columns)] != list(columns):
        raise FewlabelError(f"{what} '{path}': columns {found or 'none'}; accepted: {accepted}.")
    return list(enumerate(reader, start=2))


def _point(path: Path, line: int, row: dict) -> tuple[float, float] | None:
    """A row's centre; None when x is empty (an image without nuclei in a table)."""
    if not (row.get("x") or "").strip():
        return None
    try:
        return float(row["x"]), float(row["y"])
    except (TypeError, ValueError):
        raise FewlabelError(f"'{path}', line {line}: x and y must be numbers.") from None


def read_points(path: Path) -> np.ndarray:
    """The ``x,y`` rows of a point CSV (N x 2); wrong columns are refused, naming them."""
    rows = _checked_rows(path, POINT_COLUMNS, "Point file", "a header 'x,y' then one centre per row")
    points = [p for line, row in rows if (p := _point(path, line, row)) is not None]
    return np.asarray(points, dtype=np.float32).reshape(-1, 2)


def mask_centres(path: Path) -> np.ndarray:
    """Centroids (N x 2, x y) of the instances of a label mask (0 is background)."""
    from skimage.measure import regionprops

    try:
        with Image.open(path) as img:
            labels = np.array(img)
    except OSError as exc:
        raise FewlabelError(f"Mask '{path}' cannot be read ({exc}).") from None
    if labels.ndim != 2:
        raise FewlabelError(f"Mask '{path}' has {labels.ndim} dimensions; accepted: one integer label per pixel.")
    regions = regionprops(labels.astype(np.int64))
    return np.asarray([(r.centroid[1], r.centroid[0]) for r in regions], dtype=np.float32).reshape(-1, 2)


def _annotation_of(image: Path) -> Path | None:
    csv_file = image.with_suffix(".csv")
    if csv_file.is_file():
        return csv_file
    for suffix in MASK_SUFFIXES:
        mask = image.with_name(image.stem + suffix)
        if mask.is_file():
            return mask
    return None


def _is_mask(path: Path) -> bool:
    return any(path.name.endswith(s) for s in MASK_SUFFIXES)


def _read_table(path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """Images and their centres from one ``image,x,y`` CSV."""
    rows = _checked_rows(path, TABLE_COLUMNS, "Point table", "a header 'image,x,y' (image paths relative to the CSV)")
    points: dict[str, list[tuple[float, float]]] = {}
    for line, row in rows:
        centres = points.setdefault(row["image"], [])
        if (point := _point(path, line, row)) is not None:
            centres.append(point)
    images = [path.parent / name for name in points]
    return images, [np.asarray(points[name], dtype=np.float32).reshape(-1, 2) for name in points]


def _read_folder(folder: Path) -> tuple[list[Path], list[np.ndarray]]:
    images = sorted(p for p in folder.iterdir() if is_image_file(p) and not _is_mask(p))
    if not images:
        raise FewlabelError(f"DATA '{folder}' holds no images (accepted: {', '.join(('.png', '.jpg', '.tif'))} ...).")
    points, unannotated = [], []
    for image in images:
        annotation = _annotation_of(image)
        if annotation is None:
            unannotated.append(image.name)
            points.append(np.zeros((0, 2), dtype=np.float32))
        else:
            points.append(mask_centres(annotation) if _is_mask(annotation) else read_points(annotation))
    if len(unannotated) == len(images):
        raise FewlabelError(
            f"DATA '{folder}': no image has annotations; accepted: tile.csv (x,y) or tile_mask.png beside "
            "tile.png, or one CSV image,x,y."
        )
    if unannotated:
        named = ", ".join(unannotated[:5]) + (" ..." if len(unannotated) > 5 else "")
        log.warning(
            "%d image(s) in '%s' have no annotation file; taken as holding no nuclei: %s",
            len(unannotated),
            folder,
            named,
        )
    return images, points


def drop_outside(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """The points inside a ``height`` x ``width`` image (pixel i spans i - 0.5 to i + 0.5), and
    how many were not."""
    inside = (
        (points[:, 0] >= -0.5) & (points[:, 0] <= width - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] <= height - 0.5)
    )
    return points[inside], int((~inside).sum())


def load_nuclei(spec: str, strict: bool = False, progress: bool = False) -> NucleusSet:
    """The images and centres a nuclei DATA spec names (see the module docstring)."""
    location = split_folder(spec)
    if location.is_file():
        if location.suffix.lower() != ".csv":
            raise FewlabelError(f"DATA '{spec}' is a file but not a .csv (accepted: a folder, or a CSV image,x,y).")
        paths, points = _read_table(location)
    else:
        paths, points = _read_folder(location)
    decoded = decode_files(paths, None, strict, progress)
    images, kept, ids, dropped = [], [], [], 0
    for index, image, (height, width) in decoded:
        inside, outside = drop_outside(points[index], height, width)
        dropped += outside
        images.append(to_rgb(image))
        kept.append(inside)
        ids.append(str(paths[index]))
    if dropped:
        log.warning("dropped %d annotated point(s) outside their image in '%s'", dropped, location)
    return NucleusSet(images, kept, ids, source={"spec": spec, "location": str(location)})

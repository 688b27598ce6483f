"""DATA specs: an ImageFolder folder, a ``path,label`` CSV, or a built-in name, each with ``:split``.

A folder holding ``train/`` (and optionally ``val/``, ``test/``) subfolders is used split by
split; any other folder is one ImageFolder whose split is ``train``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FewlabelError, unknown_choice
from ..fileio import read_text
from .builtin import BUILTIN_DATASETS, load_builtin
from .images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_image_file, resize_to_square
from .imageset import ImageSet

log = logging.getLogger("fewlabel.data")
SPLITS = ("train", "val", "test")
UNLABELED = "(unlabeled)"  # the one class name of a pool without labels


@dataclass(frozen=True)
class DataSpec:
    """A parsed DATA argument: what kind of source, where it is, and which split was named."""

    kind: str  # "builtin" | "folder" | "csv"
    location: str
    split: str | None = None

    def __str__(self) -> str:
        return self.location + (f":{self.split}" if self.split else "")

    def with_split(self, split: str) -> DataSpec:
        return DataSpec(self.kind, self.location, split)

    def available_splits(self) -> tuple[str, ...]:
        return SOURCE_KINDS[self.kind].splits(self.location)


@dataclass(frozen=True)
class SourceKind:
    """One kind of DATA: the splits a location holds, how one split is loaded
    (``load(location, split, image_size, strict, progress)``), and whether the location holds
    any image at all (checked before a recipe trains; by default assumed)."""

    splits: Callable[[str], tuple[str, ...]]
    load: Callable[[str, str, int, bool, bool], ImageSet]
    holds_images: Callable[[str], bool] = lambda location: True


def _folder_splits(location: str) -> tuple[str, ...]:
    found = tuple(s for s in SPLITS if (Path(location) / s).is_dir())
    return found if "train" in found else ("train",)


def _load_folder_split(location: str, split: str, image_size: int, strict: bool, progress: bool) -> ImageSet:
    root = Path(location)
    folder = root / split if (root / "train").is_dir() else root
    return _load_image_folder(folder, image_size, strict, progress)


def _load_builtin_split(location: str, split: str, image_size: int, strict: bool, progress: bool) -> ImageSet:
    return load_builtin(location, split)  # stored at its own size: resized by the transforms


def _load_csv_split(location: str, split: str, image_size: int, strict: bool, progress: bool) -> ImageSet:
    return _load_csv(Path(location), image_size, strict, progress)


SOURCE_KINDS: dict[str, SourceKind] = {
    "builtin": SourceKind(lambda location: BUILTIN_DATASETS[location].splits, _load_builtin_split),
    "folder": SourceKind(
        _folder_splits,
        _load_folder_split,
        lambda location: any(p.is_file() and is_image_file(p) for p in Path(location).rglob("*")),
    ),
    "csv": SourceKind(lambda location: ("train",), _load_csv_split),
}


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``fashion-mnist:test``, ``data/skin``, ``data/skin:val`` or ``labels.csv``."""
    location, split = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS:
        location, split = head, tail
    if location in BUILTIN_DATASETS:
        return DataSpec("builtin", location, split)
    path = Path(location)
    if path.is_dir():
        return DataSpec("folder", str(path), split)
    if path.is_file() and path.suffix.lower() == ".csv":
        return DataSpec("csv", str(path), split)
    if path.exists():
        raise FewlabelError(
            f"DATA '{spec}' is a file but not a .csv. Accepted: a folder in ImageFolder layout, "
            "a CSV with path,label columns, or a built-in dataset name."
        )
    if "/" in location or "\\" in location or "." in location:
        raise FewlabelError(f"DATA '{spec}': no such file or folder.")
    raise unknown_choice("dataset", location, BUILTIN_DATASETS)


def load_data(spec: DataSpec | str, image_size: int, strict: bool = False, progress: bool = True) -> ImageSet:
    """Load the split the spec names (``train`` when it names none) into memory."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    split = spec.split or "train"
    if split not in spec.available_splits():
        raise FewlabelError(
            f"DATA '{spec.location}' has no '{split}' split. Available: {', '.join(spec.available_splits())}."
        )
    dataset = SOURCE_KINDS[spec.kind].load(spec.location, split, image_size, strict, progress)
    dataset.source = str(spec.with_split(split))
    _check_classes(dataset, str(spec.with_split(split)))
    return dataset


def load_pool(spec: str, image_size: int, strict: bool = False, progress: bool = True) -> ImageSet:
    """An unlabeled pool: a folder of images without class subfolders, a CSV with a ``path``
    column, or any labelled DATA (its ``train`` split unless one is named).

    Labels of a labelled source are kept as hidden truth for audits and never trained on; a
    pool without labels has the single class :data:`UNLABELED` (see :func:`has_labels`).
    """
    path = Path(spec)
    if path.is_dir() and not any(p.is_file() and is_image_file(p) for p in path.rglob("*")):
        raise FewlabelError(f"Unlabeled pool '{spec}' holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    if path.is_dir() and any(is_image_file(p) for p in path.iterdir() if p.is_file()):
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        pool = _decode_all([(f, 0) for f in files], [UNLABELED], image_size, strict, progress)
    elif path.is_file() and path.suffix.lower() == ".csv" and not _csv_has_labels(path):
        pool = _load_csv(path, image_size, strict, progress, labelled=False)
    else:
        return load_data(spec, image_size, strict, progress)
    pool.source = spec
    return pool


def has_labels(images: ImageSet) -> bool:
    return images.class_names != [UNLABELED]


def _csv_has_labels(path: Path) -> bool:
    header = next(csv.reader(io.StringIO(read_text(path), newline="")), [])
    return "label" in [c.strip() for c in header]


def _check_classes(dataset: ImageSet, name: str) -> None:
    present = [c for c, n in zip(dataset.class_names, dataset.class_counts(), strict=True) if n]
    if len(present) < 2:
        raise FewlabelError(
            f"DATA '{name}' has {len(present)} class(es) with images ({', '.join(present) or 'none'});"
            " classification needs at least 2."
        )


def _load_image_folder(folder: Path, image_size: int, strict: bool, progress: bool) -> ImageSet:
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FewlabelError(
            f"Folder '{folder}' has no class subfolders. Expected ImageFolder layout: "
            f"{folder}/<class name>/<image files>."
        )
    entries: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise FewlabelError(
                f"Class folder '{class_dir}' has no image files "
                "(accepted extensions: .png .jpg .jpeg .bmp .tif .tiff .gif .webp .ppm .pgm)."
            )
        entries += [(f, label) for f in files]
    return _decode_all(entries, [d.name for d in class_dirs], image_size, strict, progress)


def _load_csv(path: Path, image_size: int, strict: bool, progress: bool, labelled: bool = True) -> ImageSet:
    """A ``path,label`` CSV (paths relative to the CSV); ``labelled=False`` needs only ``path``."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    required = ("path", "label") if labelled else ("path",)
    if any(c not in columns for c in required):
        wanted = "columns 'path' and 'label'" if labelled else "a column 'path'"
        raise FewlabelError(f"CSV '{path}' must have {wanted}; found: {', '.join(columns) or 'none'}.")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise FewlabelError(f"CSV '{path}' has no rows.")
    missing = [r["path"] for r in rows if not (path.parent / r["path"]).is_file()]
    if missing:
        raise FewlabelError(
            f"CSV '{path}': {len(missing)} path(s) not found relative to the CSV, first: '{missing[0]}'."
        )
    if not labelled:
        rows = [r | {"label": UNLABELED} for r in rows]
    class_names = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(class_names)}
    entries = [(path.parent / r["path"], index[r["label"]]) for r in rows]
    return _decode_all(entries, class_names, image_size, strict, progress)


def decode_files(
    paths: list[Path], image_size: int | None, strict: bool, progress: bool
) -> list[tuple[int, torch.Tensor, tuple[int, int]]]:
    """Decode every file once: resized (shorter side, then centre crop) to ``image_size``, or at
    its own size when ``image_size`` is None (dense tasks: targets stay aligned pixel for pixel).
    Returns (index in ``paths``, image, original (height, width)) of the readable files; a bad file
    is skipped with one warning naming it (refused with ``strict``).

    Files are decoded in a thread pool (Pillow releases the GIL while decoding).
    """
    from tqdm.auto import tqdm

    def decode(path: Path) -> tuple[torch.Tensor, tuple[int, int]] | ImageDecodeError:
        try:
            image = decode_image(path)
        except ImageDecodeError as exc:
            return exc
        size = (image.shape[1], image.shape[2])
        return (image if image_size is None else resize_to_square(image, image_size)), size

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(
            tqdm(
                pool.map(decode, paths),
                total=len(paths),
                desc="decoding images",
                leave=False,
                disable=not progress or len(paths) < 200,
            )
        )
    decoded, bad = [], []
    for index, (path, result) in enumerate(zip(paths, results, strict=True)):
        if isinstance(result, ImageDecodeError):
            if strict:
                raise FewlabelError(f"Unreadable image '{path}': {result} (remove it, or drop --strict to skip).")
            bad.append(f"{path} ({result})")
            continue
        decoded.append((index, *result))
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), "; ".join(bad))
    if not decoded:
        raise FewlabelError(f"No readable images among {len(paths)} file(s).")
    return decoded


def _decode_all(
    entries: list[tuple[Path, int]], class_names: list[str], image_size: int, strict: bool, progress: bool
) -> ImageSet:
    """Decode labelled files into one ImageSet, resized to ``image_size`` (see :func:`decode_files`)."""
    decoded = decode_files([p for p, _ in entries], image_size, strict, progress)
    _check_every_class_readable(entries, class_names, {i for i, _, _ in decoded})
    images = [image for _, image, _ in decoded]
    channels = max(im.shape[0] for im in images)
    stacked = torch.stack([im.expand(channels, -1, -1) for im in images]).contiguous()
    labels = torch.tensor([entries[i][1] for i, _, _ in decoded], dtype=torch.long)
    ids = [str(entries[i][0]) for i, _, _ in decoded]
    return ImageSet(stacked, labels, class_names, ids, original_sizes=[size for _, _, size in decoded])


def _check_every_class_readable(entries: list[tuple[Path, int]], class_names: list[str], read: set[int]) -> None:
    """Refuse a class none of whose files could be read (it would stay in the class list with no
    images, and the split would fail with a misleading count)."""
    for label, name in enumerate(class_names):
        files = [i for i, (_, y) in enumerate(entries) if y == label]
        if files and not any(i in read for i in files):
            raise FewlabelError(
                f"class '{name}': no readable image among its {len(files)} file(s) (first: '{entries[files[0]][0]}'); "
                "fix or remove them."
            )


def load_images_by_id(ids: list[str], image_size: int) -> list[torch.Tensor | None]:
    """Images named by ImageSet ids (file paths or ``dataset:split/index``), resized to
    ``image_size``; None for an id that no longer resolves (a moved or deleted file)."""
    builtin_splits: dict[tuple[str, str], ImageSet] = {}
    images: list[torch.Tensor | None] = []
    for image_id in ids:
        head, _, index = image_id.rpartition("/")
        name, _, split = head.partition(":")
        if name in BUILTIN_DATASETS and index.isdigit():
            if (name, split) not in builtin_splits:
                builtin_splits[(name, split)] = load_builtin(name, split)
            images.append(resize_to_square(builtin_splits[(name, split)].images[int(index)], image_size))
            continue
        try:
            images.append(resize_to_square(decode_image(image_id), image_size))
        except (ImageDecodeError, OSError):
            images.append(None)
    return images


def split_folder(spec: str) -> Path:
    """The folder or file a dense task's DATA spec names: ``DATA:split`` is ``DATA/split``; a folder
    holding a ``train/`` sub-folder means its training split."""
    location, sep, split = spec.rpartition(":")
    if not sep or split not in SPLITS:
        location, split = spec, None
    path = Path(location)
    if not path.exists():
        raise FewlabelError(f"DATA '{spec}': no such file or folder.")
    if split is not None:
        if not (path / split).is_dir():
            found = [s for s in SPLITS if (path / s).is_dir()]
            raise FewlabelError(
                f"DATA '{spec}': no '{split}' folder in '{path}' (found: {', '.join(found) or 'none'})."
            )
        return path / split
    return path / "train" if (path / "train").is_dir() else path


def has_split(spec: str, split: str) -> bool:
    location = spec.rpartition(":")[0] if spec.rpartition(":")[2] in SPLITS else spec
    return (Path(location) / split).is_dir()

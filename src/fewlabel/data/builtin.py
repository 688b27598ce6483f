"""Built-in datasets: full Fashion-MNIST and a small subset shipped inside the package."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FewlabelError, unknown_choice
from .imageset import ImageSet

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SHIPPED_DIR = Path(__file__).parent / "builtin"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain), the format of MNIST-style datasets."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FewlabelError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise FewlabelError(f"{path}: truncated IDX file (expected {shape})")
    return data.reshape(shape)


def load_idx_split(folder: Path, split: str, name: str) -> ImageSet:
    images_file, labels_file = (folder / f for f in IDX_FILES[split])
    images = torch.from_numpy(read_idx(images_file).copy())[:, None]
    labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
    ids = [f"{name}:{split}/{i}" for i in range(len(labels))]
    return ImageSet(images, labels, list(FASHION_CLASSES), ids, f"{name}:{split}")


def fashion_mnist_dir() -> Path | None:
    """Where the full Fashion-MNIST IDX files are: $FEWLABEL_FASHION_MNIST_DIR, Debian, or cache."""
    candidates = [
        os.environ.get("FEWLABEL_FASHION_MNIST_DIR"),
        DEBIAN_FASHION_DIR,
        cache_root() / "datasets" / "FashionMNIST" / "raw",
    ]
    for candidate in candidates:
        if candidate and all((Path(candidate) / f).exists() for f in IDX_FILES["train"]):
            return Path(candidate)
    return None


def cache_root() -> Path:
    return Path(os.environ.get("FEWLABEL_CACHE_DIR", Path.home() / ".cache" / "fewlabel"))


def _download_fashion_mnist() -> Path:
    from torchvision.datasets import FashionMNIST

    root = cache_root() / "datasets"
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:
        raise FewlabelError(
            "Built-in dataset 'fashion-mnist' is not on this machine and could not be downloaded "
            f"({type(exc).__name__}). Install it with 'apt-get install dataset-fashion-mnist', "
            "set FEWLABEL_FASHION_MNIST_DIR to a folder of its IDX files, or use 'fashion-mnist-small'."
        ) from None
    return root / "FashionMNIST" / "raw"


def _load_fashion_mnist(split: str) -> ImageSet:
    folder = fashion_mnist_dir() or _download_fashion_mnist()
    return load_idx_split(folder, split, "fashion-mnist")


def _load_fashion_mnist_small(split: str) -> ImageSet:
    return load_idx_split(SHIPPED_DIR / "fashion-mnist-small", split, "fashion-mnist-small")


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    splits: tuple[str, ...]
    loader: Callable[[str], ImageSet]
    is_present: Callable[[], bool]


BUILTIN_DATASETS = {
    d.name: d
    for d in (
        BuiltinDataset(
            "fashion-mnist",
            "Fashion-MNIST, 60,000 train / 10,000 test, 28x28 grayscale, 10 classes",
            ("train", "test"),
            _load_fashion_mnist,
            lambda: fashion_mnist_dir() is not None,
        ),
        BuiltinDataset(
            "fashion-mnist-small",
            "stratified Fashion-MNIST subset shipped in the package, 100 train / 100 test per class",
            ("train", "test"),
            _load_fashion_mnist_small,
            lambda: (SHIPPED_DIR / "fashion-mnist-small" / IDX_FILES["train"][0]).exists(),
        ),
    )
}


def load_builtin(name: str, split: str) -> ImageSet:
    if name not in BUILTIN_DATASETS:
        raise unknown_choice("dataset", name, BUILTIN_DATASETS)
    dataset = BUILTIN_DATASETS[name]
    if split not in dataset.splits:
        raise FewlabelError(f"Dataset '{name}' has no split '{split}'. Available: {', '.join(dataset.splits)}.")
    return dataset.loader(split)

"""Build the fashion-mnist-small subset shipped in the package (run once; output is committed).

Takes a stratified sample of 100 train and 100 test images per class from the full
Fashion-MNIST IDX files (seed 0) and writes them in the same IDX format.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from fewlabel.data.builtin import IDX_FILES, SHIPPED_DIR, fashion_mnist_dir, read_idx

PER_CLASS = 100


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def main() -> None:
    source = fashion_mnist_dir()
    if source is None:
        sys.exit("full Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    out = SHIPPED_DIR / "fashion-mnist-small"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, (images_name, labels_name) in IDX_FILES.items():
        images, labels = read_idx(source / images_name), read_idx(source / labels_name)
        chosen = np.sort(
            np.concatenate([rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False) for c in range(10)])
        )
        write_idx(out / images_name, images[chosen])
        write_idx(out / labels_name, labels[chosen])
        print(f"{split}: {len(chosen)} images -> {out}")


if __name__ == "__main__":
    main()

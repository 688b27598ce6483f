"""``clusters`` intermediate datasets: pseudo-classes from unlabeled target-domain images.

Following the annotation-free variant of stepwise fine-tuning (Qu et al.), each image is
described, the descriptions are grouped into K pseudo-classes with k-means, and the least
consistent members of each group (farthest from their centroid) are dropped before the
network is fine-tuned on the groups.

Choices the paper leaves open, each a parameter:
* ``descriptor``: ``handcrafted`` (per-channel colour histograms, 16 bins each, plus a
  uniform local-binary-pattern histogram, P=8, R=1, of the grey image: stain and texture
  statistics), ``embedding`` (the backbone's pooled features) or ``both`` (concatenated after
  standardising each part).
* ``keep_fraction``: the share of each cluster kept, nearest to its centroid first (0.8).
* k-means: scikit-learn's, ``n_init=10``, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.feature import local_binary_pattern
from sklearn.cluster import KMeans

from ..data.imageset import ImageSet
from ..errors import FewlabelError
from ..rundir import CLUSTERS_MARKER
from . import DESCRIPTORS

COLOUR_BINS = 16
LBP_POINTS, LBP_RADIUS = 8, 1


def handcrafted_descriptors(images: ImageSet) -> np.ndarray:
    """N x D colour-histogram + LBP-histogram descriptors (each histogram sums to 1)."""
    rows = []
    for image in images.images:
        array = image.numpy()
        colour = [np.histogram(channel, bins=COLOUR_BINS, range=(0, 256))[0] for channel in array]
        grey = array.mean(0).round().astype(np.uint8)  # LBP codes want integer grey levels
        codes = local_binary_pattern(grey, LBP_POINTS, LBP_RADIUS, method="uniform")
        texture = np.histogram(codes, bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2))[0]
        parts = [h / max(1, h.sum()) for h in (*colour, texture)]
        rows.append(np.concatenate(parts))
    return np.asarray(rows, dtype=np.float64)


def standardise(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns stay 0)."""
    centred = features - features.mean(0)
    scale = features.std(0)
    return centred / np.where(scale > 0, scale, 1.0)


@dataclass
class PseudoClasses:
    labels: np.ndarray  # cluster of every image, 0..k-1
    kept: np.ndarray  # bool mask: members kept after dropping the least consistent
    distances: np.ndarray  # distance of every image to its own centroid

    def sizes(self) -> list[int]:
        return np.bincount(self.labels[self.kept], minlength=self.labels.max() + 1).tolist()


def cluster_pseudo_classes(features: np.ndarray, k: int, seed: int = 0, keep_fraction: float = 0.8) -> PseudoClasses:
    """Group ``features`` into ``k`` pseudo-classes and keep, per cluster, the ``keep_fraction``
    of members nearest its centroid (at least one)."""
    if not 2 <= k <= len(features):
        raise FewlabelError(f"--k {k} must be between 2 and the pool size ({len(features)} images).")
    if not 0.0 < keep_fraction <= 1.0:
        raise FewlabelError(f"keep_fraction must be in (0, 1], got {keep_fraction}.")
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)
    labels = kmeans.labels_
    distances = np.linalg.norm(features - kmeans.cluster_centers_[labels], axis=1)
    kept = np.zeros(len(labels), dtype=bool)
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        keep = max(1, round(keep_fraction * len(members)))
        kept[members[np.argsort(distances[members], kind="stable")[:keep]]] = True
    return PseudoClasses(labels, kept, distances)


MARKER = CLUSTERS_MARKER  # written last: its presence marks a finished build


def describe(images: ImageSet, descriptor: str, embed=None) -> np.ndarray:
    """Standardised descriptors of ``images``; ``embed(images) -> N x D`` serves ``embedding``."""
    if descriptor not in DESCRIPTORS:
        raise FewlabelError(f"Unknown descriptor '{descriptor}'. Available: {', '.join(DESCRIPTORS)}.")
    parts = []
    if descriptor in ("handcrafted", "both"):
        parts.append(standardise(handcrafted_descriptors(images)))
    if descriptor in ("embedding", "both"):
        parts.append(standardise(np.asarray(embed(images), dtype=np.float64)))
    return np.concatenate(parts, axis=1)


def write_cluster_folder(pool: ImageSet, groups: PseudoClasses, out: Path, params: dict) -> dict:
    """Write the kept members as an ImageFolder (``cluster-00/…``) plus ``clusters.json``."""
    from PIL import Image

    from ..fileio import write_json

    width = len(str(groups.labels.max()))
    members: dict[str, list[str]] = {}
    for index in np.flatnonzero(groups.kept):
        name = f"cluster-{groups.labels[index]:0{width}d}"
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        array = pool.images[index].permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(folder / f"{index:06d}.png")
        members.setdefault(name, []).append(pool.ids[index])
    summary = {
        "params": params,
        "pool": pool.source,
        "pool_size": len(pool),
        "kept": int(groups.kept.sum()),
        "sizes": {name: len(ids) for name, ids in sorted(members.items())},
        "members": members,
    }
    write_json(out / MARKER, summary)
    return summary

"""Nuclei from a proximity map: local maxima above a threshold, at least ``min_distance`` apart."""

from __future__ import annotations

import numpy as np
from skimage.feature import peak_local_max


def find_peaks(proximity: np.ndarray, threshold: float, min_distance: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(points N x 2 as x y, scores N) of the local maxima of ``proximity`` (H x W) above
    ``threshold``, strongest first; a weaker maximum within ``min_distance`` pixels of a stronger
    one is dropped (scikit-image's ``peak_local_max``, borders included)."""
    proximity = np.asarray(proximity, dtype=np.float32)
    rows_cols = peak_local_max(
        proximity, min_distance=max(1, int(min_distance)), threshold_abs=threshold, exclude_border=False
    )
    if len(rows_cols) == 0:
        return np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.float32)
    scores = proximity[rows_cols[:, 0], rows_cols[:, 1]]
    order = np.argsort(-scores, kind="stable")
    return rows_cols[order][:, ::-1].astype(np.float32), scores[order]


def above(points: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The points of a peak list whose score is at least ``threshold``: the same set
    :func:`find_peaks` gives at that threshold (suppression only ever removes a point for a
    stronger one, which is also above it)."""
    return points[scores >= threshold]

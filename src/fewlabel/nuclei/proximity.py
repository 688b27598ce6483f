"""Proximity maps: the per-pixel regression target of nucleus detection.

Every pixel holds how close it is to the nearest nucleus centre: 1 on a centre, decaying to 0
at ``radius`` pixels and 0 beyond (structured regression, Xie et al. 2015; Xing et al. 2019).
Two forms, with ``D`` the distance to the nearest centre and ``r`` the radius:

* ``inverse``: ``M = 1 / (1 + alpha * D)`` for ``D <= r``, else 0 (the paper's form);
* ``exponential``: ``M = (exp(alpha * (1 - D / r)) - 1) / (exp(alpha) - 1)`` for ``D <= r``,
  else 0 (Xie et al. 2018), which reaches 0 continuously at ``r``.

Coordinates: a point is ``(x, y)`` in pixels, ``x`` the column and ``y`` the row, the centre of
pixel (row j, column i) at ``(i, j)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

ProximityForm = Literal["inverse", "exponential"]
PROXIMITY_FORMS: tuple[str, ...] = ("inverse", "exponential")
DEFAULT_ALPHA = {"inverse": 0.8, "exponential": 3.0}


def nearest_distance(points: np.ndarray, shape: tuple[int, int], limit: float = np.inf) -> np.ndarray:
    """Distance (H x W, float32) of every pixel to the nearest of ``points`` (N x 2, x y);
    ``inf`` where none lies within ``limit`` (or there are none)."""
    height, width = shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.full(shape, np.inf, dtype=np.float32)
    rows, cols = np.mgrid[0:height, 0:width]
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    distance, _ = cKDTree(points).query(grid, distance_upper_bound=limit)
    return distance.reshape(shape).astype(np.float32)


def proximity_from_distance(
    distance: np.ndarray, radius: float, alpha: float | None = None, form: ProximityForm = "inverse"
) -> np.ndarray:
    """The proximity map of a distance map (see the module docstring); ``alpha`` None takes the
    form's default (inverse 0.8, exponential 3)."""
    if form not in PROXIMITY_FORMS:
        raise ValueError(f"unknown proximity form {form!r}; accepted: {', '.join(PROXIMITY_FORMS)}")
    if radius <= 0:
        raise ValueError(f"proximity radius must be positive; got {radius}")
    alpha = DEFAULT_ALPHA[form] if alpha is None else alpha
    inside = distance <= radius
    d = np.where(inside, distance, radius)
    exponential = np.expm1(alpha * (1.0 - d / radius)) / np.expm1(alpha)
    values = 1.0 / (1.0 + alpha * d) if form == "inverse" else exponential
    return np.where(inside, values, 0.0).astype(np.float32)


def proximity_map(
    points: np.ndarray,
    shape: tuple[int, int],
    radius: float,
    alpha: float | None = None,
    form: ProximityForm = "inverse",
) -> np.ndarray:
    """The proximity map (H x W, float32 in [0, 1]) of nucleus centres ``points`` (N x 2, x y)."""
    return proximity_from_distance(nearest_distance(points, shape, limit=radius + 1), radius, alpha, form)

"""Detection scores as the field computes them: predicted centres matched one-to-one to true
centres within a radius (Hungarian assignment), then precision, recall, F1 and the mean
localisation error of matched pairs, per image and over a whole set.

Conventions where a count is zero: with no prediction, precision is 1 (nothing false was
claimed); with no true centre, recall is 1 (nothing was missed); F1 is ``2TP / (2TP + FP +
FN)``, which is 1 when an image has neither and 0 when only one side has points.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def match_points(predicted: np.ndarray, true: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(pairs K x 2 of indices into ``predicted`` and ``true``, their distances K): the
    one-to-one assignment that matches the most pairs within ``radius`` and, among those, has
    the smallest total distance."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    if len(predicted) == 0 or len(true) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    distance = cdist(predicted, true)
    too_far = distance > radius
    # a pair out of reach costs more than any set of pairs in reach, so the count comes first
    cost = np.where(too_far, radius * (len(predicted) + len(true) + 1), distance)
    rows, cols = linear_sum_assignment(cost)
    keep = ~too_far[rows, cols]
    pairs = np.stack([rows[keep], cols[keep]], axis=1)
    return pairs, distance[rows[keep], cols[keep]]


@dataclass
class DetectionCounts:
    """True positives, false positives, false negatives and the summed distance of matches."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    distance: float = 0.0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.distance + other.distance
        )

    def scores(self) -> dict:
        """precision, recall, f1, localization_error (nan without a match) and the counts."""
        claimed, present = self.tp + self.fp, self.tp + self.fn
        precision = self.tp / claimed if claimed else 1.0
        recall = self.tp / present if present else 1.0
        denominator = 2 * self.tp + self.fp + self.fn
        f1 = 2 * self.tp / denominator if denominator else 1.0
        error = self.distance / self.tp if self.tp else float("nan")
        return {"precision": precision, "recall": recall, "f1": f1, "localization_error": error} | asdict(self)


def count_detections(predicted: np.ndarray, true: np.ndarray, radius: float) -> DetectionCounts:
    """The counts of one image's predicted centres against its true ones."""
    pairs, distances = match_points(predicted, true, radius)
    n_predicted, n_true = len(np.asarray(predicted).reshape(-1, 2)), len(np.asarray(true).reshape(-1, 2))
    return DetectionCounts(len(pairs), n_predicted - len(pairs), n_true - len(pairs), float(distances.sum()))


def detection_scores(
    predicted: Iterable[np.ndarray], true: Iterable[np.ndarray], radius: float
) -> tuple[dict, list[dict]]:
    """(overall scores, per-image scores) of paired lists of predicted and true centres; the
    overall scores pool every image's counts (micro average)."""
    per_image = [count_detections(p, t, radius) for p, t in zip(predicted, true, strict=True)]
    total = sum(per_image, DetectionCounts())
    return total.scores(), [c.scores() for c in per_image]


def f1_by_threshold(
    peaks: list[tuple[np.ndarray, np.ndarray]], true: list[np.ndarray], radius: float, thresholds: Iterable[float]
) -> list[dict]:
    """Overall precision, recall and F1 at each threshold, from every image's peaks found once at
    the lowest threshold (``(points, scores)`` per image, see :func:`fewlabel.nuclei.peaks.above`)."""
    rows = []
    for threshold in thresholds:
        kept = [points[scores >= threshold] for points, scores in peaks]
        overall, _ = detection_scores(kept, true, radius)
        rows.append({"threshold": float(threshold)} | {k: overall[k] for k in ("precision", "recall", "f1")})
    return rows


def best_threshold(curve: list[dict]) -> float:
    """The threshold of the highest F1 on a :func:`f1_by_threshold` curve; among equal F1s, the
    middle one of the longest run (the most room on either side)."""
    best = max(row["f1"] for row in curve)
    runs, current = [], []
    for row in curve:
        if row["f1"] >= best - 1e-12:
            current.append(row["threshold"])
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    longest = max(runs, key=len)
    return float(longest[len(longest) // 2])

"""Depth errors as the monocular-depth literature reports them (Eigen et al. 2014): absolute
relative error, RMSE, log RMSE and the share of pixels within 1.25, 1.25^2 and 1.25^3 of the
truth, over each image's valid pixels.

Two variants: ``absolute`` scores the predicted depth as it is (in the data's units);
``median_scaled`` first multiplies each prediction by median(true) / median(predicted), the
usual alignment for a monocular network whose scale is ambiguous. Overall figures are the mean
over images (each image counts once, whatever its number of valid pixels).

The median-scaled variant also records each image's factor (``scale``) and, overall, the
median of the factors and their spread, sd(factor / median factor), as Godard et al.'s
Monodepth2 evaluation prints them: a spread near 0 means one constant factor would fix the
absolute scale; a large one, that the scale errs differently from image to image (the part of
the absolute error that median scaling removes).
"""

from __future__ import annotations

import numpy as np

ERROR_KEYS = ("abs_rel", "rmse", "log_rmse", "delta_1", "delta_2", "delta_3")
SCALE_KEYS = ("scale_median", "scale_spread")  # overall, median-scaled variant only
VARIANTS = ("absolute", "median_scaled")


def image_errors(predicted: np.ndarray, true: np.ndarray, median_scaled: bool = False,
                 max_depth: float | None = None) -> dict | None:  # fmt: skip
    """The errors of one depth map on its valid pixels (finite, > 0, <= ``max_depth``); None
    when it has none. ``median_scaled`` adds the factor applied (``scale``)."""
    valid = np.isfinite(true) & (true > 0)
    if max_depth is not None:
        valid &= true <= max_depth
    if not valid.any():
        return None
    t = true[valid].astype(np.float64)
    p = np.clip(predicted[valid].astype(np.float64), 1e-6, None)
    scale = {}
    if median_scaled:
        scale = {"scale": float(np.median(t) / np.median(p))}
        p = p * scale["scale"]
    ratio = np.maximum(p / t, t / p)
    return scale | {
        "abs_rel": float(np.mean(np.abs(p - t) / t)),
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "log_rmse": float(np.sqrt(np.mean((np.log(p) - np.log(t)) ** 2))),
        "delta_1": float(np.mean(ratio < 1.25)),
        "delta_2": float(np.mean(ratio < 1.25**2)),
        "delta_3": float(np.mean(ratio < 1.25**3)),
    }


def depth_scores(predicted: list[np.ndarray], true: list[np.ndarray], max_depth: float | None = None) -> dict:
    """{variant: {overall means, ``per_image``: list of each image's errors (None: no valid pixel)}}."""
    scores = {}
    for variant in VARIANTS:
        per_image = [
            image_errors(p, t, variant == "median_scaled", max_depth) for p, t in zip(predicted, true, strict=True)
        ]
        scored = [e for e in per_image if e is not None]
        overall = {k: float(np.mean([e[k] for e in scored])) if scored else None for k in ERROR_KEYS}
        if variant == "median_scaled":
            overall |= scale_figures([e["scale"] for e in scored])
        scores[variant] = overall | {"images_scored": len(scored), "per_image": per_image}
    return scores


def scale_figures(factors: list[float]) -> dict:
    """The median of the median-scaling factors and their spread, sd(factor / median) (None
    without images)."""
    if not factors:
        return dict.fromkeys(SCALE_KEYS)
    median = float(np.median(factors))
    return {"scale_median": median, "scale_spread": float(np.std(np.asarray(factors) / median))}

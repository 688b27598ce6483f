"""Information-plane estimates of a classifier's *output* (Cheng, Lian, Gao and Geng, Entropy
2019): I(X;T), what the output T keeps about the input, and I(T;Y), what it carries about the
label, in bits. Pure functions of N x C softmax outputs and N labels.

Two estimators, so a user sees whether a conclusion depends on the estimator:

* ``binning`` (the paper's): probabilities are cut into ``bins`` equal-width bins of [0, 1]
  (the last bin closed) and each output gets a discrete code, formed in one of two ways
  (``code``):

  - ``top`` (default): the predicted class and the bin of its probability, i.e. which class's
    corner of the simplex the output points to and how close it is: at most C x ``bins`` codes.
  - ``simplex``: the tuple of all C bin indices, the cell of the simplex the output falls in
    (the paper's per-neuron binning): up to ``bins``^(C-1) codes.

  T is a deterministic function of X, so after this discretisation I(X;T) = H(T), and I(T;Y)
  = H(T) + H(Y) - H(T, Y), all plug-in entropies of the empirical code frequencies. Plug-in
  estimates are biased upwards when the codes are many against the images (each image alone
  in its code gives I(T;Y) = H(Y), whatever the model): with the few hundred validation images
  of few-label work, the ``simplex`` code rates an unconfident model, whose outputs scatter
  over many cells, as informative as a good one (measured in bench/infoplane.py), hence the
  ``top`` default, whose C x ``bins`` codes a few hundred images can fill. The paper's data
  sets had tens of thousands of test images. :func:`too_few_images` says when even C x
  ``bins`` codes are too many.
* ``knn`` (does not bin): the k-nearest-neighbour estimator of mutual information between a
  continuous vector and a discrete label (Ross, PLoS ONE 2014; Kraskov-style, max-norm
  distances, on the probability vectors with a 1e-10 jitter against ties, as scikit-learn's
  ``mutual_info_classif`` does for one feature). It estimates I(T;Y) only: for a continuous T
  that is a deterministic function of X, I(X;T) is infinite, so the k-NN rows leave it empty.

Per-class I(T;Y_c) uses the one-vs-rest label Y_c = [Y == c]: what the output says about
membership of class c, at most H(Y_c).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

ESTIMATORS = ("binning", "knn")
CODES = ("top", "simplex")
DEFAULT_CODE = "top"
DEFAULT_BINS = 10
DEFAULT_NEIGHBOURS = 3
IMAGES_PER_CODE = 3  # warn below this many images per possible (class-wise) code cell


def entropy(codes: np.ndarray) -> float:
    """Plug-in entropy in bits of the rows of ``codes`` (N x D integers, or N integers)."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return 0.0
    _, counts = np.unique(codes.reshape(len(codes), -1), axis=0, return_counts=True)
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log2(p)).sum()))


def bin_codes(probabilities: np.ndarray, bins: int = DEFAULT_BINS, code: str = DEFAULT_CODE) -> np.ndarray:
    """Integer codes of N outputs: ``simplex``, N x C, each probability's bin among ``bins``
    equal-width bins of [0, 1]; ``top``, N x 2, the predicted class and its probability's bin."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    if code not in CODES:
        raise ValueError(f"code must be one of {', '.join(CODES)}, got {code!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    binned = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    if code == "simplex":
        return binned
    top = probabilities.argmax(1)
    return np.stack([top, binned[np.arange(len(top)), top]], axis=1)


def binned_plane(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS, code: str = DEFAULT_CODE
) -> dict:
    """I(X;T) = H(T), I(T;Y) and H(Y) in bits from binned outputs."""
    codes = bin_codes(probabilities, bins, code)
    labels = np.asarray(labels).reshape(-1, 1)
    h_t, h_y = entropy(codes), entropy(labels)
    return {"I_XT": h_t, "I_TY": max(0.0, h_t + h_y - entropy(np.hstack([codes, labels]))), "H_Y": h_y}


def knn_mutual_information(values: np.ndarray, labels: np.ndarray, neighbours: int = DEFAULT_NEIGHBOURS) -> float:
    """Ross's k-NN estimate in bits of I(V;Y) for continuous N x D ``values`` and discrete
    ``labels``: psi(N) + psi(k) - <psi(N_y)> - <psi(m)>, with m the points of any label within
    each point's distance to its k-th neighbour of the same label. Labels held by a single
    image are left out (they have no neighbour), as in scikit-learn."""
    from scipy.special import digamma
    from sklearn.neighbors import KDTree, NearestNeighbors

    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    labels = np.asarray(labels)
    values = values + 1e-10 * np.random.default_rng(0).standard_normal(values.shape)
    radius, label_counts, ks = np.zeros(len(values)), np.zeros(len(values)), np.zeros(len(values))
    for label in np.unique(labels):
        members = labels == label
        count = int(members.sum())
        if count > 1:
            k = min(neighbours, count - 1)
            finder = NearestNeighbors(n_neighbors=k, metric="chebyshev").fit(values[members])
            distances, _ = finder.kneighbors()
            radius[members] = np.nextafter(distances[:, -1], 0)
            ks[members] = k
        label_counts[members] = count
    kept = label_counts > 1
    if kept.sum() < 2:
        return 0.0
    values, radius, ks, label_counts = values[kept], radius[kept], ks[kept], label_counts[kept]
    within = KDTree(values, metric="chebyshev").query_radius(values, radius, count_only=True, return_distance=False)
    nats = digamma(len(values)) + np.mean(digamma(ks)) - np.mean(digamma(label_counts)) - np.mean(digamma(within))
    return max(0.0, float(nats) / math.log(2))


def plane(
    probabilities: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    estimator: str = "binning",
    bins: int = DEFAULT_BINS,
    code: str = DEFAULT_CODE,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> dict:
    """One point of the plane and the per-class I(T;Y_c): ``I_XT`` (None for ``knn``),
    ``I_TY``, ``H_Y``, ``per_class`` (class index -> bits), ``images``, and the settings."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)

    def information(targets: np.ndarray) -> dict:
        if estimator == "binning":
            return binned_plane(probabilities, targets, bins, code)
        return {"I_XT": None, "I_TY": knn_mutual_information(probabilities, targets, neighbours),
                "H_Y": entropy(targets)}  # fmt: skip

    point = information(labels)
    point["per_class"] = [information((labels == c).astype(np.int64))["I_TY"] for c in range(num_classes)]
    point |= {"images": len(labels), "estimator": estimator}
    point |= {"bins": bins, "code": code} if estimator == "binning" else {"neighbours": neighbours}
    return point


def too_few_images(images: int, num_classes: int, bins: int) -> bool:
    """Whether ``images`` are too few for binned estimates: fewer than IMAGES_PER_CODE per
    cell of a single class probability times the classes (the codes an output can fall in
    near the simplex's edges, where trained outputs live)."""
    return images < IMAGES_PER_CODE * bins * num_classes


def small_split_warning(images: int, num_classes: int, bins: int, where: str = "") -> str | None:
    """Log and return a warning naming both numbers when ``images`` are too few for ``bins``
    (``where``: what it is about, e.g. the run)."""
    if not too_few_images(images, num_classes, bins):
        return None
    fewer = max(2, images // (IMAGES_PER_CODE * num_classes))
    said = (
        f"{images} validation images for {bins} bins x {num_classes} classes: binned estimates are biased upwards "
        f"(plug-in entropies of sparse codes); use --infoplane-bins {fewer} or hold out more images"
    )
    logging.getLogger("fewlabel.audit").warning("information plane%s: %s", where, said)
    return said


def epochs_to_reach(trajectory: Sequence[float], h_y: float, fraction: float) -> int | None:
    """The first epoch (1-based) whose I(T;Y) reaches ``fraction`` of H(Y); None if none does."""
    return next((i + 1 for i, value in enumerate(trajectory) if value >= fraction * h_y), None)

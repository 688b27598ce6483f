"""Classification metrics from probabilities (torchmetrics and scikit-learn), and seed statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "ece", "nll")


def classification_metrics(
    probs: torch.Tensor, labels: torch.Tensor, class_names: list[str], ece_bins: int = 15
) -> dict:
    """All metrics of DESIGN.md's metrics.json for N x C probabilities and N integer labels.

    ``auroc_macro`` is one-vs-rest, averaged over the classes present in ``labels`` (AUROC is
    undefined for an absent class); ``ece`` uses ``ece_bins`` equal-width bins (L1).
    """
    probs = probs.double().clamp_min(0)
    probs = probs / probs.sum(1, keepdim=True)
    y = labels.numpy()
    pred = probs.argmax(1).numpy()
    n_classes = len(class_names)
    present = np.unique(y)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=np.arange(n_classes), zero_division=0
    )
    nll = float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item())
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "auroc_macro": _auroc(probs.numpy(), y, present),
        "ece": float(multiclass_calibration_error(probs.float(), labels, n_classes, n_bins=ece_bins)),
        "nll": nll,
        "n_samples": len(y),
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(y, pred, labels=np.arange(n_classes)).tolist(),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
    }


def _auroc(probs: np.ndarray, y: np.ndarray, present: np.ndarray) -> float:
    if len(present) < 2:
        return float("nan")
    scores = []
    for c in present:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores.append(roc_auc_score(y == c, probs[:, c]))
    return float(np.mean(scores))


def mean_sd_ci(values: list[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and a Student-t interval of the mean."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return {"mean": mean, "sd": float("nan"), "ci95": [float("nan"), float("nan")], "n": len(arr)}
    sd = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * sd / math.sqrt(len(arr)))
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": len(arr)}


def aggregate_numbers(per_seed: dict[int, dict], per_seed_keys: tuple[str, ...] | None = None) -> dict:
    """Combine the metrics of several seeds: each number becomes its mean, and ``<key>_sd`` and
    ``<key>_ci95`` hold its spread; ``per_seed`` keeps ``per_seed_keys`` (default: every number)
    of each seed."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    numbers = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out: dict = {"seeds": seeds}
    for key in numbers:
        summary = mean_sd_ci([per_seed[s][key] for s in seeds])
        out[key] = summary["mean"]
        out[f"{key}_sd"] = summary["sd"]
        out[f"{key}_ci95"] = summary["ci95"]
    kept = per_seed_keys or tuple(numbers)
    out["per_seed"] = {str(s): {k: per_seed[s][k] for k in kept if k in per_seed[s]} for s in seeds}
    return out


def aggregate_seeds(per_seed: dict[int, dict]) -> dict:
    """Classification metrics of several seeds: :func:`aggregate_numbers`, the summed confusion
    matrix and the mean per-class figures."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    out = aggregate_numbers(per_seed, METRIC_KEYS)
    out["class_names"] = first["class_names"]
    out["confusion_matrix"] = np.sum([per_seed[s]["confusion_matrix"] for s in seeds], axis=0).tolist()
    out["per_class"] = {
        name: {
            m: float(np.mean([per_seed[s]["per_class"][name][m] for s in seeds])) for m in ("precision", "recall", "f1")
        }
        | {"support": first["per_class"][name]["support"]}
        for name in first["class_names"]
    }
    return out

"""Reliability of predicted confidences: per-bin confidence, accuracy and counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReliabilityBins:
    edges: torch.Tensor  # n_bins + 1 equal-width edges over [0, 1]
    confidence: torch.Tensor  # mean top-1 confidence per bin (nan where empty)
    accuracy: torch.Tensor  # accuracy per bin (nan where empty)
    count: torch.Tensor

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted |accuracy - confidence| over the bins."""
        used = self.count > 0
        weights = self.count[used].double() / self.count.sum()
        return float((weights * (self.accuracy[used] - self.confidence[used]).abs()).sum())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin the top-1 confidences into ``n_bins`` equal-width bins, (lo, hi] as torchmetrics does."""
    confidence, predicted = probs.double().max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    sums_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidence)
    sums_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = count.clamp_min(1).double()
    empty = count == 0
    return ReliabilityBins(
        edges,
        torch.where(empty, torch.nan, sums_conf / safe),
        torch.where(empty, torch.nan, sums_acc / safe),
        count,
    )

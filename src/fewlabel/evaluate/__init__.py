"""Metrics of a classifier's predicted probabilities, and their spread over seeds."""

from .metrics import METRIC_KEYS, aggregate_seeds, classification_metrics

__all__ = ["METRIC_KEYS", "aggregate_seeds", "classification_metrics"]

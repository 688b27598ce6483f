"""Metrics against values worked out by hand, and the seed statistics."""

from __future__ import annotations

import math

import pytest
import torch

from fewlabel.evaluate.metrics import aggregate_seeds, classification_metrics, mean_sd_ci


def test_metrics_of_a_small_case_computed_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs, labels, ["a", "b"], ece_bins=10)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # class b scores 0.4, 0.7, 0.8 all above class a's 0.1: AUROC 1 for both one-vs-rest
    assert m["auroc_macro"] == 1.0
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4)
    # confidences 0.9, 0.6, 0.7, 0.8 in four bins; correct, wrong, correct, correct
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4, abs=1e-6)
    assert m["n_samples"] == 4 and m["class_names"] == ["a", "b"]


def test_absent_class_is_left_out_of_auroc_and_macro_f1():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(probs, torch.tensor([0, 1]), ["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and m["auroc_macro"] == 1.0 and m["per_class"]["c"]["support"] == 0


def test_mean_sd_and_t_interval():
    s = mean_sd_ci([0.80, 0.82, 0.84])
    assert s["mean"] == pytest.approx(0.82) and s["sd"] == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2)
    assert s["ci95"] == pytest.approx([0.82 - half, 0.82 + half])


def test_aggregate_seeds_keeps_per_seed_values():
    base = classification_metrics(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]), ["a", "b"])
    worse = classification_metrics(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]), ["a", "b"])
    agg = aggregate_seeds({0: base, 1: worse})
    assert agg["accuracy"] == 0.75 and agg["per_seed"]["1"]["accuracy"] == 0.5
    assert agg["accuracy_sd"] == pytest.approx(math.sqrt(0.125))
    assert agg["confusion_matrix"] == [[2, 0], [1, 1]] and agg["seeds"] == [0, 1]

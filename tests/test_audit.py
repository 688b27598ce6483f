"""Calibration bins and Grad-CAM against values worked out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_calibration_error

from fewlabel.audit.calibration import reliability_bins
from fewlabel.audit.saliency import grad_cam


def test_reliability_bins_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1, 0])
    bins = reliability_bins(probs, labels, n_bins=5)  # edges 0, .2, .4, .6, .8, 1
    assert bins.count.tolist() == [0, 0, 2, 2, 1]
    assert bins.accuracy[2].item() == pytest.approx(0.5)  # 0.6 wrong, 0.55 right
    assert bins.confidence[3].item() == pytest.approx(0.75)
    assert torch.isnan(bins.accuracy[0])
    expected = (2 * abs(0.5 - 0.575) + 2 * abs(1.0 - 0.75) + 1 * abs(1.0 - 0.9)) / 5
    assert bins.ece == pytest.approx(expected)


def test_reliability_ece_matches_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 4, generator=generator) * 2, 1)
    labels = torch.randint(0, 4, (500,), generator=generator)
    reference = multiclass_calibration_error(probs, labels, 4, n_bins=15).item()
    assert reliability_bins(probs, labels, 15).ece == pytest.approx(reference, abs=1e-6)


class ConvPoolLinear(nn.Module):
    """conv -> global average pool -> linear: Grad-CAM then equals the class activation map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward_features(self, x):
        return F.relu(self.conv(x))

    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))


def test_grad_cam_equals_the_class_activation_map_for_a_pooled_linear_head():
    torch.manual_seed(0)
    model = ConvPoolLinear()
    with torch.no_grad():  # channels positive everywhere, classes weighting them differently
        model.conv.bias.fill_(0.5)
        model.fc.weight.copy_(torch.tensor([[1.0, -0.5, 0.2], [-0.3, 0.8, 0.6]]))
    x = torch.rand(2, 1, 6, 6)
    maps = grad_cam(model, x, classes=torch.tensor([1, 0]))
    features = model.forward_features(x).detach()
    for i, c in enumerate([1, 0]):
        cam = F.relu((model.fc.weight[c].view(3, 1, 1) * features[i]).sum(0))
        cam = cam / cam.max()
        assert torch.allclose(maps[i], cam, atol=1e-5)
    assert maps.shape == (2, 6, 6) and maps.max() <= 1.0 and maps.min() >= 0.0
    assert model.training  # grad_cam restores the mode it found

"""Tri-net (Chen, Wang, Gao and Zhou, IJCAI 2018), step by step, as pure functions and a module.

A shared module feeds three modules. They start diverse by training on three *output-smeared*
copies of the labelled set; then, round after round, an unlabeled example on which two modules
agree with high confidence becomes a pseudo-label for the third, pseudo-labels whose prediction
is unstable under dropout are removed (editing), and every few rounds the modules are
fine-tuned on the labelled data alone to restore diversity. Prediction averages the three.

The paper trains a CNN from scratch on CIFAR-10/SVHN; here the shared module is a pretrained
timm backbone and each module a small MLP head. Choices the paper leaves open or that differ
for fine-tuning, each a parameter of :class:`TriNetOptions` (fewlabel.config):

* smearing: ``onehot + relu(z)``, ``z ~ N(0, smear_std²)`` per class, renormalised to sum 1;
  ``smear_std`` 0.05 leaves about 0.85 of the mass on the true class with 10 classes. The
  smeared targets cap what a module learns to predict, so the agreement threshold must sit
  below that cap: with 0.1 (about 0.73 on the true class) and a 0.95 threshold, a
  Fashion-MNIST trial (20 labels per class) found almost no agreeing pseudo-labels.
* the confidence threshold falls linearly per round from ``threshold_start`` (0.8) by
  ``threshold_step`` (0.025) to at least ``threshold_min`` (0.7), so later rounds accept more;
* the number of pool images examined per round grows geometrically, ``sample_first`` times
  ``sample_growth`` to the power of the round (capped by the pool);
* editing: ``edit_passes`` forward passes of the two labelling modules with dropout on; a
  pseudo-label is kept when at least ``edit_min_agreement`` of each module's passes predict it;
* diversity fine-tuning on freshly smeared labelled data every ``diversity_every`` rounds.
"""

from __future__ import annotations

import torch
from torch import nn

MODULES = 3


def smear_labels(labels: torch.Tensor, num_classes: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """Output smearing: N x C soft targets, one-hot plus ReLU'd Gaussian noise, rows summing to 1."""
    onehot = nn.functional.one_hot(labels, num_classes).float()
    noise = torch.randn(onehot.shape, generator=generator).mul(std).clamp_min(0)
    smeared = onehot + noise
    return smeared / smeared.sum(1, keepdim=True)


def threshold_at(round_index: int, start: float, step: float, minimum: float) -> float:
    """Confidence threshold of round ``round_index`` (0-based): linear fall, floored."""
    return max(minimum, start - step * round_index)


def sample_size_at(round_index: int, first: int, growth: float, pool_size: int) -> int:
    """How many pool images round ``round_index`` examines: geometric growth, capped by the pool."""
    return min(pool_size, round(first * growth**round_index))


def agreeing_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For 3 x N x C module probabilities: for each module v, the labels on which the two other
    modules agree with both confidences above ``threshold``.

    Returns (labels, mask), each 3 x N: ``mask[v, i]`` says image i is a pseudo-label for v.
    """
    confidence, predicted = probs.max(-1)
    labels = torch.zeros_like(predicted)
    mask = torch.zeros_like(predicted, dtype=torch.bool)
    for v in range(MODULES):
        j, k = (m for m in range(MODULES) if m != v)
        agree = (predicted[j] == predicted[k]) & (confidence[j] > threshold) & (confidence[k] > threshold)
        labels[v] = predicted[j]
        mask[v] = agree
    return labels, mask


def stable_pseudo_labels(passes: torch.Tensor, labels: torch.Tensor, min_agreement: float) -> torch.Tensor:
    """Pseudo-label editing. ``passes`` is P x 3 x N of predicted classes under dropout (P passes),
    ``labels`` 3 x N pseudo-labels for each module; returns a 3 x N mask of labels that both
    labelling modules (the two other than v) predict in at least ``min_agreement`` of passes."""
    stable = torch.zeros_like(labels, dtype=torch.bool)
    for v in range(MODULES):
        j, k = (m for m in range(MODULES) if m != v)
        share_j = (passes[:, j] == labels[v]).float().mean(0)
        share_k = (passes[:, k] == labels[v]).float().mean(0)
        stable[v] = (share_j >= min_agreement) & (share_k >= min_agreement)
    return stable


class TriNet(nn.Module):
    """A shared backbone (timm, ``num_classes=0``: pooled features) and three MLP modules.

    ``forward`` returns the log of the modules' mean probability, so softmax of the output is
    the averaged prediction (and the Predictor, metrics and reports work unchanged).
    """

    def __init__(self, shared: nn.Module, num_classes: int, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.shared = shared
        width = shared.num_features
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
            for _ in range(MODULES)
        )

    def module_logits(self, x: torch.Tensor) -> torch.Tensor:
        """3 x B x C logits of the three modules."""
        return self.heads_on_features(self.shared(x))

    def heads_on_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(features) for head in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (Grad-CAM reads it, as for a timm classifier)."""
        return self.shared.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.shared.forward_head(features, pre_logits=True)
        return self.heads_on_features(pooled).softmax(-1).mean(0).clamp_min(1e-12).log()

"""Accuracy under input noise and under FGSM, measured with every classification run
(robustness.json, a report section), so runs trained differently (a regulariser, a distilled
student) can be compared on more than clean accuracy.

* Gaussian noise of standard deviation sigma in [0, 1] pixel units, added to the pixels at the
  model's input size, clipped to [0, 1];
* FGSM (Goodfellow, Shlens and Szegedy 2015): one step of size epsilon (pixel units) along the
  sign of the cross-entropy gradient with respect to the true label, clipped to [0, 1].

Both on a seeded draw of the evaluation images, in batches, the model in eval mode. The noise
is drawn per image from a generator seeded by the run's seed, so two runs see the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .uap import pixel_forward
from .uap_audit import model_pixels

NOISE_SIGMAS = (0.05, 0.1, 0.2)
FGSM_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
BATCH = 128


def accuracy(forward, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``pixels`` whose predicted class is the label."""
    with torch.no_grad():
        hits = sum(int((forward(x).argmax(1) == y).sum()) for x, y in _batches(pixels, labels))
    return hits / max(1, len(labels))


def noisy(pixels: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``pixels`` plus Gaussian noise of standard deviation ``sigma``, clipped to [0, 1]."""
    noise = torch.randn(pixels.shape, generator=generator).to(pixels.device)
    return (pixels + sigma * noise).clamp(0, 1)


def fgsm(forward, pixels: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One FGSM step of size ``epsilon`` from each image, away from its label, clipped to [0, 1]."""
    x = pixels.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(forward(x).float(), labels)
        (gradient,) = torch.autograd.grad(loss, x)
    return (pixels + epsilon * gradient.sign()).clamp(0, 1)


def fgsm_accuracy(forward, pixels: torch.Tensor, labels: torch.Tensor, epsilon: float) -> float:
    hits = 0
    for x, y in _batches(pixels, labels):
        with torch.no_grad():
            hits += int((forward(fgsm(forward, x, y, epsilon)).argmax(1) == y).sum())
    return hits / max(1, len(labels))


def robustness_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    sigmas: Sequence[float] = NOISE_SIGMAS,
    epsilons: Sequence[float] = FGSM_EPSILONS,
) -> dict:
    """Clean accuracy, accuracy under each noise level and each FGSM step, on uint8 ``images``."""
    model = model.eval()
    forward = pixel_forward(model, mean, std)
    pixels = model_pixels(images, img_size)
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": len(labels),
        "clean": accuracy(forward, pixels, labels),
        "gaussian": {f"{s:g}": accuracy(forward, noisy(pixels, s, generator), labels) for s in sigmas},
        "fgsm": {f"{e * 255:g}/255": fgsm_accuracy(forward, pixels, labels, e) for e in epsilons},
    }


def _batches(pixels: torch.Tensor, labels: torch.Tensor):
    for start in range(0, len(labels), BATCH):
        yield pixels[start : start + BATCH], labels[start : start + BATCH]

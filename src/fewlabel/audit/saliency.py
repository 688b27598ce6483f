"""Grad-CAM (Selvaraju et al. 2017) for timm classifiers.

The map is taken at the output of ``forward_features`` (the last feature map before pooling):
weights are the spatially averaged gradients of the class logit, the map is the ReLU of the
weighted sum of channels, upsampled bilinearly to the input and scaled to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Return N x H x W maps in [0, 1] for ``classes`` (default: each image's predicted class)."""
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        features = model.forward_features(images).detach().requires_grad_(True)
        logits = model.forward_head(features)
        if classes is None:
            classes = logits.argmax(1)
        score = logits.gather(1, classes.view(-1, 1)).sum()
        (gradients,) = torch.autograd.grad(score, features)
    model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * features).sum(1, keepdim=True))
    cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cams.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cams / peak).detach()

"""Pure helpers for fine-tuning: layer groups, learning-rate groups and schedules."""

from __future__ import annotations

import math

from timm.models import group_parameters
from torch import nn


def layer_groups(model: nn.Module, coarse: bool) -> list[list[str]]:
    """Parameter names grouped by depth, bottom (stem) first, classifier last.

    Uses the model's timm ``group_matcher``: coarse groups are stages, fine groups are blocks.
    Parameters no matcher names (the classifier) form the last group. A model without a
    matcher is one group.
    """
    if not hasattr(model, "group_matcher"):
        return [[name for name, _ in model.named_parameters()]]
    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    return [names for _, names in sorted(groups.items())]


def decayed_param_groups(model: nn.Module, lr: float, decay: float, coarse: bool, weight_decay: float) -> list[dict]:
    """Optimizer groups where group i of n (top is n-1) trains at ``lr * decay ** (n-1-i)``.

    ``decay=1`` gives one learning rate for every layer; only parameters that require
    gradients are included. Biases and normalisation weights get no weight decay. Groups with
    the same learning rate and weight decay are merged (fewer groups, faster optimiser steps).
    """
    named = dict(model.named_parameters())
    groups = layer_groups(model, coarse)
    merged: dict[tuple[float, float], list] = {}
    for depth, names in enumerate(groups):
        scaled_lr = lr * decay ** (len(groups) - 1 - depth)
        for name in names:
            param = named[name]
            if param.requires_grad:
                merged.setdefault((scaled_lr, weight_decay if param.ndim > 1 else 0.0), []).append(param)
    return [{"params": params, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), params in merged.items()]


def freeze_all_but_last_blocks(model: nn.Module, n_blocks: int) -> list[str]:
    """Freeze every parameter except the classifier and the last ``n_blocks`` fine groups.

    Returns the names of the frozen parameters.
    """
    groups = layer_groups(model, coarse=False)
    body, head = groups[:-1], groups[-1]
    if not 0 <= n_blocks <= len(body):
        raise ValueError(f"partial:{n_blocks}: the model has {len(body)} blocks below its classifier")
    keep = set(head).union(*body[len(body) - n_blocks :])
    frozen = []
    for name, param in model.named_parameters():
        param.requires_grad = name in keep
        if not param.requires_grad:
            frozen.append(name)
    return frozen


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 0 or constant."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

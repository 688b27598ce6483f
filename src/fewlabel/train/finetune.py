"""The ``finetune`` method: the strategy's phases (see :mod:`fewlabel.train.strategies`), each
one fit through the engine, on any task."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from torch import nn

from ..errors import FewlabelError
from .datamodule import datamodule
from .engine import Fit, eval_mode_modules, freezes_batchnorm
from .functional import decayed_param_groups, freeze_all_but_last_blocks
from .strategies import Phase, plan_phases

if TYPE_CHECKING:  # pragma: no cover
    from ..models import BackboneInfo
    from ..tasks.base import RunContext


def train(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """Build the task's network and run the strategy's phases on it."""
    phases = [p for p in plan_phases(ctx.cfg) if p.epochs > 0]
    ctx.task.check_phases(phases, ctx.cfg.method.strategy)
    model, info = ctx.task.build_model(ctx.cfg, ctx.data)
    ctx.engine.start(model)
    for phase in phases:
        build = partial(phase_fit, ctx, phase, model, info)
        ctx.engine.fit(phase.name, phase.epochs, build, on_features=phase.on_features)
    return model, info


def phase_fit(ctx: RunContext, phase: Phase, model: nn.Module, info: BackboneInfo) -> Fit:
    """One phase: the head on cached features, or the network on images with the phase's
    trainable layers and learning rates."""
    cfg, task, data = ctx.cfg, ctx.task, ctx.data
    if phase.on_features:
        net, features = task.head_fit(model, info, cfg, data, ctx.engine)
        groups = [{"params": list(net.parameters()), "lr": phase.lr, "weight_decay": cfg.weight_decay}]
        return Fit(task.module(net, groups, cfg, data), features)
    for p in model.parameters():
        p.requires_grad = True
    if phase.trainable_blocks is not None:
        try:
            freeze_all_but_last_blocks(model, phase.trainable_blocks)
        except ValueError as exc:
            raise FewlabelError(f"--strategy {cfg.method.strategy}: {exc}.") from None
    groups = decayed_param_groups(model, phase.lr, phase.layer_decay, phase.coarse_groups, cfg.weight_decay)
    train_set = task.dataset(data.train, info, cfg, True, ctx.seed)
    val_set = task.dataset(data.val, info, cfg, False, ctx.seed) if data.val is not None else None
    images = datamodule(cfg, ctx.seed, train_set, val_set, task.sampler_labels(data.train))
    return Fit(task.module(model, groups, cfg, data), images, eval_mode_modules(model, freezes_batchnorm(cfg)))

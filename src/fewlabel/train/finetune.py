"""The ``finetune`` method: the strategy's phases (see :mod:`fewlabel.train.strategies`), each
one fit through the engine, on any task; ``auto`` searches over the strategies (see
:mod:`fewlabel.train.search`). Either way the phases that made the final weights are recorded
(``engine.method_state["chains"]``), so :func:`refit` can retrain them on all labelled images."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import FewlabelError
from .datamodule import datamodule
from .engine import Fit, eval_mode_modules, freezes_batchnorm
from .functional import decayed_param_groups, freeze_all_but_last_blocks, layer_groups
from .strategies import AUTO, Phase, plan_phases

if TYPE_CHECKING:  # pragma: no cover
    from ..models import BackboneInfo
    from ..tasks.base import RunContext

REFIT_PREFIX = "refit-"


def train(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """Build the task's network and run the strategy's phases on it (or search, for ``auto``)."""
    model, info = ctx.task.build_model(ctx.cfg, ctx.data)
    if ctx.cfg.method.strategy == AUTO:
        from .search import search

        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ctx.engine.start(model)
        blocks = len(layer_groups(model, coarse=False)) - 1
        search(ctx, model, info, initial, partial(run_phase, ctx, model, info), blocks)
        return model, info
    phases = [p for p in plan_phases(ctx.cfg) if p.epochs > 0]
    ctx.task.check_phases(phases, ctx.cfg.method.strategy)
    ctx.engine.start(model)
    for phase in phases:
        run_phase(ctx, model, info, phase)
    ctx.engine.method_state["chains"] = phase_chains(phases)
    ctx.engine.method_state["final_fit"] = phases[-1].name if phases else None
    return model, info


def run_phase(ctx: RunContext, model: nn.Module, info: BackboneInfo, phase: Phase, prefix: str = "", after=None):
    """One phase as one fit of the engine, named ``prefix`` + the phase's name (``after`` runs
    once it finished, before its state is saved)."""
    build = partial(phase_fit, ctx, phase, model, info)
    ctx.engine.fit(prefix + phase.name, phase.epochs, build, after=after, on_features=phase.on_features)


def phase_chains(phases: list[Phase]) -> dict[str, list[dict]]:
    """For a fixed strategy, the phases that made each phase's weights: it and those before."""
    return {p.name: [asdict(q) for q in phases[: i + 1]] for i, p in enumerate(phases)}


def refit_plan(chains: dict[str, list[dict]], held: dict | None, final_fit: str | None) -> list[dict]:
    """The phases that made the weights the model holds: the chain of the fit of the held epoch
    (``held``: the selection's record), that fit cut at the epoch; without a validated epoch,
    the chain of ``final_fit`` whole."""
    fit = held["fit"] if held else final_fit
    if fit not in chains:
        return []
    plan = [dict(p) for p in chains[fit]]
    if held:
        plan[-1]["epochs"] = held["epoch"] + 1
    return plan


def refit(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """Retrain the plan that made the chosen weights (:func:`refit_plan`; recorded as
    ``engine.method_state["plan"]``) on ``ctx.data`` (all labelled images, no validation) from
    new initial weights (seeded by the run's seed alone, so a resumed run builds the same);
    fits named ``refit-<phase>``."""
    state = ctx.engine.method_state
    state["plan"] = refit_plan(state.get("chains", {}), state.get("held"), state.get("final_fit"))
    phases = [Phase(**p) for p in state["plan"] if p["epochs"] > 0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        model, info = ctx.task.build_model(ctx.cfg, ctx.data)
    ctx.engine.start(model, fits_prefix=REFIT_PREFIX)
    for phase in phases:
        run_phase(ctx, model, info, phase, prefix=REFIT_PREFIX)
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

"""``--strategy auto``: try the cheap fine-tuning plans first and keep the best on validation.

Candidates, cheapest first, each one fit through the engine named after it:

1. linear probes on cached features at ``head_lr`` x :data:`PROBE_LR_FACTORS` (the backbone
   runs once for all of them: the feature cache);
2. freeze-unfreeze's whole-network phase at ``lr`` x :data:`FINETUNE_LR_FACTORS`, each from the
   best probe's head (that probe is its head phase: nothing is recomputed);
3. ``partial:N`` (:data:`PARTIAL_BLOCKS`) at ``lr`` from the same head, where the backbone has
   more blocks than N.

A task without a head on cached features (dense tasks) has no probes: ``full`` at the same
learning rates and ``partial:N``, from the initial network.

A candidate scores its best validated epoch (its last without ``keep_best``), compared as the
run's model selection compares epochs; ties go to the cheaper candidate. Before a candidate on
images its time is estimated (the previous candidate on images, else one timed training step)
and it is skipped when the rest of ``budget_minutes`` cannot hold it. The probes always run,
even when they alone spend the budget (the record says so). The search leaves the winner's
weights in the network, its record in ``engine.method_state["search"]`` (metrics.json's
``strategy_search``) and the phases that made the winner in ``engine.method_state["plan"]``
(what a refit retrains).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..distributed import same_on_every_process
from .strategies import DEFAULT_BUDGET_MINUTES, Phase

if TYPE_CHECKING:  # pragma: no cover
    from ..models import BackboneInfo
    from ..tasks.base import RunContext

log = logging.getLogger("fewlabel.train")
PROBE_LR_FACTORS = (0.3, 1.0, 3.0)  # of head_lr: the probe's loss surface is convex, a decade covers it
FINETUNE_LR_FACTORS = (1.0, 1 / 3)  # of lr: whole-network steps above lr wrecked the features (see config.lr)
PARTIAL_BLOCKS = 3  # partial:3: the last blocks (about the top stage) and the classifier


@dataclass(frozen=True)
class Candidate:
    """One plan tried: its strategy as a user would name it, and the fit it adds."""

    strategy: str
    phase: Phase
    from_probe: bool  # starts from the best probe's weights (else from the initial network)


def candidates(cfg, blocks: int, feature_head: bool = True) -> list[Candidate]:
    """The candidates in the order they run (``blocks``: the backbone's blocks below its head;
    ``feature_head``: whether the task's head can train alone on cached features)."""
    probe_lrs = [cfg.head_lr * f for f in PROBE_LR_FACTORS]
    probes = [
        Candidate("linear-probe", Phase(f"probe-lr{lr:.3g}", True, cfg.head_epochs, lr), False) for lr in probe_lrs
    ]
    whole = "freeze-unfreeze" if feature_head else "full"
    decay = cfg.layer_decay if feature_head else 1.0
    tuned = [
        Candidate(
            whole,
            Phase(f"{whole}-lr{cfg.lr * f:.3g}", False, cfg.epochs, cfg.lr * f, decay, coarse_groups=True),
            True,
        )
        for f in FINETUNE_LR_FACTORS
    ]
    top = Phase(f"partial{PARTIAL_BLOCKS}-lr{cfg.lr:.3g}", False, cfg.epochs, cfg.lr, trainable_blocks=PARTIAL_BLOCKS)
    partial = [Candidate(f"partial:{PARTIAL_BLOCKS}", top, True)]
    return (probes if feature_head else []) + tuned + (partial if blocks > PARTIAL_BLOCKS else [])


def search(ctx: RunContext, model: nn.Module, info: BackboneInfo, initial: dict, run_phase, blocks: int) -> None:
    """Run the candidates within the budget (``run_phase(phase)`` runs one fit through the
    engine); leave the winner in ``model`` and the record in the engine's method state."""
    cfg, engine = ctx.cfg, ctx.engine
    budget = 60 * (cfg.method.budget_minutes or DEFAULT_BUDGET_MINUTES)
    selection, keep_best = engine.selection, cfg.keep_best
    rows: list[dict] = []
    leader = best_probe = start = last_on_images = None
    feature_head = ctx.task.has_feature_head
    if not feature_head:
        engine.saved_weights["start"] = initial
    for candidate in candidates(cfg, blocks, feature_head):
        phase = candidate.phase
        spent = engine.fit_seconds([r["fit"] for r in rows])
        if not candidate.from_probe:
            model.load_state_dict(initial)
        else:
            if start is None:  # the probes are done: every image candidate starts from the best one
                if feature_head:  # (no probe validated, e.g. with 0 head epochs: from the initial network)
                    best_probe = leader
                    engine.saved_weights["start"] = _leader_weights(engine, keep_best) if leader else initial
                start = engine.saved_weights["start"]
            estimate = same_on_every_process(last_on_images or _estimate_seconds(ctx, model, info, phase))
            if not engine.finished(phase.name) and spent + estimate > budget:
                rows.append(_row(candidate, "skipped", estimate=estimate, budget_left=budget - spent))
                continue
            model.load_state_dict(start)
        run_phase(phase)
        score = selection.best_of({phase.name}) if keep_best else selection.last_of({phase.name})
        row = _row(candidate, "ran", score=score, seconds=engine.fit_seconds([phase.name]))
        rows.append(row)
        if not phase.on_features:
            last_on_images = engine.fit_seconds([phase.name])
        if score is not None and (leader is None or selection.beats(score, leader["score"])):
            leader = row
            if not keep_best:
                engine.saved_weights["leader"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    chain = [leader] if best_probe is None or leader is best_probe else [best_probe, leader]
    finish(engine, model, rows, leader, budget, [_ran_phase(row, keep_best) for row in chain if row])


def finish(engine, model: nn.Module, rows: list[dict], leader: dict | None, budget: float, plan: list[dict]) -> None:
    """Load the winner into ``model``; record the search and the winner's plan."""
    keep_best = engine.cfg.keep_best
    if leader is not None:
        leader["status"] = "winner"
        model.load_state_dict(_leader_weights(engine, keep_best))
    probes_seconds = sum(r.get("seconds", 0.0) for r in rows if r["strategy"] == "linear-probe")
    engine.method_state["search"] = {
        "budget_seconds": budget,
        "spent_seconds": sum(r.get("seconds", 0.0) for r in rows),
        "probes_exceeded_budget": probes_seconds > budget,
        "monitor": engine.selection.key,
        "candidates": rows,
        "winner": leader["fit"] if leader else None,
    }
    engine.method_state["plan"] = plan
    if probes_seconds > budget:
        log.warning(
            "strategy auto: the linear probes alone took %.1f min, more than --budget-minutes %.1f; they ran "
            "anyway and nothing else was tried", probes_seconds / 60, budget / 60,
        )  # fmt: skip


def _ran_phase(row: dict, keep_best: bool) -> dict:
    """A candidate's phase with the epochs that made the weights it passed on (to its best
    epoch with keep_best)."""
    phase = dict(row["phase"])
    if keep_best and row.get("score"):
        phase["epochs"] = row["score"]["epoch"] + 1
    return phase


def _leader_weights(engine, keep_best: bool) -> dict:
    """Weights of the candidate leading so far: the run's best epoch (keep_best) or the kept
    last weights of the best-scoring candidate."""
    return engine.selection.weights if keep_best else engine.saved_weights["leader"]


def _row(candidate: Candidate, status: str, score=None, seconds=None, estimate=None, budget_left=None) -> dict:
    phase = candidate.phase
    row = {"fit": phase.name, "strategy": candidate.strategy, "lr": phase.lr, "status": status, "phase": asdict(phase)}
    if score is not None:
        row["score"] = score
    if seconds is not None:
        row["seconds"] = seconds
    if estimate is not None:
        row |= {"estimated_seconds": estimate, "budget_left_seconds": max(0.0, budget_left)}
    return row


def _estimate_seconds(ctx: RunContext, model: nn.Module, info: BackboneInfo, phase: Phase) -> float:
    """Seconds a fit on images will take: its epochs x (training batches x one timed
    forward-backward step + validation batches x a third of it)."""
    cfg, data = ctx.cfg, ctx.data
    step = time_one_step(ctx, model, info)
    batches = math.ceil(len(data.train) / cfg.batch_size)
    val_batches = math.ceil(len(data.val) / cfg.batch_size) if data.val is not None else 0
    return phase.epochs * (batches + val_batches / 3) * step


def time_one_step(ctx: RunContext, model: nn.Module, info: BackboneInfo) -> float:
    """Seconds of one forward-backward pass of the whole network on one training batch (the
    second of two, so start-up costs do not count). Eval mode and no optimiser step: nothing
    the model holds changes."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.engine.device
    dataset = ctx.task.dataset(data.train, info, cfg, True, ctx.seed)
    batch = dataset.__getitems__(list(range(min(cfg.batch_size, len(data.train)))))
    images = batch[0].to(device).apply()
    was_training = model.training
    model.to(device).eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad = True
    try:
        seconds = 0.0
        for _ in range(2):
            began = time.perf_counter()
            model(images).float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - began
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(model.parameters(), requires, strict=True):
            p.requires_grad = flag
        model.train(was_training).to("cpu")
    return seconds

"""``--strategy auto``: try the cheap fine-tuning plans first and keep the best on validation.

Candidates, cheapest first, each one fit through the engine named after it:

1. linear probes on cached features at ``head_lr`` x :data:`PROBE_LR_FACTORS` (the backbone
   runs once for all of them: the feature cache);
2. freeze-unfreeze's whole-network phase at ``lr`` x :data:`FINETUNE_LR_FACTORS`, each from the
   chosen probe's head (that probe is its head phase: nothing is recomputed);
3. ``partial:N`` (:data:`PARTIAL_BLOCKS`) at ``lr`` from the same head, where the backbone has
   more blocks than N.

The gentler candidates (the lower rate and ``partial:N``) guard against whole-network
fine-tuning that harms the pretrained features. When freeze-unfreeze at ``lr`` clearly beats
(by the noise margin) the probe it started from, that did not happen: they are recorded as
"not needed" and do not run (``gentle_candidates: always`` runs them anyway). This keeps the
search near twice a freeze-unfreeze run where fine-tuning works.

A task without a head on cached features (dense tasks) has no probes: ``full`` at the same
learning rates and ``partial:N``, from the initial network.

A candidate scores its last validated epoch (what it converged to; the run's keep-best may
still restore an earlier epoch that is clearly better, see :mod:`fewlabel.runner`). With a few
dozen validation images most differences are noise (20 images at 60% are ±11 points), so the
winner is not simply the top score: it is the candidate first in :data:`PREFERENCE` among those
within the task's noise margin (one binomial standard error, for accuracy, widened for the
number of candidates compared: :func:`~fewlabel.train.callbacks.best_of_many_margin`) of the top score —
whole-network fine-tuning at the configured learning rate unless another candidate is clearly
better. The image candidates start from the probe chosen the same way among the probes.

Before a candidate on images its time is estimated (the previous candidate on images, else one
timed training step) and it is skipped when the rest of ``budget_minutes`` cannot hold it. The
probes always run, even when they alone spend the budget (the record says so). The search
leaves the winner's weights in the network (and its last validated epoch as the run
selection's ``last``), its record in ``engine.method_state["search"]`` (metrics.json's
``strategy_search``) and, per candidate, the phases that made it in
``engine.method_state["chains"]`` (what a refit retrains).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..distributed import same_on_every_process
from .callbacks import best_of_many_margin
from .inference import classifier_keys
from .strategies import DEFAULT_BUDGET_MINUTES, Phase

if TYPE_CHECKING:  # pragma: no cover
    from ..models import BackboneInfo
    from ..tasks.base import RunContext

log = logging.getLogger("fewlabel.train")
PROBE_LR_FACTORS = (0.3, 1.0, 3.0)  # of head_lr: the probe's loss surface is convex, a decade covers it
FINETUNE_LR_FACTORS = (1.0, 1 / 3)  # of lr: whole-network steps above lr wrecked the features (see config.lr)
PARTIAL_BLOCKS = 3  # partial:3: the last blocks (about the top stage) and the classifier
# Which candidate wins among those within noise of the top score, first first: whole-network
# fine-tuning at the configured rate (the best fixed strategy on average), then the gentler
# ones, then the probes (the configured head rate first).
PREFERENCE = (
    "freeze-unfreeze@1", "freeze-unfreeze@0.333", "full@1", "full@0.333", "partial@1", "probe@1", "probe@0.3",
    "probe@3",
)  # fmt: skip
KEPT = "candidate:"  # prefix of a candidate's kept weights among the engine's saved weights


@dataclass(frozen=True)
class Candidate:
    """One plan tried: its strategy as a user would name it, the fit it adds, where it starts,
    and its place in :data:`PREFERENCE`."""

    strategy: str
    phase: Phase
    from_probe: bool  # starts from the chosen probe's weights (else from the initial network)
    rank: int


def candidates(cfg, blocks: int, feature_head: bool = True) -> list[Candidate]:
    """The candidates in the order they run (``blocks``: the backbone's blocks below its head;
    ``feature_head``: whether the task's head can train alone on cached features)."""
    probes = [
        Candidate("linear-probe", Phase(f"probe-lr{cfg.head_lr * f:.3g}", True, cfg.head_epochs, cfg.head_lr * f),
                  False, _rank("probe", f))
        for f in PROBE_LR_FACTORS
    ]  # fmt: skip
    whole = "freeze-unfreeze" if feature_head else "full"
    decay = cfg.layer_decay if feature_head else 1.0
    tuned = [
        Candidate(whole, Phase(f"{whole}-lr{cfg.lr * f:.3g}", False, cfg.epochs, cfg.lr * f, decay, coarse_groups=True),
                  True, _rank(whole, f))
        for f in FINETUNE_LR_FACTORS
    ]  # fmt: skip
    top = Phase(f"partial{PARTIAL_BLOCKS}-lr{cfg.lr:.3g}", False, cfg.epochs, cfg.lr, trainable_blocks=PARTIAL_BLOCKS)
    partial_top = [Candidate(f"partial:{PARTIAL_BLOCKS}", top, True, _rank("partial", 1.0))]
    return (probes if feature_head else []) + tuned + (partial_top if blocks > PARTIAL_BLOCKS else [])


def _rank(kind: str, factor: float) -> int:
    return PREFERENCE.index(f"{kind}@{factor:.3g}")


def choose(rows: list[dict], selection, margin: Callable[[dict], float]) -> dict | None:
    """The row first in preference among the rows whose score is within ``margin(top)`` of the
    top score, widened for the number of rows compared (:func:`best_of_many_margin`: the top of
    six candidates is high partly by luck); None when none was validated."""
    scored = [r for r in rows if r.get("score")]
    if not scored:
        return None
    top = scored[0]
    for row in scored[1:]:
        if selection.beats(row["score"], top["score"]):
            top = row
    noise = best_of_many_margin(margin(top["score"]), len(scored))
    close = [r for r in scored if not selection.clearly_beats(top["score"], r["score"], noise)]
    return min(close, key=lambda r: r["rank"])


def search(ctx: RunContext, model: nn.Module, info: BackboneInfo, initial: dict, run_phase, blocks: int) -> None:
    """Run the candidates within the budget (``run_phase(phase, after=...)`` runs one fit
    through the engine); leave the winner in ``model`` and the record in the engine's method
    state."""
    cfg, engine, selection = ctx.cfg, ctx.engine, ctx.engine.selection
    budget = 60 * (cfg.method.budget_minutes or DEFAULT_BUDGET_MINUTES)
    val_images = len(ctx.data.val) if ctx.data.val is not None else 0
    margin = partial(_margin, ctx.task, selection.key, val_images)
    kept = engine.saved_weights  # each candidate's last weights (a probe's: its classifier), kept over resumes
    rows: list[dict] = []
    chains: dict[str, list[dict]] = {}
    start = last_on_images = probe = None
    for candidate in candidates(cfg, blocks, ctx.task.has_feature_head):
        phase = candidate.phase
        if candidate.from_probe:
            if start is None:  # the probes are done: every image candidate starts from the chosen one
                probe = choose(rows, selection, margin)
                start = _weights(kept, probe["fit"], initial) if probe else initial
            if cfg.method.gentle_candidates != "always" and _fine_tuning_helped(rows, probe, selection, margin):
                rows.append(_row(candidate, "not needed"))
                continue
            spent = engine.fit_seconds([r["fit"] for r in rows])
            estimate = same_on_every_process(last_on_images or _estimate_seconds(ctx, model, info, phase))
            if not engine.finished(phase.name) and spent + estimate > budget:
                rows.append(_row(candidate, "skipped", estimate=estimate, budget_left=budget - spent))
                continue
        model.load_state_dict(start if candidate.from_probe else initial)
        run_phase(phase, after=partial(_keep, kept, model, phase))
        score, seconds = selection.last_of({phase.name}), engine.fit_seconds([phase.name])
        rows.append(_row(candidate, "ran", score=score, seconds=seconds))
        chains[phase.name] = ([dict(probe["phase"])] if candidate.from_probe and probe else []) + [asdict(phase)]
        if not phase.on_features:
            last_on_images = seconds
    winner = choose(rows, selection, margin)
    if winner is not None:
        winner["status"] = "winner"
        model.load_state_dict(_weights(kept, winner["fit"], initial))
        selection.last = winner["score"]  # the epoch the network now holds
    _record(engine, rows, winner, budget, chains, val_images, margin)


def _fine_tuning_helped(rows: list[dict], probe: dict | None, selection, margin) -> bool:
    """Whether the preferred whole-network candidate (the first on images) ran and clearly beat
    the probe it started from: then fine-tuning at the configured rate did not harm the
    pretrained features, and the gentler candidates (a third of the rate, only the top blocks),
    which guard against that, are not needed."""
    first = next((r for r in rows if r["strategy"] != "linear-probe"), None)
    if probe is None or first is None or not first.get("score") or PREFERENCE[first["rank"]] != "freeze-unfreeze@1":
        return False
    return selection.clearly_beats(first["score"], probe["score"], margin(first["score"]))


def _margin(task, key: str, images: int, record: dict) -> float:
    return task.selection_margin(record[key], images)


def _keep(kept: dict, model: nn.Module, phase: Phase) -> None:
    """Keep what a finished candidate changed (saved with the fit): a probe its classifier, any
    other the whole network."""
    state = model.state_dict()
    names = classifier_keys(model) if phase.on_features else list(state)
    kept[f"{KEPT}{phase.name}"] = {k: state[k].detach().to("cpu", copy=True) for k in names}


def _weights(kept: dict, fit: str, initial: dict) -> dict:
    """A candidate's last weights as a whole state dict (a probe's: the initial network with its
    classifier)."""
    return initial | kept[f"{KEPT}{fit}"]


def _record(engine, rows: list[dict], winner: dict | None, budget: float, chains: dict, images: int, margin) -> None:
    """The search's record (metrics.json's ``strategy_search``) and each candidate's phases."""
    probes_seconds = sum(r.get("seconds", 0.0) for r in rows if r["strategy"] == "linear-probe")
    scored = sum(1 for r in rows if r.get("score"))
    engine.method_state["search"] = {
        "budget_seconds": budget,
        "spent_seconds": sum(r.get("seconds", 0.0) for r in rows),
        "probes_exceeded_budget": probes_seconds > budget,
        "monitor": engine.selection.key,
        "val_images": images,
        "margin": best_of_many_margin(margin(winner["score"]), scored) if winner else None,
        "candidates": rows,
        "winner": winner["fit"] if winner else None,
    }
    engine.method_state["chains"] = chains
    engine.method_state["final_fit"] = winner["fit"] if winner else (rows[-1]["fit"] if rows else None)
    if probes_seconds > budget:
        log.warning(
            "strategy auto: the linear probes alone took %.1f min, more than --budget-minutes %.1f; they ran "
            "anyway and nothing else was tried", probes_seconds / 60, budget / 60,
        )  # fmt: skip


def _row(candidate: Candidate, status: str, score=None, seconds=None, estimate=None, budget_left=None) -> dict:
    phase = candidate.phase
    row = {"fit": phase.name, "strategy": candidate.strategy, "lr": phase.lr, "status": status, "rank": candidate.rank}
    row["phase"] = asdict(phase)
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

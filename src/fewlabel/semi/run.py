"""Run a semi-supervised method inside a run directory: the pool, its checks, resume by round.

Writes, beside the usual run files, ``rounds.json`` (per round and module: pseudo-labels
proposed, removed by editing, kept, and with ``audit_pseudo_labels`` their accuracy against
the pool's hidden labels) and a checkpoint after the initial fit and after every round.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.duplicates import cross_duplicates
from ..data.imageset import ImageSet
from ..data.sources import has_labels, load_pool
from ..data.splits import random_subset
from ..errors import FewlabelError
from ..fileio import atomic_write, write_json
from ..models.backbones import BackboneInfo, create_backbone
from ..train.callbacks import write_history
from ..train.engine import DataBundle, check_image_size, resolve_accelerator
from ..train.inference import FeatureCache
from .methods import SemiRun, fixmatch, hard_targets, initial_fit, self_training, train_on_targets
from .trinet import TriNet

log = logging.getLogger("fewlabel.semi")
SEMI_CHECKPOINT = Path("checkpoints") / "semi.pt"


def unlabeled_pool(cfg: TrainConfig, data: DataBundle, seed: int) -> ImageSet:
    """``cfg.unlabeled`` or the unlabeled rest of DATA's training split (a seeded ``pool_size``
    draw of it when set), checked: not empty, and holding no evaluation image (exact pixel
    duplicates) unless ``allow_overlap``."""
    if cfg.unlabeled:
        pool = load_pool(cfg.unlabeled, cfg.img_size, cfg.strict, cfg.progress)
    elif data.unlabeled is not None and len(data.unlabeled):
        pool = data.unlabeled
    else:
        raise FewlabelError(
            "The unlabeled pool is empty: pass --unlabeled POOL, or --labels-per-class so that the rest of "
            "DATA's training split is the pool."
        )
    pool = random_subset(pool, cfg.semi.pool_size, seed)
    overlap = cross_duplicates(data.eval, pool)
    if overlap["count"] and not cfg.allow_overlap:
        first = overlap["examples"][0]
        raise FewlabelError(
            f"The unlabeled pool holds {overlap['count']} image(s) identical to evaluation images "
            f"(e.g. pool '{first[1]}' = evaluation '{first[0]}'); remove them or pass --allow-overlap."
        )
    if cfg.audit_pseudo_labels and not (has_labels(pool) and pool.class_names == data.class_names):
        raise FewlabelError("--audit-pseudo-labels needs a pool with the labelled data's classes (hidden labels).")
    return pool


def probe_set(cfg: TrainConfig, data: DataBundle, seed: int) -> tuple[ImageSet | None, str]:
    """What to score after every round: the validation set when there is one; else, with
    ``audit_pseudo_labels``, a seeded ``probe_size`` draw of the evaluation set (a benchmark's
    view of whether rounds help; nothing is selected on it); else nothing."""
    if data.val is not None and len(data.val):
        return data.val, "validation"
    if cfg.audit_pseudo_labels and cfg.semi.probe_size:
        return random_subset(data.eval, cfg.semi.probe_size, seed), f"{data.eval_name} (audit)"
    return None, ""


def check_labelled(labelled: ImageSet) -> None:
    small = [name for name, n in zip(labelled.class_names, labelled.class_counts(), strict=True) if n < 2]
    if small:
        raise FewlabelError(
            f"Class(es) with fewer than 2 labelled images: {', '.join(small)}; semi-supervised methods need "
            "at least 2 per class (label more, or drop the class)."
        )


def build_network(cfg: TrainConfig, class_names: list[str]) -> tuple[nn.Module, BackboneInfo]:
    """A timm classifier, or for tri-net a TriNet over the backbone's pooled features; an image
    size the backbone cannot take is refused here, as in ``fewlabel train``."""
    if cfg.method != "trinet":
        model, info = create_backbone(
            cfg.model, cfg.pretrained, len(class_names), cfg.dropout, class_names=class_names, head=cfg.head
        )
        check_image_size(model, cfg.img_size, cfg.model)
        return model, info
    backbone, info = create_backbone(cfg.model, cfg.pretrained, 0, 0.0, head="new")
    check_image_size(backbone, cfg.img_size, cfg.model)
    opts = cfg.semi
    return TriNet(backbone, len(class_names), opts.head_hidden, opts.head_dropout, opts.module_stages, cfg.model), info


def fit_semi(
    cfg: TrainConfig, seed: int, run_dir: Path, data: DataBundle, resume: bool
) -> tuple[nn.Module, BackboneInfo, dict]:
    """Train ``cfg.method`` on the labelled set and the pool; resumes after the last saved round."""
    check_labelled(data.train)
    pool = unlabeled_pool(cfg, data, seed)
    net, info = build_network(cfg, data.class_names)
    run = SemiRun(cfg, seed, resolve_accelerator(cfg)[1], info.mean, info.std, FeatureCache(cfg.feature_cache))
    completed = _load_checkpoint(run_dir, net, run) if resume else -1
    log.info("%s: %d labelled images, pool of %d", cfg.method, len(data.train), len(pool))

    def save(stage: int) -> None:
        _save_checkpoint(run_dir, net, run, stage)

    run.probe_images, run.probe_role = probe_set(cfg, data, seed)
    if completed < 0:
        initial_fit(run, net, data.train)
        run.evaluate(net, "initial fit")
        save(0)
    budget = cfg.semi.rounds * cfg.semi.round_epochs
    if cfg.method in ("pseudo-label", "trinet"):
        self_training(run, net, data.train, pool, max(0, completed), save)
    elif completed < 1 and budget:
        if cfg.method == "fixmatch":
            fixmatch(run, net, data.train, pool, budget)
            run.rounds.append({"fixmatch_confident_share": run.fixmatch_confident / max(1, run.fixmatch_seen)})
        else:
            ones = torch.ones(len(data.train), 1, dtype=torch.bool)
            targets = hard_targets(data.train.labels, data.train.num_classes, 1)
            train_on_targets(run, net, data.train, targets, ones, data.train.labels, budget, "supervised")
        run.evaluate(net, f"{budget} more epochs")
        save(1)
    write_json(
        run_dir / "rounds.json",
        {"method": cfg.method, "pool_size": len(pool), "rounds": run.rounds, "evaluations": run.evaluations},
    )
    write_history(run_dir / "history.csv", run.history)
    timing = {"train_seconds": run.seconds, "train_images_per_second": run.images_seen / max(run.seconds, 1e-9)}
    return net.eval(), info, timing


def _save_checkpoint(run_dir: Path, net: nn.Module, run: SemiRun, stage: int) -> None:
    state = {
        "state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "completed": stage,
        "log": json.dumps({"rounds": run.rounds, "history": run.history, "evaluations": run.evaluations}),
    }
    atomic_write(run_dir / SEMI_CHECKPOINT, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(run_dir: Path, net: nn.Module, run: SemiRun) -> int:
    """The number of finished rounds (0: initial fit only; -1: nothing saved)."""
    path = run_dir / SEMI_CHECKPOINT
    if not path.is_file():
        return -1
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["state"])
    except Exception as exc:
        raise FewlabelError(
            f"Checkpoint '{path}' cannot be used ({type(exc).__name__}); rerun with --overwrite."
        ) from None
    logged = json.loads(saved["log"])
    run.rounds, run.history, run.evaluations = logged["rounds"], logged["history"], logged["evaluations"]
    log.info("resuming %s after stage %d", run.cfg.method, saved["completed"])
    return int(saved["completed"])

"""Semi-supervised methods on one backbone and one budget: ``supervised`` (labelled data only),
``pseudo-label`` (self-training with a confidence threshold), ``fixmatch`` (Sohn et al. 2020)
and ``trinet`` (Chen et al. 2018, see :mod:`fewlabel.semi.trinet`).

The loop is plain Python; every training in it is one fit through the engine (so mixed
precision, DDP, loggers, callbacks, checkpoints and resume are the engine's):

* ``head``: the head (tri-net: its three MLPs) on cached features of the labelled images,
  ``head_epochs`` at ``head_lr`` — a random head trained jointly with the backbone at few
  labels wrecks the pretrained features, as ``freeze-unfreeze`` avoids;
* ``initial``: the whole network, ``epochs`` on the labelled images (tri-net: each module on
  its own smeared copy of the labels), at ``freeze-unfreeze``'s learning rates (``lr`` at the
  top, ``layer_decay`` per stage below; tri-net's module stages one step below its MLPs);
* then the budget, ``rounds`` x ``round_epochs`` epochs: self-training rounds (``round-<r>``:
  labelled plus pseudo-labelled images; tri-net's ``diversity-<r>`` fine-tuning on freshly
  smeared labels comes on top, ``diversity_epochs`` each), FixMatch epochs (``fixmatch``:
  labelled batches each with ``mu`` unlabeled batches), or plain epochs (``supervised``).

BatchNorm statistics of pretrained weights stay frozen (the MLPs' own train). Pseudo-labelling
uses the un-augmented view; FixMatch's weak view is ``augment``, its strong one
``randaugment``. Pseudo-labels are computed between fits, sharded across DDP processes and
gathered, so every process trains on the same set; ``rounds.json`` is written by process 0.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.augment import BatchTransform, TwoViews
from ..data.datasets import ImageBatches
from ..data.imageset import ImageSet
from ..data.pool import unlabeled_pool
from ..data.splits import random_subset
from ..distributed import is_rank_zero, sharded
from ..errors import FewlabelError
from ..models import BackboneInfo, check_image_size, create_backbone
from ..rundir import write_rounds
from ..tasks.classification import cached_features
from ..train.datamodule import datamodule
from ..train.engine import Fit, eval_mode_modules, freezes_batchnorm
from ..train.functional import decayed_param_groups
from ..train.inference import batched_outputs, pre_logits
from .data import FeatureTargets, concat
from .functional import (
    MODULES,
    agreeing_pseudo_labels,
    confident_pseudo_labels,
    diversity_due,
    first_full_round,
    hard_targets,
    sample_size_at,
    smear_labels,
    stable_pseudo_labels,
    threshold_at,
    threshold_from_validation,
)
from .modules import FixMatchModule, HeadOnFeatures, SoftTargetModule
from .options import PoolOptions
from .trinet import TriNet

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..tasks.base import DataBundle, RunContext

log = logging.getLogger("fewlabel.semi")
THRESHOLD_CANDIDATES = torch.arange(0.2, 0.995, 0.01)  # threshold_mode validation: the thresholds tried
MIN_VALIDATION_SUPPORT = 10  # ... and the fewest agreeing validation images a threshold may rest on


def train_supervised(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """``supervised``: the budget as more epochs on the labelled images."""
    return run_method(ctx, classifier_network, SemiRun.more_epochs)


def train_pseudo_label(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """``pseudo-label``: self-training rounds of one classifier."""
    return run_method(ctx, classifier_network, SemiRun.self_training)


def train_fixmatch(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """``fixmatch``: the budget as FixMatch epochs."""
    return run_method(ctx, classifier_network, SemiRun.fixmatch)


def train_trinet(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """``trinet``: self-training rounds of three modules on a shared trunk."""
    return run_method(ctx, trinet_network, SemiRun.self_training)


def run_method(ctx: RunContext, network, after_initial_fit) -> tuple[nn.Module, BackboneInfo]:
    """Build the network, run the initial fit, then the method's own fits; write rounds.json."""
    run = SemiRun.start(ctx, *network(ctx))
    after_initial_fit(run)
    return run.finish()


def check_labelled(labelled: ImageSet) -> None:
    small = [name for name, n in zip(labelled.class_names, labelled.class_counts(), strict=True) if n < 2]
    if small:
        raise FewlabelError(
            f"Class(es) with fewer than 2 labelled images: {', '.join(small)}; semi-supervised methods need "
            "at least 2 per class (label more, or drop the class)."
        )


def probe_set(cfg: TrainConfig, data: DataBundle, seed: int) -> tuple[ImageSet | None, str]:
    """What to score after the initial fit and every round: the validation set when there is
    one; else, in audit mode, a seeded ``probe_size`` draw of the evaluation set (a benchmark's
    view of whether rounds help; nothing is selected on it); else nothing."""
    if data.val is not None and len(data.val):
        return data.val, "validation"
    if cfg.method.audit and cfg.method.probe_size:
        return random_subset(data.eval, cfg.method.probe_size, seed), f"{data.eval_name} (audit)"
    return None, ""


def classifier_network(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """The task's classifier, built as ``fewlabel train`` builds it."""
    return ctx.task.build_model(ctx.cfg, ctx.data)


def trinet_network(ctx: RunContext) -> tuple[TriNet, BackboneInfo]:
    """A TriNet over the backbone (see :mod:`fewlabel.semi.trinet`); an image size the backbone
    cannot take is refused here, as in ``fewlabel train``."""
    cfg, class_names = ctx.cfg, ctx.data.class_names
    backbone, info = create_backbone(cfg.model, cfg.pretrained, 0, 0.0, head="new")
    check_image_size(backbone, cfg.img_size, cfg.model)
    opts = cfg.method
    parts = (opts.head_hidden, opts.head_dropout, opts.module_stages, cfg.model, opts.stage_dropout)
    return TriNet(backbone, len(class_names), *parts), info


def network_groups(net: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimiser groups of ``freeze-unfreeze``'s fine-tuning phase: ``lr`` at the top (head,
    tri-net's MLPs), ``layer_decay`` times less per stage below (timm's coarse groups); tri-net's
    module stages sit one step below the MLPs, the shared trunk below them."""
    if not isinstance(net, TriNet):
        return decayed_param_groups(net, cfg.lr, cfg.layer_decay, True, cfg.weight_decay)
    steps = 2 if net.module_stages else 1
    shared = decayed_param_groups(net.shared, cfg.lr * cfg.layer_decay**steps, cfg.layer_decay, True, cfg.weight_decay)
    tails = [p for module in net.heads for p in module.tail.parameters()]
    mlps = [p for module in net.heads for p in module.mlp.parameters()]
    groups = [*shared, {"params": mlps, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if tails:
        groups.append({"params": tails, "lr": cfg.lr * cfg.layer_decay, "weight_decay": cfg.weight_decay})
    return groups


def trained_heads(net: nn.Module) -> list[nn.Module]:
    """The parts whose BatchNorm trains even when the backbone's stays frozen."""
    return [module.mlp for module in net.heads] if isinstance(net, TriNet) else [net.get_classifier()]


class SemiRun:
    """One seed's semi-supervised training: the fits, the pseudo-labels between them and the
    records (``state``: rounds and evaluations, saved by the engine with every fit)."""

    def __init__(self, ctx: RunContext, net: nn.Module, info: BackboneInfo, pool: ImageSet | None) -> None:
        self.ctx, self.cfg, self.opts = ctx, ctx.cfg, ctx.cfg.method
        self.net, self.info, self.pool = net, info, pool
        self.labelled = ctx.data.train
        self.is_trinet = isinstance(net, TriNet)
        self.modules = MODULES if self.is_trinet else 1
        self.probe, self.probe_role = probe_set(ctx.cfg, ctx.data, ctx.seed)
        self.state = ctx.engine.method_state
        self.state.setdefault("rounds", [])
        self.state.setdefault("evaluations", [])
        self._fits = 0

    @classmethod
    def start(cls, ctx: RunContext, net: nn.Module, info: BackboneInfo) -> SemiRun:
        """Check the labelled set, load the pool (for methods that have one), attach the network
        to the engine (restoring it on resume) and run the initial fit."""
        check_labelled(ctx.data.train)
        opts = ctx.cfg.method
        pool = unlabeled_pool(ctx.cfg, ctx.data, ctx.seed, opts.unlabeled) if isinstance(opts, PoolOptions) else None
        ctx.engine.start(net)
        run = cls(ctx, net, info, pool)
        run.initial_fit()
        return run

    def finish(self) -> tuple[nn.Module, BackboneInfo]:
        """Write rounds.json (process 0) and hand back the trained network."""
        if is_rank_zero():
            write_rounds(
                self.ctx.run_dir,
                {
                    "method": self.opts.name,
                    "pool_size": len(self.pool) if self.pool is not None else 0,
                    "rounds": self.state["rounds"],
                    "evaluations": self.state["evaluations"],
                },
            )
        return self.net.eval(), self.info

    # --- the fits -------------------------------------------------------------------------

    def initial_fit(self) -> None:
        """The start every method shares: the head on cached features, then ``epochs`` over the
        labelled set (tri-net: smeared copies)."""
        if self.is_trinet:
            targets = self.smeared_targets(0)
        else:
            targets = hard_targets(self.labelled.labels, self.labelled.num_classes, 1)
        mask = torch.ones(len(self.labelled), self.modules, dtype=torch.bool)
        self._next_fit_seed()
        self.ctx.engine.fit("head", self.cfg.head_epochs, partial(self._head_fit, targets, mask), on_features=True)
        self.fit_on_targets(
            "initial",
            self.cfg.epochs,
            self.labelled,
            targets,
            mask,
            self.labelled.labels,
            after=partial(self.evaluate, "initial fit"),
        )

    @property
    def budget(self) -> int:
        """Epochs after the initial fit: ``rounds`` x ``round_epochs``."""
        return self.opts.rounds * self.opts.round_epochs

    def more_epochs(self) -> None:
        """``supervised``: the budget as more epochs on the labelled images."""
        epochs = self.budget
        ones = torch.ones(len(self.labelled), 1, dtype=torch.bool)
        targets = hard_targets(self.labelled.labels, self.labelled.num_classes, 1)
        after = partial(self.evaluate, f"{epochs} more epochs")
        self.fit_on_targets("supervised", epochs, self.labelled, targets, ones, self.labelled.labels, after=after)

    def fixmatch(self) -> None:
        """FixMatch for the budget's epochs (an epoch is one pass over the labelled images)."""
        epochs, built = self.budget, {}

        def build() -> Fit:
            weak = self.transform(self.cfg.augment)
            strong = self.transform("randaugment", stream=2, hflip=self.cfg.augment not in ("none", "crop"))
            two_views = TwoViews(self.transform(self.cfg.augment, stream=1), strong)
            views = ImageBatches(self.pool.images, (), two_views, self.ctx.seed)
            targets = hard_targets(self.labelled.labels, self.labelled.num_classes, 1)
            ones = torch.ones(len(self.labelled), 1, dtype=torch.bool)
            dataset = ImageBatches(self.labelled.images, (targets, ones), weak, self.ctx.seed)
            data = self._datamodule(
                dataset, self.labelled.labels, unlabeled=views, unlabeled_batch=self.cfg.batch_size * self.opts.mu
            )
            built["module"] = self._module(
                self.net, FixMatchModule, threshold=self.opts.threshold, unlabeled_weight=self.opts.unlabeled_weight
            )
            return Fit(built["module"], data, self._eval_modules())

        def after() -> None:
            self.state["rounds"].append({"fixmatch_confident_share": built["module"].confident_share})
            self.evaluate(f"{epochs} more epochs")

        self._next_fit_seed()
        self.ctx.engine.fit("fixmatch", epochs, build, after=after)

    def self_training(self) -> None:
        """Pseudo-label (one module) or tri-net (three) rounds."""
        for round_index in range(self.opts.rounds):
            if self.diversity_due(round_index):
                smeared = self.smeared_targets(round_index)
                ones = torch.ones(len(self.labelled), MODULES, dtype=torch.bool)
                self.fit_on_targets(
                    f"diversity-{round_index + 1}",
                    self.opts.diversity_epochs,
                    self.labelled,
                    smeared,
                    ones,
                    self.labelled.labels,
                )
            self._round(round_index)

    def diversity_due(self, round_index: int) -> bool:
        """Whether tri-net's round ``round_index`` starts with diversity fine-tuning."""
        if not self.is_trinet:
            return False
        opts = self.opts
        first_full = None
        if opts.diversity_start == "full-pool":
            first_full = first_full_round(opts.sample_first, opts.sample_growth, len(self.pool), opts.rounds)
        return diversity_due(round_index, opts.diversity_every, first_full)

    def _round(self, round_index: int) -> None:
        started: dict = {}

        def build() -> Fit:
            started["time"] = time.perf_counter()
            started["record"], images, targets, mask, labels = self.propose(round_index)
            return self._fit_spec(images, targets, mask, labels)

        def after() -> None:
            record = started["record"] | {"seconds": time.perf_counter() - started["time"]}
            self.state["rounds"].append(record)
            log.info("round %d: %s pseudo-labels", round_index + 1, [m["kept"] for m in record["modules"]])
            self.evaluate(f"round {round_index + 1}")

        self._next_fit_seed()
        self.ctx.engine.fit(f"round-{round_index + 1}", self.opts.round_epochs, build, after=after)

    def fit_on_targets(self, name, epochs, images, targets, mask, labels, after=None) -> None:
        """Fine-tune the whole network on augmented images with soft targets per module."""
        self._next_fit_seed()
        build = partial(self._fit_spec, images, targets, mask, labels)
        self.ctx.engine.fit(name, epochs, build, after=after)

    def _fit_spec(self, images: ImageSet, targets, mask, labels) -> Fit:
        dataset = ImageBatches(images.images, (targets, mask), self.transform(self.cfg.augment), self.ctx.seed)
        return Fit(self._module(self.net), self._datamodule(dataset, labels), self._eval_modules())

    def _head_fit(self, targets, mask) -> Fit:
        """The head (tri-net: its MLPs) on cached pooled features of the un-augmented images."""
        fn = self.net.pooled_features if isinstance(self.net, TriNet) else pre_logits(self.net)
        features = cached_features(self.net, self.labelled, self.info, self.cfg, self.ctx.engine, fn=fn)
        head = HeadOnFeatures(self.net, self.cfg.dropout)
        val = None
        if self.ctx.data.val is not None:
            val_features = cached_features(self.net, self.ctx.data.val, self.info, self.cfg, self.ctx.engine, fn=fn)
            val = torch.utils.data.TensorDataset(val_features, self.ctx.data.val.labels)
        groups = [{"params": list(head.parameters()), "lr": self.cfg.head_lr, "weight_decay": self.cfg.weight_decay}]
        data = datamodule(self.cfg, self._fit_seed, FeatureTargets(features, targets, mask), val, self.labelled.labels)
        return Fit(self._module(head, groups=groups), data)

    def _module(self, net: nn.Module, module_class=SoftTargetModule, groups=None, **extra) -> SoftTargetModule:
        """The fit's Lightning module with the run's optimiser, schedule, label smoothing and
        class weights; ``groups`` default to :func:`network_groups`."""
        return module_class(
            net,
            groups or network_groups(net, self.cfg),
            self.cfg.optimizer,
            self.cfg.schedule,
            self.cfg.warmup_epochs,
            self.cfg.label_smoothing,
            self._class_weights(),
            **extra,
        )

    def _datamodule(self, dataset, labels, **kwargs):
        task = self.ctx.task
        val_split = self.ctx.data.val
        val = task.dataset(val_split, self.info, self.cfg, False, self.ctx.seed) if val_split is not None else None
        return datamodule(self.cfg, self._fit_seed, dataset, val, labels, **kwargs)

    def _next_fit_seed(self) -> None:
        """Each fit shuffles with its own seed (fit order is fixed, so a resume repeats it)."""
        self._fit_seed = self.ctx.seed * 7919 + self._fits
        self._fits += 1

    def _eval_modules(self) -> list[nn.Module]:
        return eval_mode_modules(self.net, freezes_batchnorm(self.cfg), trained_heads(self.net))

    def _class_weights(self):
        from ..tasks.classification import class_weights

        return class_weights(self.labelled, self.cfg.imbalance)

    # --- between fits ---------------------------------------------------------------------

    def transform(self, augment: str, train: bool = True, stream: int = 0, hflip: bool | None = None) -> BatchTransform:
        cfg = self.cfg
        return BatchTransform(augment, cfg.img_size, self.info.mean, self.info.std, train, stream, cfg.vflip, hflip)

    def smeared_targets(self, salt: int) -> torch.Tensor:
        """N x 3 x C: each module its own smeared copy of the labels (seeded by seed, module, salt)."""
        copies = [
            smear_labels(
                self.labelled.labels,
                self.labelled.num_classes,
                self.opts.smear_std,
                torch.Generator().manual_seed(self.ctx.seed * 1009 + 101 * salt + v),
            )
            for v in range(MODULES)
        ]
        return torch.stack(copies, 1)

    def module_features(self, images: ImageSet) -> torch.Tensor:
        """M x N x D pooled features of un-augmented images as each module sees them (TriNet: the
        trunk once, then every module's own stages; eval mode), on the CPU."""
        net = self.net
        if isinstance(net, TriNet):
            fn = lambda x: net.modules_pooled(net.shared_features(x)).transpose(0, 1)  # noqa: E731
        else:
            fn = lambda x: pre_logits(net)(x).unsqueeze(1)  # noqa: E731
        return self.outputs(images, fn).transpose(0, 1)

    def module_probs(self, images: ImageSet) -> torch.Tensor:
        """M x N x C probabilities of each module (eval mode)."""
        features = self.module_features(images)
        with torch.no_grad():
            return HeadOnFeatures(self.net, self.cfg.dropout).eval()(features).softmax(-1)

    def outputs(self, images: ImageSet, fn) -> torch.Tensor:
        """``fn`` of the un-augmented images with the network in eval mode on the run's device,
        gathered on the CPU; computed in shares across DDP processes."""
        net, device = self.net, self.ctx.engine.device
        net.eval().to(device)
        transform = self.transform("none", train=False)

        def compute(indices: list[int]) -> torch.Tensor | None:
            if not indices:
                return None
            return batched_outputs(fn, images.subset(indices), transform, device=device, progress=False)

        def merge(outputs: list, shares: list[list[int]]) -> torch.Tensor:
            first = next(o for o in outputs if o is not None)
            merged = first.new_zeros((len(images), *first.shape[1:]))
            for output, indices in zip(outputs, shares, strict=True):
                if output is not None:
                    merged[indices] = output
            return merged

        try:
            return sharded(len(images), compute, merge)
        finally:
            net.to("cpu")

    def propose(self, round_index: int):
        """The pseudo-labels of round ``round_index`` and the training set they make:
        (record, images, targets, mask, labels)."""
        opts, labelled, is_trinet = self.opts, self.labelled, self.is_trinet
        size = sample_size_at(round_index, opts.sample_first, opts.sample_growth, len(self.pool))
        order = torch.randperm(
            len(self.pool), generator=torch.Generator().manual_seed(self.ctx.seed * 997 + round_index)
        )
        examined = self.pool.subset(order[:size])
        features = self.module_features(examined)  # the backbone runs once; editing reuses them
        head = HeadOnFeatures(self.net, self.cfg.dropout).eval()
        with torch.no_grad():
            probs = head(features).softmax(-1)
        chosen_by: dict = {}
        if is_trinet:
            threshold, chosen_by = self.agreement_threshold(round_index)
            labels, mask = agreeing_pseudo_labels(probs, threshold)
        else:
            threshold = opts.threshold
            labels, mask = confident_pseudo_labels(probs, threshold)
        kept = mask
        if is_trinet and opts.edit_passes:
            if opts.stage_dropout:
                passes = self.image_dropout_passes(examined, opts.edit_passes)
            else:
                passes = self.dropout_passes(head, features, opts.edit_passes)
            kept = mask & stable_pseudo_labels(passes, labels, opts.edit_min_agreement)
        record = {"round": round_index + 1, "threshold": threshold, **chosen_by, "examined": size, "modules": []}
        if is_trinet:
            record["diversity_fine_tune"] = self.diversity_due(round_index)
        for v in range(self.modules):
            record["modules"].append(module_record(labels[v], mask[v], kept[v], examined, opts.audit))
        chosen = kept.any(0)
        classes = labelled.num_classes
        images = concat(labelled, examined.subset(torch.nonzero(chosen).flatten()))
        pseudo_targets = nn.functional.one_hot(labels[:, chosen].T, classes).float()  # K x M x C
        targets = torch.cat([hard_targets(labelled.labels, classes, self.modules), pseudo_targets])
        train_mask = torch.cat([torch.ones(len(labelled), self.modules, dtype=torch.bool), kept[:, chosen].T])
        train_labels = torch.cat([labelled.labels, labels[:, chosen].max(0).values])
        return record, images, targets, train_mask, train_labels

    def agreement_threshold(self, round_index: int) -> tuple[float, dict]:
        """Tri-net's confidence threshold for this round and how it was chosen: the schedule's,
        or (``threshold_mode: validation``) the lowest candidate whose agreeing pseudo-labels on
        the validation split reach ``target_precision``, falling back to the schedule's."""
        opts = self.opts
        scheduled = threshold_at(round_index, opts.threshold_start, opts.threshold_step, opts.threshold_min)
        if opts.threshold_mode != "validation":
            return scheduled, {"threshold_from": "schedule"}
        val = self.ctx.data.val
        if val is None or not len(val):
            log.warning("threshold-mode validation without a validation split: the schedule's threshold is used")
            return scheduled, {"threshold_from": "schedule (no validation split)"}
        chosen, record = threshold_from_validation(
            self.module_probs(val), val.labels, opts.target_precision, THRESHOLD_CANDIDATES, MIN_VALIDATION_SUPPORT
        )
        if chosen is None:
            return scheduled, {"threshold_from": "schedule (no candidate reached target precision)", **record}
        return round(chosen, 4), {"threshold_from": f"validation ({len(val)} images)", **record}

    def editing_seed(self) -> int:
        """The seed of this round's editing passes, from (seed, round)."""
        generator = torch.Generator().manual_seed(self.ctx.seed * 31 + len(self.state["rounds"]))
        return int(torch.randint(0, 2**31, (1,), generator=generator))

    def image_dropout_passes(self, images: ImageSet, passes: int) -> torch.Tensor:
        """P x M x N predicted classes with dropout on in the modules' stages and MLPs (BatchNorm
        in eval mode), the trunk run once per batch; seeded from (seed, round), on the device."""
        net, seed = self.net, self.editing_seed()

        def fn(x: torch.Tensor) -> torch.Tensor:
            for module in net.heads.modules():
                if isinstance(module, nn.Dropout):
                    module.train()
            shared = net.shared_features(x)
            return torch.stack([net.modules_on_features(shared).argmax(-1).T for _ in range(passes)], 1).float()

        devices = [self.ctx.engine.device] if self.ctx.engine.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if devices:
                torch.manual_seed(seed)
            else:
                torch.default_generator.manual_seed(seed)
            predictions = self.outputs(images, fn)  # N x P x M
        net.eval()
        return predictions.long().permute(1, 2, 0)

    def dropout_passes(self, head: HeadOnFeatures, features: torch.Tensor, passes: int) -> torch.Tensor:
        """P x M x N predicted classes with the modules' dropout on, on the CPU (seeded there)."""
        for module in head.modules():
            if isinstance(module, nn.Dropout):
                module.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.editing_seed())
            predictions = [head(features).argmax(-1) for _ in range(passes)]
        head.eval()
        return torch.stack(predictions)

    def evaluate(self, after: str) -> None:
        """Score the probe images (if any): ensemble accuracy, and for tri-net each module's
        accuracy and the share of images on which the modules do not all agree (diversity)."""
        if self.probe is None:
            return
        probs = self.module_probs(self.probe)
        truth = self.probe.labels
        record = {
            "after": after,
            "set": self.probe_role,
            "images": len(truth),
            "accuracy": float((probs.mean(0).argmax(-1) == truth).float().mean()),
        }
        if len(probs) > 1:
            predicted = probs.argmax(-1)
            record["module_accuracy"] = [float((p == truth).float().mean()) for p in predicted]
            record["modules_disagree"] = float((predicted != predicted[0]).any(0).float().mean())
        self.state["evaluations"].append(record)
        log.info("after %s: %s accuracy %.4f", after, self.probe_role, record["accuracy"])


def module_record(labels, mask, kept, examined: ImageSet, audit: bool) -> dict:
    """Counts for one module's pseudo-labels, and their accuracy against hidden truth if asked."""
    record = {"candidates": int(mask.sum()), "removed_by_editing": int((mask & ~kept).sum()), "kept": int(kept.sum())}
    if audit:
        truth = examined.labels
        record["accuracy_before_editing"] = float((labels[mask] == truth[mask]).float().mean()) if mask.any() else None
        record["accuracy_kept"] = float((labels[kept] == truth[kept]).float().mean()) if kept.any() else None
    return record

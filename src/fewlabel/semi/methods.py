"""Semi-supervised methods on one backbone and one budget: ``supervised`` (labelled data only),
``pseudo-label`` (self-training with a confidence threshold), ``fixmatch`` (Sohn et al. 2020)
and ``trinet`` (Chen et al. 2018, see :mod:`fewlabel.semi.trinet`).

Budget, the same for all: ``epochs`` over the labelled set first (tri-net on its three smeared
copies), then ``rounds`` x ``round_epochs`` epochs: self-training epochs over labelled plus
pseudo-labelled images, FixMatch epochs of labelled batches each with ``fixmatch_mu``
unlabeled batches, plain epochs for ``supervised`` (tri-net's diversity fine-tuning comes on
top, ``diversity_epochs`` per refresh). Before all that, the head (tri-net: the three MLPs)
trains ``head_epochs`` on cached features, and the whole network then trains with
``freeze-unfreeze``'s learning rates (``lr`` at the top, ``layer_decay`` per stage below;
AdamW, cosine decay per phase); BatchNorm statistics of pretrained weights stay frozen.
Pseudo-labelling uses the weak (``augment``) view; FixMatch's strong view is ``randaugment``.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..data.datamodule import EpochSampler, image_rng
from ..data.imageset import ImageSet
from ..data.transforms import build_transform, describe_eval_transform
from ..errors import FewlabelError
from ..train.callbacks import seed_batch
from ..train.engine import freezes_batchnorm
from ..train.functional import decayed_param_groups, warmup_cosine
from ..train.inference import FeatureCache, batched_outputs, pre_logits
from .trinet import (
    MODULES,
    TriNet,
    agreeing_pseudo_labels,
    diversity_due,
    sample_size_at,
    smear_labels,
    stable_pseudo_labels,
    threshold_at,
)

log = logging.getLogger("fewlabel.semi")


class TargetImages(Dataset):
    """Images with soft targets for M modules (N x M x C) and a mask (N x M) of the modules each
    image trains; keyed by (epoch, index) so augmentation is seeded per image as in training."""

    def __init__(self, images: ImageSet, targets: torch.Tensor, mask: torch.Tensor, transform, seed: int) -> None:
        self.images, self.targets, self.mask, self.transform, self.seed = images, targets, mask, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with image_rng(self.seed, epoch, index):
            return self.transform(self.images.images[index]), self.targets[index], self.mask[index]


def module_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of M modules (logits M x B x C, targets B x M x C, mask B x M), each
    module's mean over the images it trains on, summed over modules."""
    per_image = -(targets.transpose(0, 1) * logits.log_softmax(-1)).sum(-1)  # M x B
    weights = mask.transpose(0, 1).float()
    return ((per_image * weights).sum(1) / weights.sum(1).clamp_min(1)).sum()


@dataclass
class SemiRun:
    """What a semi-supervised fit needs and records: config, device, transforms, round log."""

    cfg: TrainConfig
    seed: int
    device: torch.device
    mean: tuple
    std: tuple
    cache: FeatureCache = field(default_factory=lambda: FeatureCache("memory"))
    rounds: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    probe_images: ImageSet | None = None  # scored after the initial fit and every round
    probe_role: str = ""
    evaluations: list[dict] = field(default_factory=list)
    fixmatch_confident: int = 0  # unlabeled images above the threshold, summed over steps
    fixmatch_seen: int = 0
    images_seen: int = 0  # labelled and pseudo-labelled images trained on (FixMatch: also unlabeled)
    seconds: float = 0.0

    def evaluate(self, net: nn.Module, after: str) -> None:
        """Score ``probe_images`` (if any): ensemble accuracy, and for tri-net each module's
        accuracy and the share of images on which the modules do not all agree (diversity)."""
        if self.probe_images is None:
            return
        features = module_features(self, net, self.probe_images)
        with torch.no_grad():
            probs = HeadOnFeatures(net, self.cfg.dropout).eval()(features).softmax(-1)
        truth = self.probe_images.labels
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
        self.evaluations.append(record)
        log.info("after %s: %s accuracy %.4f", after, self.probe_role, record["accuracy"])

    def transform(self, augment: str, train: bool = True):
        return build_transform(augment, self.cfg.img_size, self.mean, self.std, train=train)

    def train_epochs(
        self, net: nn.Module, dataset: Dataset, labels: torch.Tensor, epochs: int, phase: str, step, groups=None
    ) -> None:
        """``epochs`` of AdamW (``groups``: parameter groups, default :func:`network_groups`) with
        warm-up and cosine decay; ``step(net, batch) -> loss``."""
        optimizer = torch.optim.AdamW(groups or network_groups(net, self.cfg), weight_decay=self.cfg.weight_decay)
        sampler = EpochSampler(labels, self.seed * 7919 + len(self.history), keyed=True)
        batch = self.cfg.batch_size
        # a last batch of one image breaks BatchNorm in training mode: drop just that one
        workers = 0 if isinstance(dataset, FeatureTargets) else self.cfg.workers  # features are in memory
        loader = DataLoader(
            dataset,
            batch,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=len(dataset) % batch == 1,
        )
        total = epochs * len(loader)
        warmup = round(self.cfg.warmup_epochs * len(loader))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, total, warmup, self.cfg.schedule)
        )
        net.to(self.device)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            self._train_mode(net)
            started, losses = time.perf_counter(), []
            for index, batch in enumerate(loader):
                seed_batch(self.seed, zlib.crc32(phase.encode()), epoch, index, self.device)
                loss = step(net, [b.to(self.device) for b in batch])
                if not torch.isfinite(loss):
                    raise FewlabelError(
                        f"{phase}: the loss became {loss.item()} at epoch {epoch}; lower --lr or check the data."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                self.images_seen += len(batch[0])
            seconds = time.perf_counter() - started
            self.seconds += seconds
            mean_loss = sum(losses) / max(1, len(losses))
            self.history.append({"phase": phase, "epoch": epoch, "train_loss": mean_loss, "seconds": seconds})
        net.to("cpu")

    def _train_mode(self, net: nn.Module) -> None:
        """Training mode, but a pretrained backbone's BatchNorm statistics stay fixed (as in
        ``fewlabel train``); the heads' own BatchNorm (tri-net's MLPs) trains."""
        net.train()
        if isinstance(net, HeadOnFeatures) or not freezes_batchnorm(self.cfg):
            return
        if isinstance(net, TriNet):
            parts, head = net.pretrained_parts(), set()
        else:
            parts, head = [net], set(map(id, net.get_classifier().modules()))
        for part in parts:
            for module in part.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in head:
                    module.eval()


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


class HeadOnFeatures(nn.Module):
    """The head of a network applied to pooled features (TriNet: its three MLPs; a timm model:
    dropout and classifier): M x B x C logits from B x D features shared by all modules or
    M x B x D features of each module."""

    def __init__(self, net: nn.Module, dropout: float) -> None:
        super().__init__()
        if isinstance(net, TriNet):
            self.head = nn.ModuleList(module.mlp for module in net.heads)
        else:
            self.head = nn.ModuleList([nn.Sequential(nn.Dropout(dropout), net.get_classifier())])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 2:
            features = features.unsqueeze(0).expand(len(self.head), -1, -1)
        return torch.stack([head(f) for head, f in zip(self.head, features, strict=True)])


class FeatureTargets(Dataset):
    def __init__(self, features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        self.features, self.targets, self.mask = features, targets, mask

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key: tuple[int, int]):
        index = key[1]
        return self.features[index], self.targets[index], self.mask[index]


def soft_step(net: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    images, targets, mask = batch
    logits = net.module_logits(images) if isinstance(net, TriNet) else net(images).unsqueeze(0)
    return module_loss(logits, targets, mask)


def train_on_targets(run: SemiRun, net, images: ImageSet, targets, mask, labels, epochs: int, phase: str) -> None:
    """Fine-tune the whole network on augmented images with soft targets per module."""
    dataset = TargetImages(images, targets, mask, run.transform(run.cfg.augment), run.seed)
    run.train_epochs(net, dataset, labels, epochs, phase, soft_step)


def pooled_fn(net: nn.Module):
    """images -> pooled features: a timm model's embedding; for a TriNet, module 0's (all
    modules' while their stages are the untouched pretrained copies)."""
    return net.pooled_features if isinstance(net, TriNet) else pre_logits(net)


def warm_up_head(run: SemiRun, net: nn.Module, images: ImageSet, targets, mask) -> None:
    """Train only the head (or tri-net's MLPs) on cached pooled features of the un-augmented
    images, ``head_epochs`` at ``head_lr``: a random head trained jointly with the backbone at
    few labels wrecks the pretrained features (as ``freeze-unfreeze`` avoids)."""
    if not run.cfg.head_epochs:
        return
    transform_id = describe_eval_transform(run.cfg.img_size, run.mean, run.std)
    features = run.cache.features(
        net.to(run.device),
        images,
        run.transform("none", train=False),
        transform_id,
        128,
        run.device,
        False,
        fn=pooled_fn(net),
    )
    net.to("cpu")
    head = HeadOnFeatures(net, run.cfg.dropout)

    def step(head: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return module_loss(head(batch[0]), batch[1], batch[2])

    dataset = FeatureTargets(features, targets, mask)
    groups = [{"params": list(head.parameters()), "lr": run.cfg.head_lr}]
    run.train_epochs(head, dataset, images.labels, run.cfg.head_epochs, "head", step, groups)


def hard_targets(labels: torch.Tensor, num_classes: int, modules: int) -> torch.Tensor:
    return nn.functional.one_hot(labels, num_classes).float().unsqueeze(1).expand(-1, modules, -1).clone()


def module_features(run: SemiRun, net: nn.Module, images: ImageSet) -> torch.Tensor:
    """M x N x D pooled features of un-augmented images as each module sees them (TriNet: the
    trunk once, then every module's own stages; eval mode), on the CPU."""
    net.eval().to(run.device)
    if isinstance(net, TriNet):
        fn = lambda x: net.modules_pooled(net.shared_features(x)).transpose(0, 1)  # noqa: E731
    else:
        fn = lambda x: pre_logits(net)(x).unsqueeze(1)  # noqa: E731
    features = batched_outputs(fn, images, run.transform("none", train=False), 128, run.device, progress=False)
    net.to("cpu")
    return features.transpose(0, 1)


def dropout_passes(run: SemiRun, head: HeadOnFeatures, features: torch.Tensor, passes: int) -> torch.Tensor:
    """P x M x N predicted classes with the modules' dropout on, on the CPU (seeded there)."""
    generator = torch.Generator().manual_seed(run.seed * 31 + len(run.rounds))
    for module in head.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        predictions = [head(features).argmax(-1) for _ in range(passes)]
    head.eval()
    return torch.stack(predictions)


def self_training(run: SemiRun, net: nn.Module, labelled: ImageSet, pool: ImageSet, start_round: int, save_round):
    """Pseudo-label (one module) or tri-net (three) rounds, from ``start_round``."""
    cfg, opts = run.cfg, run.cfg.semi
    trinet = isinstance(net, TriNet)
    modules, classes = (MODULES if trinet else 1), labelled.num_classes
    for round_index in range(start_round, opts.rounds):
        started = time.perf_counter()
        refresh = trinet and diversity_due(round_index, opts.diversity_every)
        if refresh:
            smeared = smeared_targets(run, labelled, round_index)
            ones = torch.ones(len(labelled), MODULES, dtype=torch.bool)
            phase = f"diversity-{round_index + 1}"
            train_on_targets(run, net, labelled, smeared, ones, labelled.labels, opts.diversity_epochs, phase)
        threshold = threshold_at(round_index, opts.threshold_start, opts.threshold_step, opts.threshold_min)
        size = sample_size_at(round_index, opts.sample_first, opts.sample_growth, len(pool))
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(run.seed * 997 + round_index))
        examined = pool.subset(order[:size])
        features = module_features(run, net, examined)  # the backbone runs once; editing reuses them
        head = HeadOnFeatures(net, cfg.dropout).eval()
        with torch.no_grad():
            probs = head(features).softmax(-1)
        if trinet:
            labels, mask = agreeing_pseudo_labels(probs, threshold)
        else:
            threshold = opts.pl_threshold
            confidence, predicted = probs.max(-1)
            labels, mask = predicted, confidence > threshold
        record = {"round": round_index + 1, "threshold": threshold, "examined": size, "modules": []}
        if trinet:
            record["diversity_fine_tune"] = refresh
        kept = mask
        if trinet and opts.edit_passes:
            kept = mask & stable_pseudo_labels(
                dropout_passes(run, head, features, opts.edit_passes), labels, opts.edit_min_agreement
            )
        for v in range(modules):
            record["modules"].append(_module_record(labels[v], mask[v], kept[v], examined, cfg.audit_pseudo_labels))
        chosen = kept.any(0)
        images = _concat(labelled, examined.subset(torch.nonzero(chosen).flatten()))
        pseudo_targets = nn.functional.one_hot(labels[:, chosen].T, classes).float()  # K x M x C
        targets = torch.cat([hard_targets(labelled.labels, classes, modules), pseudo_targets])
        train_mask = torch.cat([torch.ones(len(labelled), modules, dtype=torch.bool), kept[:, chosen].T])
        train_labels = torch.cat([labelled.labels, labels[:, chosen].max(0).values])
        train_on_targets(
            run, net, images, targets, train_mask, train_labels, opts.round_epochs, f"round-{round_index + 1}"
        )
        record["seconds"] = time.perf_counter() - started
        run.rounds.append(record)
        run.evaluate(net, f"round {round_index + 1}")
        log.info("round %d: %s pseudo-labels", round_index + 1, [m["kept"] for m in record["modules"]])
        save_round(round_index + 1)


def smeared_targets(run: SemiRun, labelled: ImageSet, salt: int) -> torch.Tensor:
    """N x 3 x C: each module its own smeared copy of the labels (seeded by seed, module, salt)."""
    copies = [
        smear_labels(
            labelled.labels,
            labelled.num_classes,
            run.cfg.semi.smear_std,
            torch.Generator().manual_seed(run.seed * 1009 + 101 * salt + v),
        )
        for v in range(MODULES)
    ]
    return torch.stack(copies, 1)


def _module_record(labels, mask, kept, examined: ImageSet, audit: bool) -> dict:
    """Counts for one module's pseudo-labels, and their accuracy against hidden truth if asked."""
    record = {"candidates": int(mask.sum()), "removed_by_editing": int((mask & ~kept).sum()), "kept": int(kept.sum())}
    if audit:
        truth = examined.labels
        record["accuracy_before_editing"] = float((labels[mask] == truth[mask]).float().mean()) if mask.any() else None
        record["accuracy_kept"] = float((labels[kept] == truth[kept]).float().mean()) if kept.any() else None
    return record


def _concat(first: ImageSet, second: ImageSet) -> ImageSet:
    channels = max(first.images.shape[1], second.images.shape[1])
    images = torch.cat([first.images.expand(-1, channels, -1, -1), second.images.expand(-1, channels, -1, -1)])
    labels = torch.cat([first.labels, torch.zeros(len(second), dtype=torch.long)])
    return ImageSet(images.contiguous(), labels, first.class_names, first.ids + second.ids, first.source)


class TwoViews(Dataset):
    """Unlabeled images as (weak view, strong view), seeded per (epoch, index)."""

    def __init__(self, images: ImageSet, weak, strong, seed: int) -> None:
        self.images, self.weak, self.strong, self.seed = images, weak, strong, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with image_rng(self.seed, epoch, index):
            image = self.images.images[index]
            return self.weak(image), self.strong(image)


def fixmatch(run: SemiRun, net: nn.Module, labelled: ImageSet, pool: ImageSet, epochs: int) -> None:
    """FixMatch: cross-entropy on weakly augmented labelled images plus, on unlabeled images whose
    weak-view confidence exceeds ``fixmatch_threshold``, cross-entropy of the strong view against
    the weak view's predicted class, weighted by ``fixmatch_lambda``."""
    opts = run.cfg.semi
    classes = labelled.num_classes
    unlabeled = TwoViews(pool, run.transform(run.cfg.augment), run.transform("randaugment"), run.seed)
    sampler = EpochSampler(torch.zeros(len(pool), dtype=torch.long), run.seed + 17, keyed=True)
    workers = run.cfg.workers
    loader = DataLoader(
        unlabeled,
        run.cfg.batch_size * opts.fixmatch_mu,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    state = {"iterator": iter(loader), "epoch": 0}

    def next_unlabeled() -> list[torch.Tensor]:
        try:
            return next(state["iterator"])
        except StopIteration:
            state["epoch"] += 1
            sampler.set_epoch(state["epoch"])
            state["iterator"] = iter(loader)
            return next(state["iterator"])

    def step(net: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        images, targets, mask = batch
        weak, strong = (v.to(images.device) for v in next_unlabeled())
        logits = net(torch.cat([images, weak, strong]))
        labelled_logits, weak_logits, strong_logits = logits.split([len(images), len(weak), len(strong)])
        supervised = module_loss(labelled_logits.unsqueeze(0), targets, mask)
        confidence, pseudo = weak_logits.detach().softmax(-1).max(-1)
        confident = (confidence > opts.fixmatch_threshold).float()
        unsup = (nn.functional.cross_entropy(strong_logits, pseudo, reduction="none") * confident).mean()
        run.fixmatch_confident += int(confident.sum())
        run.fixmatch_seen += len(confident)
        run.images_seen += len(weak) + len(strong)
        return supervised + opts.fixmatch_lambda * unsup

    targets = hard_targets(labelled.labels, classes, 1)
    dataset = TargetImages(
        labelled, targets, torch.ones(len(labelled), 1, dtype=torch.bool), run.transform(run.cfg.augment), run.seed
    )
    run.train_epochs(net, dataset, labelled.labels, epochs, "fixmatch", step)


def initial_fit(run: SemiRun, net: nn.Module, labelled: ImageSet) -> None:
    """The start every method shares: ``epochs`` over the labelled set (tri-net: smeared copies)."""
    if isinstance(net, TriNet):
        targets = smeared_targets(run, labelled, 0)
        modules = MODULES
    else:
        targets, modules = hard_targets(labelled.labels, labelled.num_classes, 1), 1
    mask = torch.ones(len(labelled), modules, dtype=torch.bool)
    warm_up_head(run, net, labelled, targets, mask)
    train_on_targets(run, net, labelled, targets, mask, labelled.labels, run.cfg.epochs, "initial")

"""Lightning modules of the semi-supervised methods: soft targets for M modules (tri-net's
three, or a classifier's one) and FixMatch. They only wire :mod:`fewlabel.semi.functional`."""

from __future__ import annotations

import torch
from torch import nn

from ..train.module import ClassifierModule
from .functional import ensemble_log_probs, fixmatch_loss, smooth_targets, soft_cross_entropy


def module_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """M x B x C logits: tri-net's (or a head on features') modules, or a classifier as one."""
    if hasattr(net, "module_logits"):
        return net.module_logits(x)
    return net(x).unsqueeze(0)


class HeadOnFeatures(nn.Module):
    """The head of a network applied to pooled features (TriNet: its three MLPs; a timm model:
    dropout and classifier): M x B x C logits from B x D features shared by all modules or
    M x B x D features of each module."""

    def __init__(self, net: nn.Module, dropout: float) -> None:
        super().__init__()
        if hasattr(net, "heads"):  # TriNet
            self.head = nn.ModuleList(module.mlp for module in net.heads)
        else:
            self.head = nn.ModuleList([nn.Sequential(nn.Dropout(dropout), net.get_classifier())])

    def output_modules(self) -> list[str]:
        """The modules whose outputs are logits (read by the geometry terms)."""
        return [f"head.{i}" for i in range(len(self.head))]

    def module_logits(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 2:
            features = features.unsqueeze(0).expand(len(self.head), -1, -1)
        return torch.stack([head(f) for head, f in zip(self.head, features, strict=True)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.module_logits(features)


class SoftTargetModule(ClassifierModule):
    """Soft cross-entropy of every module on its own targets (batches of images, B x M x C
    targets and a B x M mask of the modules each image trains); label smoothing and class
    weights apply to the targets. Predicts (and validates) the modules' mean probability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_log_probs(module_logits(self.net, x))

    def training_loss(self, batch) -> tuple[torch.Tensor, dict, int]:
        x, targets, mask = batch
        logits = module_logits(self.net, x)
        loss = soft_cross_entropy(logits, smooth_targets(targets, self.label_smoothing), mask, self.class_weights)
        return loss, {"train_acc": _agreement(logits, targets, mask)}, len(x)

    def label_matrix(self, batch) -> torch.Tensor:
        """The modules' mean target of each image (B x C)."""
        return batch[1].float().mean(1)


def _agreement(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of (module, image) pairs trained on whose prediction is the target's top class."""
    hits = (logits.argmax(-1) == targets.transpose(0, 1).argmax(-1)) & mask.transpose(0, 1)
    return hits.sum() / mask.sum().clamp_min(1)


class FixMatchModule(SoftTargetModule):
    """FixMatch (Sohn et al. 2020): cross-entropy on weakly augmented labelled images plus,
    weighted by ``unlabeled_weight``, :func:`fixmatch_loss` on (weak, strong) views of
    unlabeled images. Counts how many unlabeled images passed the threshold (over every
    process, kept across a resume)."""

    def __init__(self, *args, threshold: float = 0.95, unlabeled_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threshold = threshold
        self.unlabeled_weight = unlabeled_weight
        self.confident = 0
        self.seen = 0
        self.confident_share = 0.0  # over every process, set when the fit ends

    def training_loss(self, batch) -> tuple[torch.Tensor, dict, int]:
        images, targets, mask = batch["labelled"]
        ((weak, strong),) = batch["unlabeled"]
        logits = self.net(torch.cat([images, weak, strong]))
        labelled, weak_logits, strong_logits = logits.split([len(images), len(weak), len(strong)])
        labelled = labelled.unsqueeze(0)
        supervised = soft_cross_entropy(
            labelled, smooth_targets(targets, self.label_smoothing), mask, self.class_weights
        )
        unlabeled, confident = fixmatch_loss(weak_logits, strong_logits, self.threshold)
        self.confident += int(confident.sum())
        self.seen += len(confident)
        logs = {"train_acc": _agreement(labelled, targets, mask), "confident": confident.float().mean()}
        return supervised + self.unlabeled_weight * unlabeled, logs, len(images)

    def label_matrix(self, batch) -> torch.Tensor:
        """The labelled images' targets (they come first in the forward pass)."""
        return batch["labelled"][1].float().mean(1)

    def batch_images(self, batch) -> int:
        """Images a step trains on: labelled, and both views of the unlabeled ones."""
        ((weak, _),) = batch["unlabeled"]
        return len(batch["labelled"][0]) + 2 * len(weak)

    def on_train_end(self) -> None:
        """Sum the counts of every process (while the fit's process group is at hand)."""
        counts = torch.tensor([self.confident, self.seen], dtype=torch.long, device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        confident, seen = counts.tolist()
        self.confident_share = confident / max(1, seen)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fixmatch_counts"] = [self.confident, self.seen]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.confident, self.seen = checkpoint.get("fixmatch_counts", [0, 0])

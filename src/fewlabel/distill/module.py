"""The Lightning module of the ``distill`` method: it only wires :mod:`fewlabel.graphs`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import graph_distillation_loss, kd_loss, rkd_distance_loss
from ..models.layers import LayerTap, module_name
from ..train.module import ClassifierModule


@dataclass(frozen=True)
class TeacherLayout:
    """How a cached teacher row is laid out: logits, pooled embedding, then each paired layer's
    flattened representation."""

    classes: int
    embedding: int
    layers: tuple[int, ...]

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        logits, embedding, *layers = rows.split([self.classes, self.embedding, *self.layers], dim=1)
        return logits, embedding, layers


@dataclass(frozen=True)
class DistillTerms:
    """The terms added to cross-entropy and their weights (0: not used); no defaults of its own,
    so the options' (:class:`~fewlabel.distill.options.DistillOptions`) are the only ones."""

    lgg: float
    kd: float
    rkd: float
    temperature: float
    k: int | None
    graph_embedding: bool
    graph_logits: bool


def embed_and_classify(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled embedding, logits) of a timm classifier in one pass; dropout as in its forward."""
    embedding = net.forward_head(net.forward_features(x), pre_logits=True)
    dropped = F.dropout(embedding, getattr(net, "drop_rate", 0.0), net.training)
    return embedding, net.get_classifier()(dropped)


class DistillModule(ClassifierModule):
    """Cross-entropy on a batch of augmented labelled images, plus the distillation terms on a
    batch of un-augmented images whose teacher outputs were cached (both batches go through the
    student in one forward pass, labelled first)."""

    def __init__(
        self,
        *args,
        terms: DistillTerms,
        layout: TeacherLayout,
        student_layers: list[str],
        graph_side: int | None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.terms, self.layout = terms, layout
        self.student_tap = LayerTap(self.net, student_layers, graph_side) if terms.lgg > 0 else None

    def training_loss(self, batch) -> tuple[torch.Tensor, dict, int]:
        x, y = batch["labelled"]
        fixed, rows = batch["unlabeled"]
        if self.student_tap is None:
            embedding, logits = embed_and_classify(self.net, torch.cat([x, fixed]))
            taps = []
        else:
            with self.student_tap.recording():
                embedding, logits = embed_and_classify(self.net, torch.cat([x, fixed]))
            taps = [t[len(x) :] for t in self.student_tap.taken()]
        labelled_logits = logits[: len(x)]
        loss = F.cross_entropy(
            labelled_logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing
        )
        logs = {"train_acc": (labelled_logits.argmax(-1) == y).float().mean(), "ce": loss.detach()}
        teacher_logits, teacher_embedding, teacher_layers = self.layout.split(rows.float())
        terms = self.terms
        if terms.kd > 0:
            kd = kd_loss(logits[len(x) :], teacher_logits, terms.temperature)
            loss, logs["kd"] = loss + terms.kd * kd, kd.detach()
        if terms.rkd > 0:
            rkd = rkd_distance_loss(embedding[len(x) :], teacher_embedding)
            loss, logs["rkd"] = loss + terms.rkd * rkd, rkd.detach()
        if terms.lgg > 0:
            if terms.graph_embedding:
                taps, teacher_layers = [*taps, embedding[len(x) :]], [*teacher_layers, teacher_embedding]
            if terms.graph_logits:
                taps, teacher_layers = [*taps, logits[len(x) :]], [*teacher_layers, teacher_logits]
            lgg = graph_distillation_loss(taps, teacher_layers, terms.k)
            loss, logs["lgg"] = loss + terms.lgg * lgg, lgg.detach()
        return loss, logs, len(y)

    def output_layers(self) -> list[str]:
        """The classifier: the student runs its trunk, pooling and classifier one by one
        (:func:`embed_and_classify`), never the network as a whole."""
        return [module_name(self.net, self.net.get_classifier())]

    def label_matrix(self, batch) -> torch.Tensor:
        return batch["labelled"][1]

    def batch_images(self, batch) -> int:
        """Images a step trains on: labelled and distillation images."""
        return len(batch["labelled"][0]) + len(batch["unlabeled"][0])

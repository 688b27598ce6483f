"""Lightning modules: what every method's module shares (optimiser, schedule, NaN guard,
logging) in :class:`EngineModule`, and supervised classification in :class:`ClassifierModule`.

A module receives a plain ``nn.Module`` (a whole network, or a head over cached features) and
the optimiser groups the method chose; phase changes live in callbacks and in the engine. The
engine may add latent-geometry terms to any module's training loss (:class:`GeometryTerms`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewlabelError
from ..graphs import MIN_BATCH, geometry_target_loss, smoothness_regularizer
from ..models.layers import LayerTap, layers_named, trunk_of
from .functional import warmup_cosine


@dataclass(frozen=True)
class GeometryTerms:
    """Latent-geometry terms added to a method's own training loss (Lassance et al. 2021):

    * ``smooth_weight`` x the layer-smoothness regulariser over the trunk's ``layers``
      (:func:`fewlabel.models.layers.layers_named`: stages, blocks or names;
      :func:`fewlabel.graphs.smoothness_regularizer`, ``k`` edges per node, Laplacian power
      ``power``): the label smoothness of each layer's graph should vary little to the next;
    * ``target_weight`` x the geometry-targeted loss on the network's output
      (:func:`fewlabel.graphs.geometry_target_loss`): the output graph should be the label graph.

    Both read the label signal of the batch's labelled images (the module's
    :meth:`EngineModule.label_matrix`; a method that also forwards unlabeled images puts the
    labelled ones first). A fit on cached features trains only a head: it has no stages, so only
    the target term applies there."""

    smooth_weight: float = 0.0
    target_weight: float = 0.0
    k: int | None = None
    power: int = 1
    layers: str = "stages"

    @property
    def active(self) -> bool:
        return self.smooth_weight > 0 or self.target_weight > 0


class NonFiniteLossError(FewlabelError):
    """The training loss became NaN or infinite."""


class EngineModule(L.LightningModule):
    """The shared part of every method's module. A subclass gives ``training_loss(batch) ->
    (loss, extra logs, batch size)`` and ``validation_loss(batch) -> (loss, extra logs, batch
    size)``; the engine sets ``phase`` to the fit's name (it appears in errors)."""

    def __init__(
        self,
        net: nn.Module,
        param_groups: list[dict],
        optimizer: str = "adamw",
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.param_groups = param_groups
        self._param_names = {id(p): name for name, p in self.named_parameters()}
        self.optimizer_name = optimizer
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.phase = "fit"
        self.geometry = GeometryTerms()
        self._tap: LayerTap | None = None
        self._smooth_layers: list[str] = []
        self._outputs: list[str] = []

    def add_geometry(self, terms: GeometryTerms) -> None:
        """Add ``terms`` to the training loss (the engine calls this for every fit; the smoothness
        term is dropped where the network has no trunk)."""
        smoothed: list[str] = []
        if terms.smooth_weight > 0:
            try:
                trunk_of(self.net)
            except FewlabelError:  # a head on cached features: no layer below it trains
                terms = replace(terms, smooth_weight=0.0)
            else:
                smoothed = layers_named(self.net, terms.layers)
                if len(smoothed) < 2:
                    raise FewlabelError(
                        f"smooth_layers '{terms.layers}': the regulariser compares consecutive layers, so it needs at "
                        f"least 2; got {len(smoothed)}."
                    )
        if not terms.active:
            return
        self.geometry = terms
        self._smooth_layers, self._outputs = smoothed, self.output_layers()
        self._tap = LayerTap(self.net, [*smoothed, *self._outputs])

    def output_layers(self) -> list[str]:
        """Names of the modules whose outputs are the logits, read by the geometry terms: the
        network as a whole ("") unless it names its own (several heads)."""
        return self.net.output_modules() if hasattr(self.net, "output_modules") else [""]

    def label_matrix(self, batch) -> torch.Tensor | None:
        """B x C label signal of the batch's labelled images (one-hot or soft), for the geometry
        terms; None: this module has none to give."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_loss(self, batch) -> tuple[torch.Tensor, dict, int]:
        raise NotImplementedError

    def validation_loss(self, batch) -> tuple[torch.Tensor, dict, int]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self._tap is None:
            loss, logs, size = self.training_loss(batch)
        else:
            with self._tap.recording():
                loss, logs, size = self.training_loss(batch)
            loss, logs = self._add_geometry_terms(batch, loss, logs)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"Training loss became {loss.item()} in phase '{self.phase}' at epoch "
                f"{self.current_epoch}, step {self.global_step}; training stopped."
            )
        self.log_dict({"train_loss": loss, **logs}, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _add_geometry_terms(self, batch, loss: torch.Tensor, logs: dict) -> tuple[torch.Tensor, dict]:
        smoothed = self._tap.taken(required=False, names=self._smooth_layers)  # tri-net runs its own last stages
        outputs = torch.stack(self._tap.taken(names=self._outputs))  # M x B x C
        targets = self.label_matrix(batch)
        if targets is None:
            raise FewlabelError(f"phase '{self.phase}': {type(self).__name__} gives no labels for the geometry terms.")
        if targets.dim() == 1:
            targets = F.one_hot(targets, outputs.shape[-1])
        labelled = len(targets)
        if labelled < MIN_BATCH:
            return loss, logs
        terms = self.geometry
        if terms.smooth_weight > 0 and len(smoothed) >= 2:
            regularizer = smoothness_regularizer([s[:labelled] for s in smoothed], targets, terms.k, terms.power)
            loss = loss + terms.smooth_weight * regularizer
            logs = logs | {"smoothness_reg": regularizer.detach()}
        if terms.target_weight > 0:
            target = torch.stack([geometry_target_loss(o[:labelled], targets) for o in outputs]).mean()
            loss = loss + terms.target_weight * target
            logs = logs | {"geometry_loss": target.detach()}
        return loss, logs

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log_validation(*self.validation_loss(batch))

    def log_validation(self, loss: torch.Tensor, logs: dict, size: int) -> None:
        self.log_dict({"val_loss": loss, **logs}, on_step=False, on_epoch=True, batch_size=size)

    def current_param_groups(self) -> list[dict]:
        """The optimiser groups, each parameter looked up again by its name: a fit resumed from
        a checkpoint loads it before the optimiser is built, and some layers (Brevitas' learned
        scales) replace their Parameter objects on loading, which the optimiser must then train."""
        current = dict(self.named_parameters())
        return [
            g | {"params": [current.get(self._param_names.get(id(p), ""), p) for p in g["params"]]}
            for g in self.param_groups
        ]

    def configure_optimizers(self):
        groups = self.current_param_groups()
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.schedule == "onecycle" and total >= 4:  # fewer steps than 4 cannot rise and fall: cosine
            peaks = [g["lr"] for g in groups]
            pct = min(0.5, max(0.05, self.warmup_epochs / max(1, self.trainer.max_epochs)))
            pct = min(max(pct, 2 / total), 1 - 2 / total)  # each half at least 2 steps (OneCycleLR divides by them)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=pct)
        else:
            warmup = int(total * self.warmup_epochs / max(1, self.trainer.max_epochs))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, total, warmup, self.schedule.replace("onecycle", "cosine"))
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict, int]:
    """Cross-entropy and accuracy of B x C logits (or log-probabilities) against B labels."""
    loss = F.cross_entropy(logits.float(), labels)
    return loss, {"val_acc": (logits.argmax(-1) == labels).float().mean()}, len(labels)


class ClassifierModule(EngineModule):
    """Cross-entropy on hard labels, with optional label smoothing and class weights."""

    def __init__(
        self,
        net: nn.Module,
        param_groups: list[dict],
        optimizer: str = "adamw",
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(net, param_groups, optimizer, schedule, warmup_epochs)
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def training_loss(self, batch) -> tuple[torch.Tensor, dict, int]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing)
        return loss, {"train_acc": (logits.argmax(-1) == y).float().mean()}, len(y)

    def label_matrix(self, batch) -> torch.Tensor:
        return batch[1]

    def validation_step(self, batch, batch_idx: int) -> dict:
        """Logs the scores and returns the batch's ``logits`` (or log-probabilities) and
        ``labels``, which callbacks such as the information-plane tracker read."""
        x, y = batch
        logits = self(x)
        self.log_validation(*classification_scores(logits, y))
        return {"logits": logits.detach(), "labels": y}

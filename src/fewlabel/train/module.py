"""The Lightning module for supervised classification: loss, optimiser and schedule only.

It receives a plain ``nn.Module`` (a whole timm model, or just a head over cached features)
and the optimiser groups the strategy chose; phase changes live in callbacks.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewlabelError
from .functional import warmup_cosine


class NonFiniteLossError(FewlabelError):
    """The training loss became NaN or infinite."""


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        param_groups: list[dict],
        phase: str = "finetune",
        optimizer: str = "adamw",
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.param_groups = param_groups
        self.phase = phase
        self.optimizer_name = optimizer
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"Training loss became {loss.item()} in phase '{self.phase}' at epoch "
                f"{self.current_epoch}, step {self.global_step}; training stopped. The last good "
                "checkpoint (end of the previous epoch) is kept in checkpoints/last.ckpt; lower --lr."
            )
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_dict({"train_loss": loss, "train_acc": acc}, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_dict({"val_loss": loss, "val_acc": acc}, on_step=False, on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(self.param_groups, momentum=0.9, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(self.param_groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.schedule == "onecycle":
            peaks = [g["lr"] for g in self.param_groups]
            pct = min(0.5, max(0.05, self.warmup_epochs / max(1, self.trainer.max_epochs)))
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=pct)
        else:
            warmup = int(total * self.warmup_epochs / max(1, self.trainer.max_epochs))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, total, warmup, self.schedule)
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fewlabel_phase"] = self.phase

"""Fine-tuning strategies, each a plan of phases; looked up by name in one registry.

A phase either trains the head on cached backbone features (fast: the backbone runs once) or
trains the whole network on images, with some layers frozen and per-layer learning rates.
``FinetuneOptions`` is the config section of the ``finetune`` method, which runs these plans.
``auto`` (the default) is not a plan but a search over them within a time budget (see
:mod:`fewlabel.train.search`). This module stays light (no torch): the command line reads the
strategy names from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import did_you_mean
from ..options import MethodOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """One ``Trainer.fit``: what trains, for how long, at which learning rates."""

    name: str
    on_features: bool
    epochs: int
    lr: float
    layer_decay: float = 1.0
    coarse_groups: bool = False
    trainable_blocks: int | None = None  # None: all layers; N: the last N blocks and the head


_STRATEGIES: dict[str, Callable[[TrainConfig, int | None], list[Phase]]] = {}
_TAKES_NUMBER: set[str] = set()
AUTO = "auto"  # a search over the registered plans, not a plan itself
DEFAULT_BUDGET_MINUTES = 30.0  # a laptop's coffee break: enough for every candidate on a few hundred images


def register_strategy(name: str, takes_number: bool = False):
    """Register a phase plan under ``name``; with ``takes_number`` it is used as ``name:N``."""

    def decorate(fn: Callable[[TrainConfig, int | None], list[Phase]]):
        _STRATEGIES[name] = fn
        if takes_number:
            _TAKES_NUMBER.add(name)
        return fn

    return decorate


def list_strategies() -> list[str]:
    """Registered strategy names as a user types them (``partial:N`` for numbered ones)."""
    return [AUTO] + [f"{name}:N" if name in _TAKES_NUMBER else name for name in _STRATEGIES]


def parse_strategy(value: str) -> tuple[str, int | None]:
    """Split ``partial:2`` into ("partial", 2); raise ValueError naming the accepted forms."""
    name, _, number = value.partition(":")
    if value == AUTO:
        return AUTO, None
    if name in _STRATEGIES and (name in _TAKES_NUMBER) == bool(number) and (not number or number.isdigit()):
        return name, int(number) if number else None
    accepted = list_strategies()
    raise ValueError(f"unknown strategy '{value}'; accepted: {', '.join(accepted)}.{did_you_mean(value, accepted)}")


class FinetuneOptions(MethodOptions):
    """Supervised fine-tuning of the labelled images, phase by phase as the strategy plans."""

    name: Literal["finetune"] = "finetune"
    strategy: str = Field(
        AUTO,
        description="auto (try linear-probe, freeze-unfreeze and partial:N within --budget-minutes, keep the best "
        "on validation) | linear-probe | freeze-unfreeze | full | layer-decay | partial:N",
    )
    budget_minutes: float | None = Field(
        None, gt=0, description=f"time for --strategy auto's candidates (default {DEFAULT_BUDGET_MINUTES:g})"
    )
    gentle_candidates: Literal["when-needed", "always"] | None = Field(
        None,
        description="--strategy auto: when to try the gentler candidates (freeze-unfreeze at lr/3, partial:N): "
        "when-needed (default: only when freeze-unfreeze at lr did not clearly beat its linear probe) | always",
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        parse_strategy(value)
        return value

    @model_validator(mode="after")
    def _budget_for_auto(self) -> FinetuneOptions:
        for name in ("budget_minutes", "gentle_candidates"):
            if getattr(self, name) is not None and self.strategy != AUTO:
                raise ValueError(f"{name}: only --strategy auto uses it (the strategy is '{self.strategy}')")
        return self

    @property
    def needs_validation(self) -> bool:
        """``auto`` chooses on validation, so a run without a val split holds one out."""
        return self.strategy == AUTO


def plan_phases(cfg: TrainConfig, strategy: str | None = None) -> list[Phase]:
    """The phases of ``strategy`` (default: the config's; not ``auto``, which searches)."""
    name, number = parse_strategy(strategy or cfg.method.strategy)
    if name == AUTO:
        raise ValueError("strategy auto is a search, not a plan of phases")
    return _STRATEGIES[name](cfg, number)


@register_strategy("linear-probe")
def linear_probe(cfg: TrainConfig, _: int | None) -> list[Phase]:
    """Frozen backbone; the head trains on features computed once (``epochs`` head epochs)."""
    return [Phase("head", True, cfg.epochs, cfg.head_lr)]


@register_strategy("freeze-unfreeze")
def freeze_unfreeze(cfg: TrainConfig, _: int | None) -> list[Phase]:
    """Head first on cached features, then every layer with discriminative learning rates:
    each stage (timm's coarse groups) below the top trains ``layer_decay`` times slower."""
    return [
        Phase("head", True, cfg.head_epochs, cfg.head_lr),
        Phase("finetune", False, cfg.epochs, cfg.lr, cfg.layer_decay, coarse_groups=True),
    ]


@register_strategy("full")
def full(cfg: TrainConfig, _: int | None) -> list[Phase]:
    """Every layer at one learning rate."""
    return [Phase("finetune", False, cfg.epochs, cfg.lr)]


@register_strategy("layer-decay")
def layer_decay(cfg: TrainConfig, _: int | None) -> list[Phase]:
    """Layer-wise learning-rate decay over blocks (timm's fine groups), ``layer_decay`` per block."""
    return [Phase("finetune", False, cfg.epochs, cfg.lr, cfg.layer_decay, coarse_groups=False)]


@register_strategy("partial", takes_number=True)
def partial(cfg: TrainConfig, blocks: int | None) -> list[Phase]:
    """``partial:N``: only the last N blocks and the head train; the rest stays frozen."""
    return [Phase("finetune", False, cfg.epochs, cfg.lr, trainable_blocks=blocks)]

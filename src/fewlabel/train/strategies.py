"""Fine-tuning strategies, each a plan of phases; looked up by name in one registry.

A phase either trains the head on cached backbone features (fast: the backbone runs once) or
trains the whole network on images, with some layers frozen and per-layer learning rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import TrainConfig
from ..errors import unknown_choice


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


_STRATEGIES: dict[str, Callable[[TrainConfig], list[Phase]]] = {}


def register_strategy(name: str):
    def decorate(fn: Callable[[TrainConfig], list[Phase]]):
        _STRATEGIES[name] = fn
        return fn

    return decorate


def list_strategies() -> list[str]:
    return list(_STRATEGIES)


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    name = "partial" if cfg.partial_blocks is not None else cfg.strategy
    if name not in _STRATEGIES:
        raise unknown_choice("strategy", cfg.strategy, _STRATEGIES)
    return _STRATEGIES[name](cfg)


@register_strategy("linear-probe")
def linear_probe(cfg: TrainConfig) -> list[Phase]:
    """Frozen backbone; the head trains on features computed once (``epochs`` head epochs)."""
    return [Phase("head", True, cfg.epochs, cfg.head_lr)]


@register_strategy("freeze-unfreeze")
def freeze_unfreeze(cfg: TrainConfig) -> list[Phase]:
    """Head first on cached features, then every layer with discriminative learning rates:
    each stage (timm's coarse groups) below the top trains ``layer_decay`` times slower."""
    return [
        Phase("head", True, cfg.head_epochs, cfg.head_lr),
        Phase("finetune", False, cfg.epochs, cfg.lr, cfg.layer_decay, coarse_groups=True),
    ]


@register_strategy("full")
def full(cfg: TrainConfig) -> list[Phase]:
    """Every layer at one learning rate."""
    return [Phase("finetune", False, cfg.epochs, cfg.lr)]


@register_strategy("layer-decay")
def layer_decay(cfg: TrainConfig) -> list[Phase]:
    """Layer-wise learning-rate decay over blocks (timm's fine groups), ``layer_decay`` per block."""
    return [Phase("finetune", False, cfg.epochs, cfg.lr, cfg.layer_decay, coarse_groups=False)]


@register_strategy("partial")
def partial(cfg: TrainConfig) -> list[Phase]:
    """``partial:N``: only the last N blocks and the head train; the rest stays frozen."""
    return [Phase("finetune", False, cfg.epochs, cfg.lr, trainable_blocks=cfg.partial_blocks)]

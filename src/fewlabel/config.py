"""Validated training configuration: YAML in, one-line errors naming the bad key out.

Precedence: command-line flags, then the ``--config`` file, then these defaults. The resolved
config is written to ``runs/<name>/config.yaml`` and re-runs the same training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import FewlabelError


class SemiOptions(BaseModel):
    """Parameters of the semi-supervised methods (``method``); the choices are explained in
    fewlabel.semi.trinet and fewlabel.semi.methods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool_size: int | None = Field(None, ge=1, description="seeded random subset of the unlabeled pool")
    rounds: int = Field(4, ge=0, description="self-training rounds (pseudo-label, trinet)")
    round_epochs: int = Field(2, ge=1, description="epochs over labelled + pseudo-labelled data per round")
    sample_first: int = Field(1000, ge=1, description="pool images examined in the first round")
    sample_growth: float = Field(2.0, ge=1.0, description="factor on the examined pool images per round")
    threshold_start: float = Field(0.8, gt=0, lt=1, description="tri-net: agreement confidence, first round")
    threshold_step: float = Field(0.025, ge=0, description="tri-net: threshold decrease per round")
    threshold_min: float = Field(0.7, gt=0, lt=1, description="tri-net: lowest threshold")
    pl_threshold: float = Field(0.95, gt=0, lt=1, description="pseudo-label: confidence threshold")
    smear_std: float = Field(0.05, ge=0, description="tri-net output smearing: std of the label noise")
    edit_passes: int = Field(5, ge=0, description="tri-net editing: dropout passes (0: no editing)")
    edit_min_agreement: float = Field(0.8, gt=0, le=1, description="tri-net editing: share of passes to agree")
    diversity_every: int = Field(2, ge=0, description="tri-net: fine-tune on smeared labels every N rounds (0: never)")
    diversity_epochs: int = Field(1, ge=1)
    module_stages: int = Field(
        1, ge=0, description="tri-net: last backbone stages each module owns a copy of (0: MLP modules only)"
    )
    head_hidden: int = Field(256, ge=1, description="tri-net: hidden width of each module")
    head_dropout: float = Field(0.3, ge=0, lt=1, description="tri-net: dropout of each module")
    probe_size: int = Field(
        2000, ge=0, description="without a validation set: evaluation images scored per round in audit mode"
    )
    fixmatch_mu: int = Field(3, ge=1, description="FixMatch: unlabeled batches per labelled batch")
    fixmatch_threshold: float = Field(0.95, gt=0, lt=1)
    fixmatch_lambda: float = Field(1.0, ge=0, description="FixMatch: weight of the unlabeled loss")


class TrainConfig(BaseModel):
    """Everything that decides a training run (not where it is written)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(description="DATA spec: folder, CSV or built-in name, optional :split")
    eval_data: str | None = Field(
        None, description="data for final metrics; default DATA's test split, else validation"
    )
    model: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    strategy: str = "freeze-unfreeze"
    head: Literal["auto", "keep", "new"] = Field(
        "auto",
        description="with weights from a fewlabel run: keep its head when the class set is the same (auto), "
        "always (keep; refused if the classes changed) or never (new)",
    )
    epochs: int = Field(10, ge=0, description="epochs of the main phase (of the head for linear-probe)")
    head_epochs: int = Field(30, ge=0, description="epochs of the head on cached features (freeze-unfreeze)")
    img_size: int = Field(224, ge=8)
    labels_per_class: int | None = Field(None, ge=1)
    val_split: float | None = Field(None, ge=0.0, lt=1.0)
    seed: int = 0
    seeds: list[int] | None = None
    batch_size: int = Field(32, ge=1)
    # 3e-4: on Fashion-MNIST with 10 labels per class (EfficientNet-Lite0, 64 px, seed 0, scored
    # on 1,000 training-set images outside the labelled draw) freeze-unfreeze reached 68.1% at
    # 1e-4, 70.9% at 3e-4 and 47.7% at 1e-3, where whole-network AdamW steps wreck the features.
    lr: float = Field(3e-4, gt=0, description="peak learning rate of the top layers (AdamW)")
    head_lr: float = Field(1e-2, gt=0, description="learning rate of the head on cached features")
    weight_decay: float = Field(1e-2, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    layer_decay: float = Field(0.7, gt=0, le=1, description="learning-rate factor per layer group, top to bottom")
    dropout: float = Field(0.2, ge=0, lt=1)
    augment: Literal["none", "light", "standard", "randaugment"] = "light"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    imbalance: Literal["none", "class-weights", "balanced-sampler"] = "none"
    freeze_bn: Literal["auto", "yes", "no"] = Field(
        "auto", description="keep BatchNorm statistics fixed; auto = yes for pretrained weights"
    )
    early_stopping: int | None = Field(None, ge=1, description="patience in epochs on validation loss")
    accelerator: str = "auto"
    devices: str = Field("1", description="devices (processes) per machine")
    num_nodes: int = Field(1, ge=1, description="machines; launch with torchrun or srun")
    distributed: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, ...")
    precision: str = Field("auto", description="auto = 16-mixed on CUDA, else 32-true")
    workers: int = Field(0, ge=0)
    logger: Literal["csv", "tensorboard", "mlflow"] = "csv"
    mlflow_uri: str | None = Field(None, description="MLflow store; default sqlite:///<runs folder>/mlflow.db")
    strict: bool = False
    method: Literal["supervised", "pseudo-label", "fixmatch", "trinet"] | None = Field(
        None, description="semi-supervised method (fewlabel semi); none: plain fine-tuning by strategy"
    )
    unlabeled: str | None = Field(None, description="unlabeled pool; default the unlabeled rest of DATA's train split")
    allow_overlap: bool = Field(False, description="accept a pool holding evaluation images")
    audit_pseudo_labels: bool = Field(False, description="score pseudo-labels against hidden pool labels")
    semi: SemiOptions = Field(default_factory=SemiOptions)
    feature_cache: Literal["memory", "disk", "off"] = "disk"
    progress: bool = True

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from .train.strategies import parse_strategy  # the registry imports this module

        parse_strategy(value)
        return value

    @field_validator("mlflow_uri")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("sqlite:///", "file:", "http://", "https://", "/")):
            return value
        raise ValueError("not accepted: use sqlite:///path/to/mlflow.db, a file: URI or a server URL")

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    def to_yaml_dict(self) -> dict:
        return self.model_dump(mode="json")


def config_keys(loc: tuple) -> list[str]:
    """The keys accepted at ``loc`` of a TrainConfig: its own, or the ``semi`` section's."""
    return list(SemiOptions.model_fields if "semi" in loc else TrainConfig.model_fields)


def format_validation_error(
    exc: ValidationError, origin: str, accepted: Callable[[tuple], Iterable[str]] | None = None
) -> str:
    """One line per problem: ``origin: key.path: message (got value)``; an unknown key's line
    lists ``accepted(loc)`` (by default TrainConfig's keys)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            keys = (accepted or config_keys)(err["loc"])
            message = f"unknown key; accepted keys: {', '.join(keys)}"
        got = f" (got {err['input']!r})" if err["type"] != "missing" and "input" in err else ""
        lines.append(f"{origin}: {key}: {message}{got}")
    return "\n".join(lines)


def make_config(values: dict, origin: str = "config") -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise FewlabelError(format_validation_error(exc, origin)) from None


def read_config_file(path: str | Path) -> dict:
    """Read a YAML mapping, with clear errors for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise FewlabelError(f"Config file '{path}' not found.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise FewlabelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(values, dict):
        raise FewlabelError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}.")
    return values


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Config file values, overridden by the explicitly given ``overrides``."""
    values = merge_options(read_config_file(path), overrides or {})
    return make_config(values, str(path))


def merge_options(base: dict, overrides: dict) -> dict:
    """``overrides`` (None values skipped) over ``base``; a section such as ``semi`` is merged
    key by key, so ``--rounds 8`` keeps the config file's other ``semi`` settings."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merged[key] | value
        merged[key] = value
    return merged

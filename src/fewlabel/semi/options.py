"""Config sections of the semi-supervised methods (one per method, ``name`` the discriminator).

The choices behind the defaults are explained where they act: :mod:`fewlabel.semi.trinet` for
tri-net, :mod:`fewlabel.semi.loop` for the shared budget. Light: no torch here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..options import MethodOptions, PoolDraw

# Option values of each protocol; an option set explicitly keeps its value. "cpu" is the budget
# a 2-core CPU trains in minutes (the options' own defaults); "paper" is Chen et al. 2018's
# schedule: pool sample 1000 x 2^t up to the whole pool, at least 12 rounds, editing by the
# one-third rule with dropout inside the module stages, diversity fine-tuning once the sample
# covers the pool, thresholds chosen on the validation split.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": {
        "rounds": 12,
        "round_epochs": 2,
        "sample_first": 1000,
        "sample_growth": 2.0,
        "threshold_mode": "validation",
        "edit_passes": 6,
        "edit_min_agreement": 2 / 3,
        "stage_dropout": 0.1,
        "diversity_start": "full-pool",
        "diversity_every": 1,
    },
}


class SemiOptions(MethodOptions):
    """The budget every semi-supervised method and its supervised baseline share: after the
    initial fit, ``rounds`` x ``round_epochs`` more epochs. ``protocol`` sets the defaults of
    several options at once (:data:`PROTOCOLS`); ``auto`` (resolved when the config is made)
    is ``paper`` when training on a GPU and ``cpu`` otherwise."""

    protocol: Literal["auto", "paper", "cpu"] = Field(
        "auto", description="option defaults: paper (Chen et al. 2018's schedule), cpu (minutes on a CPU), auto"
    )

    rounds: int = Field(
        4, ge=0, description="self-training rounds (fixmatch, supervised: rounds x round-epochs epochs)"
    )
    round_epochs: int = Field(2, ge=1, description="epochs per round")
    audit: bool = Field(
        False,
        description="benchmark mode: score pseudo-labels against the pool's hidden labels and, without a "
        "validation set, every round on a seeded draw of probe-size evaluation images",
    )
    probe_size: int = Field(2000, ge=0, description="audit mode without a validation set: images scored per round")

    @model_validator(mode="before")
    @classmethod
    def _protocol_defaults(cls, values: Any) -> Any:
        """Fill the options not given from the protocol's values (those this method has)."""
        if not isinstance(values, dict) or values.get("protocol") not in PROTOCOLS:
            return values
        preset = {k: v for k, v in PROTOCOLS[values["protocol"]].items() if k in cls.model_fields}
        return preset | values


class PoolOptions(SemiOptions, PoolDraw):
    """Methods that learn from an unlabeled pool."""

    unlabeled: str | None = Field(
        None,
        description="pool: folder of images, CSV of paths, DATA, or rest (the default): the unlabeled rest of DATA's "
        "train split",
    )

    @property
    def wants_rest_pool(self) -> bool:
        return self.unlabeled in (None, "rest")


class SupervisedOptions(SemiOptions):
    """The labelled images alone, on the same budget as the semi-supervised methods."""

    name: Literal["supervised"] = "supervised"


class SelfTrainingOptions(PoolOptions):
    """Rounds that label a growing sample of the pool and train on it."""

    sample_first: int = Field(1000, ge=1, description="pool images examined in the first round")
    sample_growth: float = Field(2.0, ge=1.0, description="factor on the examined pool images per round")


class PseudoLabelOptions(SelfTrainingOptions):
    """Self-training: confident predictions on pool images become labels (Lee 2013)."""

    name: Literal["pseudo-label"] = "pseudo-label"
    threshold: float = Field(0.95, gt=0, lt=1, description="pseudo-label, fixmatch: confidence threshold")


class FixMatchOptions(PoolOptions):
    """Sohn et al. 2020: weak/strong augmentation consistency on unlabeled images."""

    name: Literal["fixmatch"] = "fixmatch"
    threshold: float = Field(0.95, gt=0, lt=1, description="pseudo-label, fixmatch: confidence threshold")
    mu: int = Field(3, ge=1, description="fixmatch: unlabeled batches per labelled batch")
    unlabeled_weight: float = Field(1.0, ge=0, description="fixmatch: weight of the unlabeled loss")


class TriNetOptions(SelfTrainingOptions):
    """Chen et al. 2018: three modules on a shared trunk teach each other."""

    name: Literal["trinet"] = "trinet"
    threshold_start: float = Field(0.8, gt=0, lt=1, description="trinet: agreement confidence, first round")
    threshold_step: float = Field(0.025, ge=0, description="trinet: threshold decrease per round")
    threshold_min: float = Field(0.7, gt=0, lt=1, description="trinet: lowest threshold")
    smear_std: float = Field(0.05, ge=0, description="trinet output smearing: std of the label noise")
    edit_passes: int = Field(5, ge=0, description="trinet editing: dropout passes (0: no editing)")
    edit_min_agreement: float = Field(0.8, gt=0, le=1, description="trinet editing: share of passes that must agree")
    diversity_every: int = Field(2, ge=0, description="trinet: fine-tune on smeared labels every N rounds (0: never)")
    diversity_start: Literal["second-round", "full-pool"] = Field(
        "second-round",
        description="trinet: diversity fine-tuning from the second round, or from when the sample is the whole pool",
    )
    threshold_mode: Literal["schedule", "validation"] = Field(
        "schedule",
        description="trinet: agreement threshold from the start/step/min schedule, or chosen each round on the "
        "validation split (lowest whose pseudo-labels reach target-precision there)",
    )
    target_precision: float = Field(
        0.95, gt=0, le=1, description="trinet, threshold-mode validation: pseudo-label precision to reach"
    )
    stage_dropout: float = Field(
        0.0, ge=0, lt=1, description="trinet: dropout before each stage a module owns (editing passes use it too)"
    )
    diversity_epochs: int = Field(1, ge=1, description="trinet: epochs of each diversity fine-tuning")
    module_stages: int = Field(
        1, ge=0, description="trinet: last backbone stages each module owns a copy of (0: MLP modules only)"
    )
    head_hidden: int = Field(256, ge=1, description="trinet: hidden width of each module's MLP")
    head_dropout: float = Field(0.3, ge=0, lt=1, description="trinet: dropout of each module's MLP")

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> TriNetOptions:
        if self.threshold_min > self.threshold_start:
            raise ValueError(
                f"threshold_min {self.threshold_min} is above threshold_start {self.threshold_start}; "
                "the threshold falls from start to min"
            )
        return self

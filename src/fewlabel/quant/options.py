"""The ``qat`` method's config section. Light: no torch here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..options import MethodOptions

SCHEDULES = ("direct", "progressive", "hlhl")


class QatOptions(MethodOptions):
    """Quantization-aware training of a trained float run (``pretrained``: its weights; a recipe
    stage starts from the previous stage) at ``weight_bits`` / ``act_bits``, by ``schedule``
    (see :mod:`fewlabel.quant.schedule`), over the run's ``epochs`` in all."""

    name: Literal["qat"] = "qat"
    weight_bits: int = Field(8, ge=2, le=16, description="bits of the inner layers' weights (2-16)")
    act_bits: int = Field(8, ge=2, le=16, description="bits of the inner layers' input activations (2-16)")
    first_last_bits: int = Field(8, ge=2, le=16, description="bits of the first and last layers' weights and inputs")
    qat_schedule: Literal["direct", "progressive", "hlhl"] = Field(
        "direct",
        description="direct: at the target precision; progressive: 8, 4, ... down to it; hlhl: high, low, high, "
        "low precision (Shin et al. 2020), the learning rate reset at each high stage and dropped at each low one",
    )
    high_bits: int = Field(8, ge=2, le=16, description="hlhl: the high precision (weights and activations)")
    stage_epochs: str | None = Field(
        None, description="epochs of each stage, e.g. 3,3,2,2 (must sum to --epochs); default an even split"
    )
    low_lr_factor: float = Field(
        0.1,
        gt=0,
        le=100,
        description="hlhl: learning rate of the low stages, times --lr (above 1: coarse tuning at low precision)",
    )
    calibration_images: int = Field(
        256, ge=1, description="labelled images (un-augmented) that initialise the activation scales at each stage"
    )

    @field_validator("stage_epochs")
    @classmethod
    def _epochs_list(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = [p.strip() for p in str(value).split(",")]
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"'{value}' is not a list of positive whole numbers of epochs, e.g. 3,3,2,2")
        return ",".join(parts)

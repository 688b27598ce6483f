"""The nuclei task's options (the ``task_options`` section of a config): targets, loss,
crops, detection and matching. Plain pydantic, so the command line validates them without
importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STYLE_NAMES = ("breast-he", "lymph-he", "ihc-dab")  # the synthetic styles (fewlabel.nuclei.synth.STYLES)
TRAIN_DEFAULTS = {"strategy": "full", "img_size": 128, "lr": 1e-3}  # fewlabel nuclei train without --config


class NucleiOptions(BaseModel):
    """What the nuclei task needs beyond the common training options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proximity_radius: float = Field(6.0, gt=0, description="pixels over which the target decays to 0 (r)")
    proximity_form: Literal["inverse", "exponential"] = Field("inverse", description="1/(1+alpha D) or exponential")
    alpha: float | None = Field(None, gt=0, description="decay of the proximity map (default: inverse 0.8, exp 3)")
    center_weight: float = Field(
        4.0, ge=0, description="loss weight 1 + w*M(x): pixels near centres count more than background"
    )
    crops_per_image: int = Field(4, ge=1, description="random training crops per image per epoch")
    stain_jitter: float = Field(0.1, ge=0, lt=1, description="strength of the H-E-DAB stain and brightness jitter")
    images: int | None = Field(None, ge=1, description="labelled training images drawn (seeded); default all")
    min_distance: int = Field(3, ge=1, description="least distance in pixels between two detections")
    match_radius: float = Field(6.0, gt=0, description="a detection matches a true centre within this distance")
    stages: int = Field(4, ge=2, le=5, description="encoder stages the decoder uses (4: strides 2 to 16)")
    decoder_width: int = Field(32, ge=4, description="channels of the decoder's convolutions")
    tile: int = Field(384, ge=32, description="inference tile side for large images")
    overlap: int = Field(64, ge=0, description="pixels shared by neighbouring inference tiles")

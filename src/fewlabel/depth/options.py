"""The depth task's options (the ``task_options`` section of a config): loss, augmentation,
depth files and the network. Plain pydantic, so the command line validates them without
importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RENDER_STYLES = ("synthetic", "cinematic")  # fewlabel depth render --style (the renderer's styles)
RENDER_OUTSIDE = ("all", "anatomy", "lighting")  # --outside: which parameters held-out renders draw outside
TRAIN_DEFAULTS = {"strategy": "full", "img_size": 128, "lr": 1e-3}  # fewlabel depth train without --config


UNTRAINED_SYMMETRIES = (  # refused at training (these options) and at eval or predict (the predictor)
    "test_symmetries: averaging over the square's 8 symmetries needs a network trained on them (symmetries true; "
    "a scene with an up has none to average); leave --test-symmetries out"
)


class DepthOptions(BaseModel):
    """What the depth task needs beyond the common training options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth_loss: Literal["silog", "l1"] = Field(
        "silog", description="scale-invariant log loss (Eigen et al. 2014) or L1 on depth in its units"
    )
    si_lambda: float = Field(
        0.5, ge=0, le=1, description="silog: weight of the scale-invariant term (1: scale ignored)"
    )
    images: int | None = Field(None, ge=1, description="labelled training images drawn (seeded); default all")
    rehearse: str | None = Field(
        None,
        description="depth DATA whose images join the training split (rehearsal: e.g. the parent's synthetic "
        "renders while fine-tuning on a few cinematic ones); validation and scoring stay DATA's",
    )
    rehearse_images: int | None = Field(
        None,
        ge=1,
        description="images drawn (seeded) from --rehearse, once or (rehearse_each_epoch) per epoch; default as many "
        "as DATA trains on",
    )
    rehearse_each_epoch: bool = Field(
        False,
        description="draw the --rehearse images anew each epoch (seeded) from the whole of --rehearse instead of once: "
        "as many per epoch, more of the set seen over the epochs",
    )
    symmetries: bool = Field(True, description="train on the square's 8 symmetries (valid when the scene has no up)")
    test_symmetries: bool = Field(
        False,
        description="evaluate and predict on the 8 symmetries of each image and average their log depths (test-time "
        "augmentation: 8 times the inference cost); needs symmetries",
    )
    colour_jitter: float = Field(0.1, ge=0, lt=1, description="strength of the brightness, contrast and colour jitter")
    units: str = Field("mm", description="the unit of the depth files (recorded in the model card)")
    png_scale: float = Field(0.01, gt=0, description="depth units per count of a 16-bit depth PNG")
    max_depth: float | None = Field(None, gt=0, description="depths beyond are not scored or trained on (default all)")
    stages: int = Field(4, ge=2, le=5, description="encoder stages the decoder uses (4: strides 2 to 16)")
    decoder_width: int = Field(32, ge=4, description="channels of the decoder's convolutions")

    @model_validator(mode="after")
    def _consistent(self) -> DepthOptions:
        if self.rehearse_each_epoch and self.rehearse is None:
            raise ValueError("rehearse_each_epoch: draws from --rehearse DATA each epoch; give --rehearse too")
        if self.test_symmetries and not self.symmetries:
            raise ValueError(UNTRAINED_SYMMETRIES)
        return self

"""The ``distill`` method's config section. Light: no torch here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..options import PoolDraw


class DistillOptions(PoolDraw):
    """What the student learns from the teacher, and on which images. Which terms are used is
    the common ``loss`` option (``lgg``, ``kd``, ``rkd``, joined by '+'; ``ce`` alone: the
    student on the labelled images with the same schedule, the baseline)."""

    name: Literal["distill"] = "distill"
    teacher: str | None = Field(
        None, description="teacher: a fewlabel run directory (in a recipe: an earlier stage; default the previous one)"
    )
    unlabeled: str | None = Field(
        None,
        description="images the student learns from the teacher on besides the labelled ones: folder, CSV, DATA, "
        "or rest (the unlabeled rest of DATA's train split); default none",
    )
    mu: int = Field(3, ge=1, description="un-augmented distillation images per labelled image in a step")
    graph_weight: float = Field(
        2.5,
        ge=0,
        description="lambda of the LGG distillation term; Lassance et al. used 25 (WideResNets on CIFAR-10), "
        "which cost a student from scratch 3 points on a small colour set where 2.5 did not (bench/distill.py)",
    )
    kd_weight: float = Field(1.0, ge=0, description="weight of the KD term")
    temperature: float = Field(4.0, gt=0, description="KD temperature")
    rkd_weight: float = Field(25.0, ge=0, description="weight of the RKD distance term (Park et al.: 25)")
    layers: str | None = Field(
        None, description="LGG layer pairs TEACHER:STUDENT,... (module names); default by relative depth"
    )
    graph_layers: int = Field(3, ge=1, description="LGG: the student's last N stages, paired by relative depth")
    graph_side: int | None = Field(
        8, ge=1, description="LGG: feature maps wider than this are average-pooled to it before flattening"
    )
    graph_embedding: bool = Field(
        True,
        description="LGG: pair the pooled embeddings too, besides the stage pairs (one more graph, the layer "
        "nearest the classes); Lassance et al. pair the residual groups' outputs only (--no-graph-embedding). "
        "It made a student from scratch 1.2 points better than alone on Fashion-MNIST at every seed (bench/distill.py)",
    )
    graph_logits: bool = Field(
        False,
        description="LGG: pair the outputs (class scores) too, the last graph: images the teacher scores alike "
        "are pulled together in the student's outputs (not in the paper, which pairs hidden layers only)",
    )

    @property
    def wants_rest_pool(self) -> bool:
        return self.unlabeled == "rest"

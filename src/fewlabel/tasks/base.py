"""The task interface: what a run learns to predict, from data loading to the report.

A task knows its data (loading images with their targets, keeping them aligned), its
transforms (applied jointly to image and target), its network (built from a timm encoder, and
rebuilt from model.json), its training module (the loss), its metrics, its predictor, its
predictions file and its report sections. A method (fine-tuning, tri-net, ...) drives the
fits through the engine and asks the task for these pieces, so one method serves every task
it supports and one task every method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import FewlabelError

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..models import BackboneInfo, ModelCard
    from ..train.engine import Engine
    from ..train.module import EngineModule
    from ..train.strategies import Phase


@dataclass
class DataBundle:
    """The splits of one run: labelled training data, validation, final evaluation, and the
    unlabeled rest of the training split. What each split holds is the task's business (an
    ImageSet for classification); each has ``ids`` and a length."""

    train: Any
    val: Any | None
    eval: Any
    eval_name: str
    unlabeled_ids: list[str] = field(default_factory=list)
    unlabeled: Any | None = None  # the images of unlabeled_ids, kept for semi-supervised methods
    val_held_out: bool = False  # val was held out of the labelled images (a refit may take it back)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


@dataclass
class RunContext:
    """What a method's ``train`` function gets: the config, the seed, where the run is written,
    its data, its task, and the engine that runs its fits."""

    cfg: TrainConfig
    seed: int
    run_dir: Path
    data: DataBundle
    task: Task
    engine: Engine


def evaluation_split(cfg: TrainConfig, val: Any, load: Callable[[str], Any]) -> tuple[Any, str]:
    """A dense task's evaluation split and its name: ``eval_data`` when given, else DATA's
    ``test/`` folder, else the validation split (``load`` reads a DATA spec)."""
    from ..data.sources import has_split

    if cfg.eval_data:
        return load(cfg.eval_data), cfg.eval_data
    if ":" not in cfg.data and has_split(cfg.data, "test"):
        return load(f"{cfg.data}:test"), "test"
    if val is None:
        raise FewlabelError(
            f"DATA '{cfg.data}': nothing to evaluate on (no test/ or val/ folder, too few images to hold some out); "
            "give --eval-data."
        )
    return val, "val"


class Task(ABC):
    """One kind of prediction. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the metric the CLI and the report lead with
    metric_keys: ClassVar[tuple[str, ...]]  # the metrics the CLI and the report tabulate
    higher_is_better: ClassVar[bool] = True
    has_feature_head: ClassVar[bool] = False  # a head that can train alone on cached features
    can_refit: ClassVar[bool] = True  # False: the validation images decide something after training
    monitor: ClassVar[tuple[str, bool]] = ("val_loss", False)  # the validation score a run keeps the best of,
    # and whether higher is better

    @abstractmethod
    def prepare_data(self, cfg: TrainConfig, seed: int) -> DataBundle:
        """Load DATA's splits and draw the labelled subset and the validation split (seeded)."""

    def splits_record(self, data: DataBundle, seed: int) -> dict:
        """What splits.json holds: the ids of each split."""
        return {
            "seed": seed,
            "labeled": list(data.train.ids),
            "val": list(data.val.ids) if data.val is not None else [],
            "unlabeled": data.unlabeled_ids,
        }

    @abstractmethod
    def build_model(self, cfg: TrainConfig, data: DataBundle) -> tuple[nn.Module, BackboneInfo]:
        """The network to train, from a timm backbone or encoder with ``cfg.pretrained`` weights."""

    @abstractmethod
    def rebuild_model(self, card: ModelCard) -> nn.Module:
        """The untrained network model.json describes (its weights are loaded after)."""

    @abstractmethod
    def dataset(self, split: Any, info: BackboneInfo, cfg: TrainConfig, train: bool, seed: int) -> Dataset:
        """A split as a dataset of (image, target), transformed jointly; augmented when ``train``."""

    def resolve_augment(self, cfg: TrainConfig, data: DataBundle, engine: Engine) -> tuple[TrainConfig, dict | None]:
        """The config with ``augment: auto`` decided for this data, and the decision's record
        (None when nothing was decided). A task without its own rule takes ``light``."""
        if cfg.augment != "auto":
            return cfg, None
        return cfg.model_copy(update={"augment": "light"}), {"augment": "light", "vflip": cfg.vflip}

    def selection_margin(self, score: float, images: int) -> float:
        """How far apart two validation scores (``monitor``) on ``images`` images must be to
        count as different rather than noise (0: any difference counts)."""
        return 0.0

    def refit_data(self, data: DataBundle) -> DataBundle:
        """The splits of a refit: training = the labelled images and the validation held out of
        them, no validation, the same evaluation."""
        raise FewlabelError(f"task '{self.name}' cannot join its validation images back into training (--refit).")

    def sampler_labels(self, split: Any) -> torch.Tensor:
        """Labels the training sampler shuffles (and balances) by; none for a dense task."""
        return torch.zeros(len(split), dtype=torch.long)

    @abstractmethod
    def module(self, net: nn.Module, param_groups: list[dict], cfg: TrainConfig, data: DataBundle) -> EngineModule:
        """The Lightning module that trains ``net`` on this task's targets."""

    def head_fit(self, model: nn.Module, info: BackboneInfo, cfg: TrainConfig, data: DataBundle, engine: Engine):
        """(net, datamodule) of the head alone over cached backbone features (a strategy's
        first phase), for a task that ``has_feature_head``."""
        raise NotImplementedError

    def check_phases(self, phases: list[Phase], strategy: str) -> None:
        """Refuse, before any training, a strategy whose phases this task cannot run."""
        if any(p.on_features for p in phases) and not self.has_feature_head:
            raise FewlabelError(
                f"--strategy {strategy} trains a head on cached features, which task '{self.name}' does not have; "
                "use full, layer-decay or partial:N."
            )

    def fitted_settings(self, model: nn.Module, info: BackboneInfo, cfg: TrainConfig, data: DataBundle) -> dict:
        """Settings decided with the trained network on the validation images, stored in
        model.json's extras (nuclei: the detection threshold); none by default."""
        return {}

    @abstractmethod
    def card_fields(self, cfg: TrainConfig, data: DataBundle, info: BackboneInfo) -> dict:
        """ModelCard fields of a trained model (class or output names, size, mean/std, extras)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, card: ModelCard, split: Any, progress: bool = False) -> tuple[dict, Any]:
        """(metrics, predictions) of a trained model on a split (the run's evaluation split, or
        data loaded by :meth:`load_split`)."""

    def robustness(self, model: nn.Module, card: ModelCard, split: Any, cfg: TrainConfig, seed: int) -> dict | None:
        """Scores of the trained model under perturbed inputs (robustness.json; None: this task
        measures none)."""
        return None

    @abstractmethod
    def load_split(self, spec: str, card: ModelCard, strict: bool = False) -> Any:
        """DATA loaded for a trained model (``fewlabel eval``): preprocessed as it was trained,
        its targets checked against the model's (e.g. no class the model does not know)."""

    @abstractmethod
    def write_predictions(self, run_dir: Path, predictions: Any) -> None:
        """Write the predictions file of the run (rank 0 only)."""

    @abstractmethod
    def predictor(self, model: nn.Module, card: ModelCard, device: str | None = None) -> Any:
        """An object that predicts on new images with the model's preprocessing."""

    def aggregate(self, per_seed: dict[int, dict]) -> dict:
        """metrics.json of a multi-seed run: mean, sd and 95% interval of every number."""
        from ..evaluate.metrics import aggregate_numbers

        return aggregate_numbers(per_seed)

    def data_summary(self, data: DataBundle) -> dict:
        """Sizes of the splits (splits.json and the report)."""
        sizes = {"train": len(data.train), "val": len(data.val) if data.val is not None else 0, "eval": len(data.eval)}
        return sizes | {"unlabeled_pool": len(data.unlabeled_ids)}

    def learning_warnings(self, metrics: dict, model: nn.Module, cfg: TrainConfig) -> list[str]:
        """Warnings that the run learned nothing or could not (shown by the CLI and the report)."""
        from ..evaluate.notices import feature_map_warning
        from ..models.backbones import final_map_side

        return feature_map_warning(final_map_side(model, cfg.img_size), cfg.img_size)

    def report_sections(self, run_dir: Path, metrics: dict) -> list[str]:
        """HTML sections of report.html that belong to this task."""
        return []

"""The engineering around the module: data preparation, phases run by a Lightning Trainer,
feature caching, resume and timing. The research code stays in module.py and functional.py."""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import TensorDataset

from ..config import TrainConfig
from ..data.datamodule import ClassificationDataModule, TransformedImages
from ..data.duplicates import cross_duplicates
from ..data.imageset import ImageSet
from ..data.sources import load_data, parse_data_spec
from ..data.splits import align_classes, per_class_subset, stratified_holdout
from ..data.transforms import build_transform, describe_eval_transform
from ..errors import FewlabelError
from ..models.backbones import BackboneInfo
from .callbacks import (
    BatchSeed,
    BestWeights,
    EvalModeModules,
    HistoryWriter,
    LastCheckpoint,
    Throughput,
)
from .functional import decayed_param_groups, freeze_all_but_last_blocks
from .inference import FeatureCache
from .module import ClassifierModule
from .strategies import Phase, plan_phases

log = logging.getLogger("fewlabel.train")
# Lightning notices that say nothing to a fewlabel user (small data, no validation set, resumes).
for _pattern in (
    ".*treespec.*LeafSpec.*",
    ".*smaller than the logging interval.*",
    ".*Total length of .* is zero.*",
    ".*Experiment logs directory .* exists.*",
    ".*does not have many workers.*",
    ".*`weights_only` was not set.*",
):
    warnings.filterwarnings("ignore", message=_pattern)
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
CHECKPOINT = Path("checkpoints") / "last.ckpt"
DEFAULT_VAL_SPLIT = 0.2


@dataclass
class DataBundle:
    """The splits of one run: labelled training set, validation, final evaluation, unlabeled pool."""

    train: ImageSet
    val: ImageSet | None
    eval: ImageSet
    eval_name: str
    unlabeled_ids: list[str] = field(default_factory=list)
    unlabeled: ImageSet | None = None  # the images of unlabeled_ids, kept for semi-supervised methods

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def summary(self) -> dict:
        """Sizes, class counts and exact duplicates between the splits (for the report)."""
        duplicates = {"train/eval": cross_duplicates(self.train, self.eval)}
        if self.val is not None:
            duplicates["train/val"] = cross_duplicates(self.train, self.val)
            if self.eval is not self.val:
                duplicates["val/eval"] = cross_duplicates(self.val, self.eval)
        return {
            "train": self.train.summary(),
            "val": self.val.summary() if self.val is not None else None,
            "eval": self.eval.summary() | {"role": self.eval_name},
            "unlabeled_pool": len(self.unlabeled_ids),
            "duplicates": duplicates,
        }


def prepare_data(cfg: TrainConfig, seed: int) -> DataBundle:
    """Load DATA's splits, draw the labelled subset and the validation split (both seeded)."""
    spec = parse_data_spec(cfg.data)
    full_train = load_data(spec if spec.split else spec.with_split("train"), cfg.img_size, cfg.strict, cfg.progress)
    labeled, unlabeled_ids, unlabeled = full_train, [], None
    if cfg.labels_per_class:
        chosen, rest = per_class_subset(full_train.labels, cfg.labels_per_class, seed, full_train.class_names)
        labeled = full_train.subset(chosen)
        unlabeled_ids = [full_train.ids[i] for i in rest.tolist()]
        if cfg.method and not cfg.unlabeled:
            unlabeled = full_train.subset(rest)
    splits = spec.available_splits() if spec.split is None else ()
    labeled, val = _validation(cfg, spec, splits, labeled, seed)
    if cfg.eval_data:
        evaluation, name = load_data(cfg.eval_data, cfg.img_size, cfg.strict, cfg.progress), cfg.eval_data
    elif "test" in splits:
        evaluation, name = load_data(spec.with_split("test"), cfg.img_size, cfg.strict, cfg.progress), "test"
    else:
        evaluation, name = val, "validation"
    evaluation = align_classes(evaluation, labeled.class_names, "Evaluation")
    return DataBundle(labeled, val, evaluation, name, unlabeled_ids, unlabeled)


def _validation(cfg: TrainConfig, spec, splits: tuple[str, ...], labeled: ImageSet, seed: int):
    """(labelled, validation): DATA's val split; else ``val_split`` of the labelled images held
    out; else, when nothing else could score the model, DEFAULT_VAL_SPLIT held out."""
    if "val" in splits and not cfg.val_split:
        val = load_data(spec.with_split("val"), cfg.img_size, cfg.strict, cfg.progress)
        return labeled, align_classes(val, labeled.class_names, "Validation")
    fraction = cfg.val_split
    if not fraction and "test" not in splits and cfg.eval_data is None:
        fraction = DEFAULT_VAL_SPLIT
        log.info("DATA has no val or test split: holding out %.0f%% of it for validation", 100 * fraction)
    if not fraction:
        return labeled, None
    held, kept = stratified_holdout(labeled.labels, fraction, seed)
    val = labeled.subset(held)
    val.source = f"{labeled.source} (held out)"
    return labeled.subset(kept), val


def freezes_batchnorm(cfg: TrainConfig) -> bool:
    """Whether the backbone's BatchNorm statistics stay fixed while it trains. ``auto`` freezes
    them for pretrained backbones: on Fashion-MNIST (20 labels per class, EfficientNet-Lite0)
    batch statistics in train mode sent the fine-tuning loss from 0.3 to 10 and accuracy to 30%,
    against 78% with frozen statistics. From scratch (``pretrained=none``) the running
    statistics mean nothing yet, so they train."""
    if cfg.freeze_bn == "auto":
        return cfg.pretrained != "none"
    return cfg.freeze_bn == "yes"


def resolve_accelerator(cfg: TrainConfig) -> tuple[str, torch.device, str]:
    """(Lightning accelerator, torch device, precision) for this machine."""
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = "16-mixed" if device.type == "cuda" else "32-true"
    return accelerator, device, precision


def check_image_size(model: nn.Module, img_size: int, arch: str) -> None:
    """Refuse an input size the backbone cannot take: below its total stride (the last feature
    map would vanish), or one a fixed-size model (e.g. a ViT) rejects in a trial forward pass."""
    reduction = max((f.get("reduction", 1) for f in getattr(model, "feature_info", [])), default=1)
    expected = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    if img_size < reduction:
        raise FewlabelError(
            f"--img-size {img_size} is too small for '{arch}', which downsamples by {reduction}; "
            f"use at least {reduction} (its default is {expected})."
        )
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise FewlabelError(
            f"--img-size {img_size} does not work with '{arch}' ({str(exc).splitlines()[0][:120]}); "
            f"it expects {expected}."
        ) from None
    finally:
        model.train(was_training)


def check_logger_available(logger: str) -> None:
    """Refuse, before any work, a logger whose package is not installed."""
    package = {"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(logger)
    if package and importlib.util.find_spec(package) is None:
        raise FewlabelError(f"--logger {logger} needs the '{package}' package: pip install 'fewlabel[{package}]'.")


def checkpoint_phase(path: Path) -> str | None:
    """The phase a last.ckpt belongs to (loaded with weights_only=True)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("fewlabel_phase")
    except Exception as exc:
        raise FewlabelError(
            f"Checkpoint '{path}' cannot be read ({type(exc).__name__}); rerun with --overwrite."
        ) from None


@dataclass
class FitResult:
    train_seconds: float
    images_per_second: float


class Engine:
    """Runs a strategy's phases on one model and one DataBundle, writing into ``run_dir``."""

    def __init__(self, cfg: TrainConfig, seed: int, run_dir: Path, callbacks: list[L.Callback] | None = None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.run_dir = run_dir
        self.extra_callbacks = callbacks or []
        self.accelerator, self.device, self.precision = resolve_accelerator(cfg)
        self.cache = FeatureCache(cfg.feature_cache)

    def fit(self, model: nn.Module, info: BackboneInfo, data: DataBundle, resume: bool) -> FitResult:
        phases = [p for p in plan_phases(self.cfg) if p.epochs > 0]
        start, ckpt = 0, None
        if resume:
            phase = checkpoint_phase(self.run_dir / CHECKPOINT)
            names = [p.name for p in phases]
            if phase in names:
                start, ckpt = names.index(phase), self.run_dir / CHECKPOINT
                log.info("resuming phase '%s' from %s", phase, ckpt)
        started = time.perf_counter()
        meters = []
        for index, phase in enumerate(phases):
            if index < start:
                continue
            meter = Throughput()
            self._run_phase(index, phase, model, info, data, meter, ckpt if index == start else None)
            meters.append((phase, meter))
        image_meters = [m for p, m in meters if not p.on_features] or [m for _, m in meters]
        seconds = sum(m.seconds for m in image_meters)
        return FitResult(
            time.perf_counter() - started,
            sum(m.images for m in image_meters) / seconds if seconds else 0.0,
        )

    def _run_phase(
        self,
        index: int,
        phase: Phase,
        model: nn.Module,
        info: BackboneInfo,
        data: DataBundle,
        meter: Throughput,
        ckpt: Path | None,
    ) -> None:
        if phase.on_features:
            net, datamodule, eval_modules = self._head_on_features(model, info, data)
            groups = [{"params": list(net.parameters()), "lr": phase.lr, "weight_decay": self.cfg.weight_decay}]
        else:
            net, datamodule, eval_modules = self._whole_network(phase, model, info, data)
            groups = decayed_param_groups(
                model, phase.lr, phase.layer_decay, phase.coarse_groups, self.cfg.weight_decay
            )
        module = ClassifierModule(
            net,
            groups,
            phase.name,
            self.cfg.optimizer,
            self.cfg.schedule,
            self.cfg.warmup_epochs,
            self.cfg.label_smoothing,
            self._class_weights(data.train),
        )
        callbacks = [
            BatchSeed(self.seed, index),
            EvalModeModules(eval_modules),
            meter,
            HistoryWriter(self.run_dir / "history.csv", phase.name),
            LastCheckpoint(self.run_dir / CHECKPOINT),
            *self.extra_callbacks,
        ]
        if self.cfg.early_stopping and data.val is not None:
            callbacks += [EarlyStopping("val_loss", patience=self.cfg.early_stopping), BestWeights()]
        trainer = L.Trainer(
            max_epochs=phase.epochs,
            accelerator=self.accelerator,
            devices=self._devices(),
            num_nodes=self.cfg.num_nodes,
            strategy=self.cfg.distributed,
            use_distributed_sampler=False,  # EpochSampler shards itself
            precision=self.precision,
            logger=self._logger(phase.name),
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=self.cfg.progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=self.run_dir,
            log_every_n_steps=10,
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True if ckpt else None)
        model.to("cpu")

    def _head_on_features(self, model, info, data):
        """The head (dropout + classifier) over embeddings cached once per data and weights."""
        for p in model.parameters():
            p.requires_grad = False
        transform = build_transform("none", self.cfg.img_size, info.mean, info.std, train=False)
        transform_id = describe_eval_transform(self.cfg.img_size, info.mean, info.std)
        model.to(self.device)

        def embed(images: ImageSet) -> TensorDataset:
            feats = self.cache.features(model, images, transform, transform_id, 128, self.device, self.cfg.progress)
            return TensorDataset(feats, images.labels)

        train_set = embed(data.train)
        val_set = embed(data.val) if data.val is not None else None
        model.to("cpu")
        head = model.get_classifier()
        for p in head.parameters():
            p.requires_grad = True
        net = nn.Sequential(nn.Dropout(self.cfg.dropout), head)
        return net, self._datamodule(train_set, data, val_set), []

    def _whole_network(self, phase: Phase, model, info, data):
        for p in model.parameters():
            p.requires_grad = True
        if phase.trainable_blocks is not None:
            try:
                freeze_all_but_last_blocks(model, phase.trainable_blocks)
            except ValueError as exc:
                raise FewlabelError(f"--strategy {self.cfg.strategy}: {exc}.") from None
        frozen_modules = [
            m
            for m in model.modules()
            if list(m.parameters(recurse=False)) and not any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        if freezes_batchnorm(self.cfg):
            frozen_modules += [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        train_tf = build_transform(self.cfg.augment, self.cfg.img_size, info.mean, info.std, train=True)
        eval_tf = build_transform("none", self.cfg.img_size, info.mean, info.std, train=False)
        val_set = TransformedImages(data.val, eval_tf) if data.val is not None else None
        train_set = TransformedImages(data.train, train_tf, seed=self.seed)
        return model, self._datamodule(train_set, data, val_set), frozen_modules

    def _datamodule(self, train_set, data: DataBundle, val_set) -> ClassificationDataModule:
        return ClassificationDataModule(
            train_set,
            data.train.labels,
            val_set,
            self.cfg.batch_size,
            self.seed,
            balanced=self.cfg.imbalance == "balanced-sampler",
            workers=self.cfg.workers,
        )

    def _class_weights(self, train: ImageSet) -> torch.Tensor | None:
        if self.cfg.imbalance != "class-weights":
            return None
        counts = torch.bincount(train.labels, minlength=train.num_classes).float().clamp_min(1)
        return counts.sum() / (len(counts) * counts)

    def _devices(self) -> int | str:
        return int(self.cfg.devices) if self.cfg.devices.isdigit() else self.cfg.devices

    def _logger(self, phase: str):
        """CSV (also under ``--logger mlflow``, whose record api.train writes from the run's files)."""
        save_dir = self.run_dir / "logs"
        if self.cfg.logger == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(save_dir, name=phase, version=0)
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir, name=phase, version=0)

"""Image classification: one class per image, as the task interface implements it.

Images are decoded once into uint8 tensors, resized (shorter side, then centre crop) to
``img_size``; the network is a timm classifier; metrics are those of DESIGN.md's metrics.json;
predictions.csv holds one row per evaluation image.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from ..config import TrainConfig
from ..data.augment import BatchTransform, mirror_tests
from ..data.datasets import ImageBatches
from ..data.duplicates import cross_duplicates
from ..data.images import ImageDecodeError, decode_image, pil_to_array, resize_to_square
from ..data.imageset import ImageSet
from ..data.sources import load_data, parse_data_spec
from ..data.splits import align_classes, check_holdout, per_class_subset, random_subset, stratified_holdout
from ..errors import FewlabelError
from ..evaluate.metrics import METRIC_KEYS, aggregate_seeds, classification_metrics
from ..evaluate.predictions import Predictions, write_predictions
from ..models import BackboneInfo, ModelCard, check_image_size, create_backbone
from ..rundir import PREDICTIONS
from ..train.inference import batched_outputs
from .base import DataBundle, Task

log = logging.getLogger("fewlabel.data")
DEFAULT_VAL_SPLIT = 0.2


class ClassificationTask(Task):
    """One class per image (ImageFolder, ``path,label`` CSV or a built-in dataset)."""

    name = "classification"
    headline = "accuracy"
    metric_keys = METRIC_KEYS
    has_feature_head = True
    monitor = ("val_acc", True)

    def prepare_data(self, cfg: TrainConfig, seed: int) -> DataBundle:
        return prepare_classification_data(cfg, seed)

    def splits_record(self, data: DataBundle, seed: int) -> dict:
        return super().splits_record(data, seed) | {"summary": self.data_summary(data)}

    def build_model(self, cfg: TrainConfig, data: DataBundle) -> tuple[nn.Module, BackboneInfo]:
        model, info = create_backbone(
            cfg.model, cfg.pretrained, data.train.num_classes, cfg.dropout, class_names=data.class_names, head=cfg.head
        )
        check_image_size(model, cfg.img_size, cfg.model)
        return model, info

    def rebuild_model(self, card: ModelCard) -> nn.Module:
        return timm.create_model(
            card.arch, pretrained=False, num_classes=len(card.class_names), drop_rate=card.drop_rate
        )

    def dataset(self, split: ImageSet, info: BackboneInfo, cfg: TrainConfig, train: bool, seed: int) -> ImageBatches:
        transform = BatchTransform(cfg.augment, cfg.img_size, info.mean, info.std, train=train, vflip=cfg.vflip)
        return ImageBatches(split.images, (split.labels,), transform, seed)

    def resolve_augment(self, cfg: TrainConfig, data: DataBundle, engine) -> tuple[TrainConfig, dict | None]:
        """``augment: auto``: ``crop``, plus a horizontal flip (``light``) and a vertical one
        (``vflip``) each where :func:`fewlabel.data.augment.mirror_test` on pooled features
        of the labelled images (the run's pretrained backbone, un-augmented) says the flip
        keeps classes. A class with fewer than 2 labelled images leaves nothing to test: no flip."""
        if cfg.augment != "auto":
            return cfg, None
        train = data.train
        if min(train.class_counts()) < 2:
            log.info("augment auto: a class has fewer than 2 labelled images; no flips")
            return cfg.model_copy(update={"augment": "crop", "vflip": False}), {"augment": "crop", "vflip": False}
        with torch.random.fork_rng(devices=[]):  # the network's own initialisation stays as without the test
            backbone, info = create_backbone(cfg.model, cfg.pretrained, 0, 0.0, head="new")
        original = cached_features(backbone, train, info, cfg, engine)
        mirrors = {}
        for name, dim in (("horizontal_flip", -1), ("vertical_flip", -2)):
            mirrored = ImageSet(train.images.flip(dim), train.labels, train.class_names, train.ids, train.source)
            mirrors[name] = cached_features(backbone, mirrored, info, cfg, engine)
        tests = mirror_tests(original, mirrors, train.labels)
        augment = "light" if tests["horizontal_flip"]["allowed"] else "crop"
        decision = {"augment": augment, "vflip": tests["vertical_flip"]["allowed"], **tests}
        log.info("augment auto: %s%s", augment, " with vertical flips" if decision["vflip"] else "")
        return cfg.model_copy(update={"augment": augment, "vflip": decision["vflip"]}), decision

    def selection_margin(self, score: float, images: int) -> float:
        """One binomial standard error of an accuracy ``score`` measured on ``images`` images
        (with fewer labels than that the choice is noise: 20 images at 60% give ±11 points)."""
        return math.sqrt(max(score * (1 - score), 0.0) / images) if images else 0.0

    def refit_data(self, data: DataBundle) -> DataBundle:
        joined = data.train.join(data.val)
        return DataBundle(joined, None, data.eval, data.eval_name, data.unlabeled_ids, data.unlabeled)

    def sampler_labels(self, split: ImageSet) -> torch.Tensor:
        return split.labels

    def module(self, net: nn.Module, param_groups: list[dict], cfg: TrainConfig, data: DataBundle):
        from ..train.module import ClassifierModule

        return ClassifierModule(
            net,
            param_groups,
            cfg.optimizer,
            cfg.schedule,
            cfg.warmup_epochs,
            cfg.label_smoothing,
            class_weights(data.train, cfg.imbalance),
        )

    def head_fit(self, model, info, cfg, data, engine):
        """Dropout and the classifier over embeddings cached once per data and weights."""
        from ..train.datamodule import datamodule

        for p in model.parameters():
            p.requires_grad = False

        def embed(images: ImageSet) -> TensorDataset:
            return TensorDataset(cached_features(model, images, info, cfg, engine), images.labels)

        train_set = embed(data.train)
        val_set = embed(data.val) if data.val is not None else None
        head = model.get_classifier()
        for p in head.parameters():
            p.requires_grad = True
        net = nn.Sequential(nn.Dropout(cfg.dropout), head)
        return net, datamodule(cfg, engine.seed, train_set, val_set, data.train.labels)

    def card_fields(self, cfg: TrainConfig, data: DataBundle, info: BackboneInfo) -> dict:
        return {
            "class_names": data.class_names,
            "img_size": cfg.img_size,
            "mean": list(info.mean),
            "std": list(info.std),
            "drop_rate": cfg.dropout,
        }

    def evaluate(self, model, card, split: ImageSet, progress: bool = False) -> tuple[dict, Predictions]:
        probs = Predictor(model, card).predict_proba(split, progress=progress)
        metrics = classification_metrics(probs, split.labels, card.class_names)
        return metrics, Predictions(split.ids, probs, split.labels, card.class_names)

    def robustness(
        self, model: nn.Module, card: ModelCard, split: ImageSet, cfg: TrainConfig, seed: int
    ) -> dict | None:
        """Accuracy under Gaussian noise and FGSM (:mod:`fewlabel.audit.robustness`) on a seeded
        draw of ``robustness_images`` evaluation images."""
        if not cfg.robustness_images or not len(split):
            return None
        from ..audit.robustness import robustness_scores

        subset = random_subset(split, cfg.robustness_images, seed)
        return robustness_scores(model, subset.images, subset.labels, card.img_size, card.mean, card.std, seed)

    def load_split(self, spec: str, card: ModelCard, strict: bool = False) -> ImageSet:
        return align_classes(load_data(spec, card.img_size, strict), card.class_names, "Evaluation")

    def write_predictions(self, run_dir: Path, predictions: Predictions) -> None:
        write_predictions(Path(run_dir) / PREDICTIONS, predictions)

    def predictor(self, model: nn.Module, card: ModelCard, device: str | None = None) -> Predictor:
        return Predictor(model, card, device)

    def aggregate(self, per_seed: dict[int, dict]) -> dict:
        return aggregate_seeds(per_seed)

    def data_summary(self, data: DataBundle) -> dict:
        """Sizes, class counts and exact duplicates between the splits (for the report)."""
        duplicates = {"train/eval": cross_duplicates(data.train, data.eval)}
        if data.val is not None:
            duplicates["train/val"] = cross_duplicates(data.train, data.val)
            if data.eval is not data.val:
                duplicates["val/eval"] = cross_duplicates(data.val, data.eval)
        return {
            "train": data.train.summary(),
            "val": data.val.summary() if data.val is not None else None,
            "eval": data.eval.summary() | {"role": data.eval_name},
            "unlabeled_pool": len(data.unlabeled_ids),
            "duplicates": duplicates,
        }

    def learning_warnings(self, metrics: dict, model: nn.Module, cfg: TrainConfig) -> list[str]:
        from ..evaluate.notices import chance_warnings

        counts = [metrics["per_class"][name]["support"] for name in metrics["class_names"]]
        return chance_warnings(metrics["accuracy"], metrics["nll"], counts) + super().learning_warnings(
            metrics, model, cfg
        )

    def report_sections(self, run_dir: Path, metrics: dict) -> list[str]:
        from ..report.classification import sections

        return sections(run_dir, metrics)


def prepare_classification_data(cfg: TrainConfig, seed: int) -> DataBundle:
    """Load DATA's splits, draw the labelled subset and the validation split (both seeded).
    The unlabeled rest of the training split is kept in memory when a method learns from it."""

    spec = parse_data_spec(cfg.data)
    full_train = load_data(spec if spec.split else spec.with_split("train"), cfg.img_size, cfg.strict, cfg.progress)
    labeled, unlabeled_ids, unlabeled = full_train, [], None
    wants_pool = cfg.method.wants_rest_pool
    if cfg.labels_per_class:
        chosen, rest = per_class_subset(full_train.labels, cfg.labels_per_class, seed, full_train.class_names)
        labeled = full_train.subset(chosen)
        unlabeled_ids = [full_train.ids[i] for i in rest.tolist()]
        if wants_pool:
            unlabeled = full_train.subset(rest)
    splits = spec.available_splits() if spec.split is None else ()
    labeled, val, held_out = _validation(cfg, spec, splits, labeled, seed)
    if cfg.eval_data:
        evaluation, name = load_data(cfg.eval_data, cfg.img_size, cfg.strict, cfg.progress), cfg.eval_data
    elif "test" in splits:
        evaluation, name = load_data(spec.with_split("test"), cfg.img_size, cfg.strict, cfg.progress), "test"
    else:
        evaluation, name = val, "validation"
    evaluation = align_classes(evaluation, labeled.class_names, "Evaluation")
    return DataBundle(labeled, val, evaluation, name, unlabeled_ids, unlabeled, val_held_out=held_out)


def _validation(cfg: TrainConfig, spec, splits: tuple[str, ...], labeled: ImageSet, seed: int):
    """(labelled, validation, whether it was held out of the labelled images): DATA's val split;
    else ``val_split`` of the labelled images held out; else, when nothing else could score the
    model or the method chooses on validation (strategy auto), DEFAULT_VAL_SPLIT held out."""
    if "val" in splits and not cfg.val_split:
        val = load_data(spec.with_split("val"), cfg.img_size, cfg.strict, cfg.progress)
        return labeled, align_classes(val, labeled.class_names, "Validation"), False
    fraction = cfg.val_split
    nothing_else_scores = "test" not in splits and cfg.eval_data is None
    if not fraction and (nothing_else_scores or cfg.method.needs_validation or cfg.track_infoplane):
        fraction = DEFAULT_VAL_SPLIT
        why = (
            "to choose the strategy on" if cfg.method.needs_validation
            else "to track the information plane on" if cfg.track_infoplane
            else "as DATA has no val or test split"
        )  # fmt: skip
        log.info("holding out %.0f%% of the labelled images for validation, %s", 100 * fraction, why)
    if not fraction:
        return labeled, None, False
    check_holdout(labeled.labels, fraction, labeled.class_names, cfg.val_split is not None)
    held, kept = stratified_holdout(labeled.labels, fraction, seed)
    val = labeled.subset(held)
    val.source = f"{labeled.source} (held out)"
    return labeled.subset(kept), val, True


def class_weights(train: ImageSet, imbalance: str) -> torch.Tensor | None:
    """Inverse-frequency class weights for ``imbalance: class-weights`` (mean weight 1)."""
    if imbalance != "class-weights":
        return None
    counts = torch.bincount(train.labels, minlength=train.num_classes).float().clamp_min(1)
    return counts.sum() / (len(counts) * counts)


def cached_features(model: nn.Module, images: ImageSet, info: BackboneInfo, cfg: TrainConfig, engine, fn=None):
    """Pooled features (or ``fn`` of the images) of un-augmented images, cached by the engine."""
    transform = BatchTransform("none", cfg.img_size, info.mean, info.std, train=False)
    model.to(engine.device)
    try:
        return engine.cache.features(model, images, transform, engine.device, cfg.progress, fn=fn)
    finally:
        model.to("cpu")


class Predictor:
    """A trained classifier with its preprocessing; built by :func:`fewlabel.load` from a run."""

    def __init__(self, model: nn.Module, card: ModelCard, device: str | None = None) -> None:
        self.model = model.eval()
        self.card = card
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.transform = BatchTransform("none", card.img_size, card.mean, card.std, train=False)

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    def predict_proba(self, images: ImageSet | list, progress: bool = False) -> torch.Tensor:
        """Class probabilities (N x C) for an ImageSet or a list of paths, PIL images or arrays."""
        image_set = images if isinstance(images, ImageSet) else self._to_image_set(images)
        self.model.to(self.device)
        logits = batched_outputs(
            self.model, image_set, self.transform, device=self.device, desc="evaluating", progress=progress
        )
        return logits.softmax(-1)

    def predict(self, images: list, top_k: int = 3) -> list[dict]:
        """Top-k classes with probabilities for each image."""
        tops = self.top_classes(self.predict_proba(images), top_k)
        return [{"image": name, "top": top} for name, top in zip(_image_names(images), tops, strict=True)]

    def top_classes(self, probs: torch.Tensor, top_k: int) -> list[list[dict]]:
        """For each row of N x C probabilities, the ``top_k`` classes as {class, probability}."""
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [
            [{"class": self.class_names[j], "probability": float(v)} for v, j in zip(vals, idx, strict=True)]
            for vals, idx in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def metrics(self, images: ImageSet, progress: bool = False) -> dict:
        probs = self.predict_proba(images, progress=progress)
        return classification_metrics(probs, images.labels, self.class_names)

    def _to_image_set(self, images: list) -> ImageSet:
        tensors = [resize_to_square(_as_tensor(x), self.card.img_size) for x in images]
        channels = max(t.shape[0] for t in tensors)
        stacked = torch.stack([t.expand(channels, -1, -1) for t in tensors])
        return ImageSet(
            stacked,
            torch.zeros(len(tensors), dtype=torch.long),
            self.class_names,
            _image_names(images),
        )


def _image_names(images: list) -> list[str]:
    return [str(x) if isinstance(x, (str, Path)) else f"image {i}" for i, x in enumerate(images)]


def _as_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        try:
            return decode_image(image)
        except (ImageDecodeError, FileNotFoundError) as exc:
            raise FewlabelError(f"Cannot read image '{image}': {exc}.") from None
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(pil_to_array(image))).permute(2, 0, 1).contiguous()  # writable copy
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.dtype != np.uint8:
        raise FewlabelError(f"Image arrays must be H x W or H x W x C uint8, got {array.shape} {array.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)

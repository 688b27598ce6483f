"""Nucleus detection as a task of the engine (Xing et al. 2019): the network regresses a
proximity map per pixel (:mod:`.proximity`), nuclei are its local maxima above a threshold
(:mod:`.peaks`) chosen on the validation images after training and stored in model.json, and
detections are scored by one-to-one matching within a radius (:mod:`.matching`).

Data are images at their own size with their centres (:mod:`.data`); training draws random
crops of ``img_size`` with the target transformed jointly (:mod:`.augment`); evaluation and
detection run on whole images, tiled when large (:mod:`.inference`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.sources import has_split
from ..data.splits import random_subset
from ..errors import FewlabelError
from ..fileio import write_arrays, write_text
from ..models import BackboneInfo, ModelCard
from ..models.dense import check_side
from ..rundir import DETECTIONS, NUCLEI_EXAMPLES
from ..tasks import card_task_options, config_task_options
from ..tasks.base import DataBundle, Task, evaluation_split
from ..train.module import EngineModule
from .augment import TrainingCrops, ValidationTiles, to_targets
from .data import NucleusSet, load_nuclei
from .inference import NucleusDetector
from .matching import best_threshold, detection_scores, f1_by_threshold, match_points
from .model import build_detector
from .options import NucleiOptions
from .peaks import above, find_peaks
from .proximity import proximity_map

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95: the threshold search grid
EXAMPLES, EXAMPLE_SIDE = 4, 256
DEFAULT_VAL_SHARE = 0.2


def weighted_mse(predicted: torch.Tensor, target: torch.Tensor, center_weight: float) -> torch.Tensor:
    """Mean of ``(1 + center_weight * M) (prediction - M)^2``: without the weight the few pixels
    near centres would count as little as the wide background (our choice of the structured-
    regression weighting; ``center_weight`` 0 gives plain MSE)."""
    weight = 1.0 + center_weight * target
    return (weight * (predicted.float() - target) ** 2).mean()


class NucleiModule(EngineModule):
    """The detector trained on crops and their proximity maps."""

    def __init__(self, net, param_groups, optimizer, schedule, warmup_epochs, center_weight: float) -> None:
        super().__init__(net, param_groups, optimizer, schedule, warmup_epochs)
        self.center_weight = center_weight

    def training_loss(self, batch):
        x, target = batch
        return weighted_mse(self(x), target, self.center_weight), {}, len(x)

    validation_loss = training_loss


@dataclass
class NucleiPredictions:
    """Detections on the evaluation images at the chosen threshold, the true centres, and a
    few examples for the report."""

    ids: list[str]
    detected: list[np.ndarray]
    scores: list[np.ndarray]
    true: list[np.ndarray]
    match_radius: float
    examples: dict[str, np.ndarray] = field(default_factory=dict)


def target_maps(split: NucleusSet, options: NucleiOptions) -> list[torch.Tensor]:
    """The proximity map of every image of ``split`` (1 x H x W), computed once per split."""
    key = (options.proximity_radius, options.alpha, options.proximity_form)
    cache = split.cache
    if key not in cache:
        maps = [
            proximity_map(p, im.shape[-2:], options.proximity_radius, options.alpha, options.proximity_form)
            for im, p in zip(split.images, split.points, strict=True)
        ]
        cache[key] = to_targets(maps)
    return cache[key]


class NucleiTask(Task):
    """Nucleus centres in microscopy images, from a proximity map regressed per pixel."""

    name = "nuclei"
    headline = "f1"
    metric_keys = ("f1", "precision", "recall", "localization_error")
    can_refit = False

    def prepare_data(self, cfg: TrainConfig, seed: int) -> DataBundle:
        options = config_task_options(cfg)
        if cfg.refit:
            raise FewlabelError(
                "--refit: task 'nuclei' needs its validation images after training (the threshold); remove it"
            )
        if cfg.augment != "auto" or cfg.vflip:
            raise FewlabelError(
                "augment/vflip: the nuclei task augments its own way (the square's 8 symmetries and a stain jitter, "
                "--stain-jitter); remove them"
            )
        pool = load_nuclei(cfg.data, cfg.strict, cfg.progress)
        val, held_out = self._validation(cfg, pool, seed)
        held = set(val.ids) if held_out else set()
        train = pool.subset([i for i, image_id in enumerate(pool.ids) if image_id not in held])
        if options.images is not None:
            train = random_subset(train, options.images, seed)
        if train.n_nuclei == 0:
            raise FewlabelError(f"DATA '{cfg.data}': the training images hold no annotated nucleus; nothing to learn.")
        train.crops_per_image = options.crops_per_image
        evaluation, eval_name = evaluation_split(cfg, val, lambda spec: load_nuclei(spec, cfg.strict))
        return DataBundle(train, val, evaluation, eval_name, val_held_out=held_out)

    def _validation(self, cfg: TrainConfig, pool: NucleusSet, seed: int) -> tuple[NucleusSet, bool]:
        """DATA's own ``val`` folder, else a seeded share of the training images (at least one)."""
        if ":" not in cfg.data and has_split(cfg.data, "val"):
            return load_nuclei(f"{cfg.data}:val", cfg.strict), False
        if len(pool) < 2:
            raise FewlabelError(
                f"DATA '{cfg.data}' has {len(pool)} image; the nuclei task needs at least 2 (one to validate the "
                "detection threshold on), or a val/ folder."
            )
        share = cfg.val_split if cfg.val_split is not None else DEFAULT_VAL_SHARE
        return random_subset(pool, max(1, round(share * len(pool))), seed + 1), True

    def resolve_augment(self, cfg: TrainConfig, data: DataBundle, engine) -> tuple[TrainConfig, dict | None]:
        """Nothing to decide: crops always take one of the square's 8 symmetries and the stain
        jitter (``--augment`` does not apply to this task)."""
        return cfg, None

    def splits_record(self, data: DataBundle, seed: int) -> dict:
        return super().splits_record(data, seed) | {"summary": self.data_summary(data)}

    def data_summary(self, data: DataBundle) -> dict:
        nuclei = {"train_nuclei": data.train.n_nuclei, "eval_nuclei": data.eval.n_nuclei}
        return super().data_summary(data) | nuclei

    def build_model(self, cfg: TrainConfig, data: DataBundle) -> tuple[nn.Module, BackboneInfo]:
        options = config_task_options(cfg)
        model, info = build_detector(cfg.model, cfg.pretrained, options.stages, options.decoder_width)
        check_side(model, cfg.img_size, "nuclei")
        return model, info

    def rebuild_model(self, card: ModelCard) -> nn.Module:
        options = card_task_options(card)
        return build_detector(card.arch, "none", options.stages, options.decoder_width)[0]

    def dataset(self, split: NucleusSet, info: BackboneInfo, cfg: TrainConfig, train: bool, seed: int):
        options = config_task_options(cfg)
        targets = target_maps(split, options)
        if train:
            return TrainingCrops(
                split.images, targets, cfg.img_size, info.mean, info.std, seed, split.crops_per_image,
                options.stain_jitter,
            )  # fmt: skip
        return ValidationTiles(split.images, targets, cfg.img_size, info.mean, info.std)

    def sampler_labels(self, split: NucleusSet) -> torch.Tensor:
        return torch.zeros(len(split) * split.crops_per_image, dtype=torch.long)

    def module(self, net: nn.Module, param_groups: list[dict], cfg: TrainConfig, data: DataBundle) -> NucleiModule:
        return NucleiModule(
            net, param_groups, cfg.optimizer, cfg.schedule, cfg.warmup_epochs, config_task_options(cfg).center_weight
        )

    def card_fields(self, cfg: TrainConfig, data: DataBundle, info: BackboneInfo) -> dict:
        return {
            "class_names": ["nucleus"],
            "img_size": cfg.img_size,
            "mean": list(info.mean),
            "std": list(info.std),
            "extras": config_task_options(cfg).model_dump(),
        }

    def fitted_settings(self, model: nn.Module, info: BackboneInfo, cfg: TrainConfig, data: DataBundle) -> dict:
        """The detection threshold of the highest F1 on the validation images (training images
        when there are none), with the curve it was chosen on."""
        split = data.val if data.val is not None and len(data.val) else data.train
        card = ModelCard(arch=cfg.model, **self.card_fields(cfg, data, info))
        options = config_task_options(cfg)
        detector = NucleusDetector(model.eval(), card)
        peaks = [find_peaks(detector.proximity(im), THRESHOLDS[0], options.min_distance) for im in split.images]
        curve = f1_by_threshold(peaks, split.points, options.match_radius, THRESHOLDS)
        threshold = best_threshold(curve)
        chosen_on = "validation" if split is data.val else "training (no validation images)"
        return {"threshold": threshold, "threshold_chosen_on": chosen_on, "threshold_curve": curve}

    def evaluate(self, model: nn.Module, card: ModelCard, split: NucleusSet, progress: bool = False):
        options = card_task_options(card)
        detector = NucleusDetector(model.eval(), card)
        start = time.perf_counter()
        maps = [detector.proximity(im) for im in split.images]
        seconds = time.perf_counter() - start
        peaks = [find_peaks(m, THRESHOLDS[0], options.min_distance) for m in maps]
        threshold = detector.settings.threshold
        detected = [above(points, scores, threshold) for points, scores in peaks]
        scores = [s[s >= threshold] for _, s in peaks]
        overall, per_image = detection_scores(detected, split.points, options.match_radius)
        metrics = {k: _finite(v) for k, v in overall.items()} | {
            "n_samples": len(split),
            "n_nuclei": split.n_nuclei,
            "threshold": threshold,
            "match_radius": options.match_radius,
            "megapixels_per_second": split.megapixels() / seconds if seconds > 0 else None,
            "f1_by_threshold": f1_by_threshold(peaks, split.points, options.match_radius, THRESHOLDS),
            "per_image": [
                {"id": i, "f1": s["f1"], "n_true": s["tp"] + s["fn"], "n_detected": s["tp"] + s["fp"]}
                for i, s in zip(split.ids, per_image, strict=True)
            ],
        }
        examples = example_arrays(split, maps, detected, options)
        return metrics, NucleiPredictions(split.ids, detected, scores, split.points, options.match_radius, examples)

    def load_split(self, spec: str, card: ModelCard, strict: bool = False) -> NucleusSet:
        return load_nuclei(spec, strict)

    def write_predictions(self, run_dir: Path, predictions: NucleiPredictions) -> None:
        write_text(Path(run_dir) / DETECTIONS, detections_csv(predictions))
        write_arrays(Path(run_dir) / NUCLEI_EXAMPLES, predictions.examples)

    def predictor(self, model: nn.Module, card: ModelCard, device: str | None = None) -> NucleusDetector:
        return NucleusDetector(model, card, device)

    def learning_warnings(self, metrics: dict, model: nn.Module, cfg: TrainConfig) -> list[str]:
        if metrics.get("f1", 1.0) >= 0.2:
            return []
        return [
            f"the detector's F1 is {metrics['f1']:.2f}: train longer (--epochs), check --proximity-radius against the "
            "nucleus radius in pixels, or look at the F1-by-threshold curve in the report"
        ]

    def report_sections(self, run_dir: Path, metrics: dict) -> list[str]:
        from .report import nuclei_section

        return [nuclei_section(run_dir, metrics)]


def _finite(value):
    return None if isinstance(value, float) and not np.isfinite(value) else value


def example_arrays(split: NucleusSet, maps: list[np.ndarray], detected: list[np.ndarray], options) -> dict:
    """Up to EXAMPLES crops (EXAMPLE_SIDE square, top left) of the evaluation images: image,
    predicted and target maps, true and detected centres inside the crop."""
    arrays = {}
    targets = target_maps(split, options)
    for k in range(min(EXAMPLES, len(split))):
        side_h, side_w = (min(EXAMPLE_SIDE, n) for n in split.images[k].shape[-2:])
        arrays[f"image_{k}"] = split.images[k][:, :side_h, :side_w].permute(1, 2, 0).numpy()
        arrays[f"map_{k}"] = maps[k][:side_h, :side_w].astype(np.float16)
        arrays[f"target_{k}"] = targets[k][0, :side_h, :side_w].numpy().astype(np.float16)
        for name, points in (("true", split.points[k]), ("detected", detected[k])):
            inside = (points[:, 0] < side_w) & (points[:, 1] < side_h)
            arrays[f"{name}_{k}"] = points[inside]
    return arrays


def detections_csv(predictions: NucleiPredictions) -> str:
    """``image,x,y,score,status``: every detection (matched or false_positive) and every missed
    true centre (missed, no score)."""
    lines = ["image,x,y,score,status"]
    for image_id, points, scores, true in zip(
        predictions.ids, predictions.detected, predictions.scores, predictions.true, strict=True
    ):
        pairs, _ = match_points(points, true, predictions.match_radius)
        matched, found = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
        for i, ((x, y), score) in enumerate(zip(points, scores, strict=True)):
            lines.append(f"{image_id},{x:.1f},{y:.1f},{score:.4f},{'matched' if i in matched else 'false_positive'}")
        lines += [f"{image_id},{x:.1f},{y:.1f},,missed" for j, (x, y) in enumerate(true) if j not in found]
    return "\n".join(lines) + "\n"

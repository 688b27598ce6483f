"""Monocular depth as a task of the engine (Mahmood et al. 2018): the shared encoder-decoder
(:mod:`fewlabel.models.dense`) regresses log depth per pixel, trained with the scale-invariant
log loss of Eigen et al. (2014) or L1, and is scored with the depth literature's errors
(:mod:`.metrics`), absolute and after median scaling.

The network's output is log depth minus an offset stored in model.json (the log of the median
training depth, or the parent's offset when a depth run is fine-tuned), so an untrained network
starts near the data's typical depth. A run initialised from another depth run (``--init``) is
compared against that parent on the same evaluation images (metrics.json ``parent``, and the
report).
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
from ..fileio import write_arrays
from ..models import BackboneInfo, ModelCard
from ..models.dense import build_encoder_decoder, check_side, run_card
from ..rundir import DEPTH_EXAMPLES
from ..tasks import card_task_options, config_task_options
from ..tasks.base import DataBundle, Task, evaluation_split
from ..train.module import EngineModule
from .augment import DepthPairs, resized_pairs
from .data import DepthSet, load_depth
from .inference import DepthPredictor, median_offset
from .metrics import ERROR_KEYS, SCALE_KEYS, depth_scores
from .options import DepthOptions

EXAMPLES, EXAMPLE_SIDE = 4, 256
DEFAULT_VAL_SHARE = 0.2


def depth_loss(log_predicted: torch.Tensor, depth: torch.Tensor, loss: str, si_lambda: float,
               max_depth: float | None = None) -> torch.Tensor:  # fmt: skip
    """``silog``: per image, mean(d^2) - lambda mean(d)^2 with d = log predicted - log true over
    valid pixels (Eigen et al. 2014; lambda 0.5 as they trained, 1 ignores scale), averaged over
    images; ``l1``: mean |predicted - true| over all valid pixels, in depth units. Valid: finite,
    positive and at most ``max_depth``."""
    valid = torch.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    log_predicted = log_predicted.float()
    if not valid.any():  # a batch without valid depth: no signal (0, still attached to the graph), not NaN
        return log_predicted.sum() * 0.0
    if loss == "l1":
        return (torch.exp(log_predicted) - torch.nan_to_num(depth, nan=1.0)).abs()[valid].mean()
    d = torch.where(valid, log_predicted - torch.log(torch.nan_to_num(depth, nan=1.0).clamp(min=1e-6)), 0.0)
    count = valid.flatten(1).sum(1)
    has = count > 0
    mean = d.flatten(1).sum(1)[has] / count[has]
    mean_square = (d * d).flatten(1).sum(1)[has] / count[has]
    return (mean_square - si_lambda * mean * mean).mean()


class DepthModule(EngineModule):
    """The network trained on (image, depth) pairs; its output plus ``offset`` is log depth."""

    def __init__(self, net, param_groups, optimizer, schedule, warmup_epochs, options: DepthOptions,
                 offset: float) -> None:  # fmt: skip
        super().__init__(net, param_groups, optimizer, schedule, warmup_epochs)
        self.options, self.offset = options, offset

    def training_loss(self, batch):
        x, depth = batch
        o = self.options
        loss = depth_loss(self(x) + self.offset, depth, o.depth_loss, o.si_lambda, o.max_depth)
        return loss, {}, len(x)

    validation_loss = training_loss


@dataclass
class DepthPredictions:
    """Depth maps predicted for the evaluation images, and a few examples for the report."""

    ids: list[str]
    examples: dict[str, np.ndarray] = field(default_factory=dict)


class DepthTask(Task):
    """Depth per pixel from one image."""

    name = "depth"
    headline = "abs_rel"
    metric_keys = ("abs_rel", "rmse", "log_rmse", "delta_1")
    higher_is_better = False

    def prepare_data(self, cfg: TrainConfig, seed: int) -> DataBundle:
        options = config_task_options(cfg)
        if cfg.augment != "auto" or cfg.vflip:
            raise FewlabelError(
                "augment/vflip: the depth task augments its own way (the square's 8 symmetries, --no-symmetries to "
                "turn them off, and --colour-jitter); remove them"
            )
        pool = load_depth(cfg.data, cfg.strict, cfg.progress, options.png_scale)
        val, held_out = self._validation(cfg, pool, seed, options)
        held = set(val.ids) if held_out and val is not None else set()
        train = pool.subset([i for i, image_id in enumerate(pool.ids) if image_id not in held])
        if options.images is not None:
            train = random_subset(train, options.images, seed)
        if options.rehearse is not None:
            train = with_rehearsal(train, options, cfg.strict, seed)
        evaluation, eval_name = evaluation_split(
            cfg, val, lambda spec: load_depth(spec, cfg.strict, png_scale=options.png_scale)
        )
        return DataBundle(train, val, evaluation, eval_name, val_held_out=held_out)

    def _validation(self, cfg: TrainConfig, pool: DepthSet, seed: int, options) -> tuple[DepthSet | None, bool]:
        """DATA's own ``val`` folder, else a seeded share of the training images (none from one image)."""
        if ":" not in cfg.data and has_split(cfg.data, "val"):
            return load_depth(f"{cfg.data}:val", cfg.strict, png_scale=options.png_scale), False
        share = cfg.val_split if cfg.val_split is not None else DEFAULT_VAL_SHARE
        count = round(share * len(pool))
        if count == 0 or count >= len(pool):
            return None, False
        return random_subset(pool, count, seed + 1), True

    def refit_data(self, data: DataBundle) -> DataBundle:
        return DataBundle(data.train.joined(data.val), None, data.eval, data.eval_name)

    def resolve_augment(self, cfg: TrainConfig, data: DataBundle, engine) -> tuple[TrainConfig, dict | None]:
        """Nothing to decide: the depth task's own symmetries and colour jitter apply."""
        return cfg, None

    def data_summary(self, data: DataBundle) -> dict:
        low, high = data.train.depth_range()
        summary = super().data_summary(data) | {"train": data.train.seen_per_epoch(), "train_depth_range": [low, high]}
        rehearsal = data.train.source.get("rehearsal")
        return summary | ({"rehearsal": rehearsal} if rehearsal else {})

    def splits_record(self, data: DataBundle, seed: int) -> dict:
        return super().splits_record(data, seed) | {"summary": self.data_summary(data)}

    def build_model(self, cfg: TrainConfig, data: DataBundle) -> tuple[nn.Module, BackboneInfo]:
        options = config_task_options(cfg)
        model, info, _ = build_encoder_decoder(
            "depth", cfg.model, cfg.pretrained, options.stages, options.decoder_width
        )
        check_side(model, cfg.img_size, "depth")
        return model, info

    def rebuild_model(self, card: ModelCard) -> nn.Module:
        options = card_task_options(card)
        return build_encoder_decoder("depth", card.arch, "none", options.stages, options.decoder_width)[0]

    def dataset(self, split: DepthSet, info: BackboneInfo, cfg: TrainConfig, train: bool, seed: int):
        options = config_task_options(cfg)
        images, depths = resized_pairs(split, cfg.img_size)
        if train:
            return DepthPairs(
                images, depths, info.mean, info.std, seed, options.symmetries, options.colour_jitter, split.replay
            )
        return DepthPairs(images, depths, info.mean, info.std)

    def sampler_labels(self, split: DepthSet) -> torch.Tensor:
        """One slot per image an epoch sees (a replayed pool's draw counts ``per_epoch``)."""
        return torch.zeros(split.seen_per_epoch(), dtype=torch.long)

    def module(self, net: nn.Module, param_groups: list[dict], cfg: TrainConfig, data: DataBundle) -> DepthModule:
        offset = _offset(run_card(cfg.pretrained, "depth"), data)
        options = config_task_options(cfg)
        return DepthModule(net, param_groups, cfg.optimizer, cfg.schedule, cfg.warmup_epochs, options, offset)

    def card_fields(self, cfg: TrainConfig, data: DataBundle, info: BackboneInfo) -> dict:
        low, high = data.train.depth_range()
        parent = run_card(cfg.pretrained, "depth")
        extras = config_task_options(cfg).model_dump() | {
            "log_depth_offset": _offset(parent, data),
            "train_depth_range": [low, high],
            "parent_run": str(Path(cfg.pretrained).resolve().parent) if parent is not None else None,
        }
        return {"class_names": ["depth"], "img_size": cfg.img_size, "mean": list(info.mean), "std": list(info.std),
                "extras": extras}  # fmt: skip

    def evaluate(self, model: nn.Module, card: ModelCard, split: DepthSet, progress: bool = False):
        start = time.perf_counter()
        predictor = DepthPredictor(model, card)
        predicted = predictor.predict(split.images)
        seconds = time.perf_counter() - start
        options = card_task_options(card)
        metrics = scores_record(predicted, split, options.max_depth)
        metrics |= {"n_samples": len(split), "units": options.units,
                    "images_per_second": len(split) / seconds if seconds > 0 else None}  # fmt: skip
        parent_predicted = None
        parent = parent_network(card)
        if parent is not None:
            parent_predictor = DepthPredictor(*parent)
            # scored as this run is: with its test-time symmetries where the parent was trained on them
            parent_predictor.symmetries = predictor.symmetries and parent_predictor.trained_on_symmetries
            parent_predicted = parent_predictor.predict(split.images)
            parent_scores = scores_record(parent_predicted, split, options.max_depth)
            parent_scores.pop("per_image")
            metrics["parent"] = parent_scores | {
                "run": card.extras["parent_run"],
                "test_symmetries": parent_predictor.symmetries,
            }
        return metrics, DepthPredictions(split.ids, example_arrays(split, predicted, parent_predicted))

    def load_split(self, spec: str, card: ModelCard, strict: bool = False) -> DepthSet:
        return load_depth(spec, strict, png_scale=card_task_options(card).png_scale)

    def write_predictions(self, run_dir: Path, predictions: DepthPredictions) -> None:
        write_arrays(Path(run_dir) / DEPTH_EXAMPLES, predictions.examples)

    def predictor(self, model: nn.Module, card: ModelCard, device: str | None = None) -> DepthPredictor:
        return DepthPredictor(model, card, device)

    def learning_warnings(self, metrics: dict, model: nn.Module, cfg: TrainConfig) -> list[str]:
        median_scaled = metrics.get("median_scaled", {}).get("delta_1")
        if median_scaled is None or median_scaled >= 0.3:
            return []
        return [f"only {median_scaled:.0%} of pixels are within 25% of the true depth even after median scaling: "
                "train longer (--epochs) or check the depth maps' units (--png-scale)"]  # fmt: skip

    def report_sections(self, run_dir: Path, metrics: dict) -> list[str]:
        from .report import depth_section

        return [depth_section(run_dir, metrics)]


def with_rehearsal(train: DepthSet, options: DepthOptions, strict: bool, seed: int) -> DepthSet:
    """``train`` and a seeded draw (made once, fixed over the epochs) of ``options.rehearse``'s
    images: rehearsal, so fine-tuning on a few images of a new style keeps seeing the style the
    parent learned from. Not in Mahmood et al.; 1:1 by default (``rehearse_images``). With
    ``rehearse_each_epoch`` the whole of ``rehearse`` joins as a pool and each epoch draws its own
    ``rehearse_images`` of it (experience replay from the whole set, at the same cost per epoch)."""
    try:
        pool = load_depth(options.rehearse, strict, png_scale=options.png_scale)
    except FewlabelError as exc:
        raise FewlabelError(f"--rehearse: {exc}") from None
    per_epoch = min(options.rehearse_images or len(train), len(pool))
    record = {"data": options.rehearse, "images": per_epoch}
    if options.rehearse_each_epoch:
        joined = train.joined(pool)
        joined.replay = (len(pool), per_epoch)
        record["drawn_each_epoch_from"] = len(pool)
    else:
        joined = train.joined(random_subset(pool, per_epoch, seed + 2))
    joined.source = train.source | {"rehearsal": record}
    return joined


def _offset(parent: ModelCard | None, data: DataBundle) -> float:
    """The log-depth offset the network's output is added to: the parent run's when fine-tuning
    one (its output is trained on that scale), else the training depths' median."""
    if parent is not None:
        return float(parent.extras.get("log_depth_offset", 0.0))
    return median_offset(data.train.median_depth())


def scores_record(predicted: list[np.ndarray], split: DepthSet, max_depth: float | None) -> dict:
    """metrics.json's depth scores: the absolute errors at the top level, the median-scaled ones
    and the scaling factors' median and spread under ``median_scaled``, and each image's errors
    and factor (``scale``) under ``per_image``."""
    true = [d[0].numpy() for d in split.depths]
    scores = depth_scores(predicted, true, max_depth)
    absolute, scaled = scores["absolute"], scores["median_scaled"]
    per_image = [
        {"id": image_id, **(a or {}), **{k if k == "scale" else f"{k}_median_scaled": v for k, v in (s or {}).items()}}
        for image_id, a, s in zip(split.ids, absolute.pop("per_image"), scaled.pop("per_image"), strict=True)
    ]
    return {k: absolute[k] for k in ERROR_KEYS} | {
        "images_scored": absolute["images_scored"],
        "median_scaled": {k: scaled[k] for k in ERROR_KEYS + SCALE_KEYS},
        "per_image": per_image,
    }


def parent_network(card: ModelCard):
    """(model, card) of the depth run this model was fine-tuned from, when it is still there."""
    from ..methods import load_network
    from ..rundir import model_dir

    folder = card.extras.get("parent_run")
    if not folder or not Path(folder).is_dir():
        return None
    return load_network(model_dir(folder))


def example_arrays(split: DepthSet, predicted: list[np.ndarray], parent: list[np.ndarray] | None) -> dict:
    """Up to EXAMPLES evaluation images (top-left EXAMPLE_SIDE square) with true, predicted and
    (when fine-tuned) the parent's depth."""
    arrays = {}
    for k in range(min(EXAMPLES, len(split))):
        h, w = (min(EXAMPLE_SIDE, n) for n in split.images[k].shape[-2:])
        arrays[f"image_{k}"] = split.images[k][:, :h, :w].permute(1, 2, 0).numpy()
        arrays[f"true_{k}"] = split.depths[k][0, :h, :w].numpy()
        arrays[f"predicted_{k}"] = predicted[k][:h, :w].astype(np.float32)
        if parent is not None:
            arrays[f"parent_{k}"] = parent[k][:h, :w].astype(np.float32)
    return arrays

"""The Python API; the CLI is a thin shell over these functions.

import fewlabel
result = fewlabel.train("fashion-mnist-small", out="runs/fashion", strategy="linear-probe", img_size=64)
predictor = fewlabel.load("runs/fashion")
predictor.predict(["shoe.png"], top_k=3)
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image

from .config import TrainConfig, load_config, make_config, merge_options, read_config_file
from .data.builtin import BUILTIN_DATASETS
from .data.images import ImageDecodeError, decode_image, pil_to_array, resize_to_square
from .data.imageset import ImageSet
from .data.sources import load_data, load_pool
from .data.splits import align_classes, random_subset
from .data.transforms import build_transform
from .distributed import is_rank_zero
from .errors import FewlabelError, unknown_choice
from .evaluate import aggregate_seeds, classification_metrics
from .evaluate.predictions import FILE as PREDICTIONS_FILE
from .evaluate.predictions import Predictions, write_predictions
from .fileio import write_json, write_yaml
from .models import OFFLINE_WEIGHTS, ModelCard, create_backbone, list_backbones, load_model_files, save_model_files
from .models.files import WEIGHTS_FILE
from .train.engine import CHECKPOINT, Engine, check_image_size, check_logger_available, prepare_data
from .train.inference import batched_outputs, pre_logits

log = logging.getLogger("fewlabel")
RUN_CONFIG_KEYS_FREE_ON_RESUME = {"progress", "workers", "accelerator", "devices", "logger"}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    config: TrainConfig


def build_config(
    data: str | None = None, config: TrainConfig | str | Path | None = None, **options: Any
) -> TrainConfig:
    """Resolve a config: explicit options override the config (object or YAML file) and defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    if data is not None:
        options["data"] = data
    if isinstance(config, TrainConfig):
        return make_config(merge_options(config.model_dump(), options))
    if config is not None:
        return load_config(config, options)
    if "data" not in options:
        raise FewlabelError("No DATA given: pass a folder, a CSV, or a built-in name such as 'fashion-mnist-small'.")
    return make_config(options, "options")


def train(
    data: str | None = None,
    out: str | Path = "runs/run",
    *,
    config: TrainConfig | str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: list[L.Callback] | None = None,
    **options: Any,
) -> TrainResult:
    """Fine-tune a backbone on DATA and write a run directory (see DESIGN.md) to ``out``.

    With several ``seeds`` each seed gets ``out/seed-<s>`` and ``out/metrics.json`` holds the
    mean, standard deviation and 95% interval of every figure.
    """
    cfg = build_config(data, config, **options)
    check_logger_available(cfg.logger)
    run_dir = Path(out)
    if is_rank_zero():  # under DDP the other processes train alongside but write nothing
        _prepare_run_dir(run_dir, cfg, overwrite, resume)
        write_yaml(run_dir / "config.yaml", cfg.to_yaml_dict())
    seeds = cfg.seed_list
    if len(seeds) == 1:
        metrics = _train_one_seed(cfg, seeds[0], run_dir, resume, callbacks)
    else:
        per_seed = {s: _train_one_seed(cfg, s, run_dir / f"seed-{s}", resume, callbacks) for s in seeds}
        metrics = aggregate_seeds(per_seed) | {"eval_data": per_seed[seeds[0]]["eval_data"]}
        if is_rank_zero():
            write_json(run_dir / "metrics.json", metrics)
            _finish(run_dir, cfg)
    return TrainResult(run_dir, metrics, cfg)


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise FewlabelError("Use either --overwrite or --resume, not both.")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if not exists:
        if resume:
            raise FewlabelError(f"--resume: run directory '{run_dir}' does not exist or is empty.")
        run_dir.mkdir(parents=True, exist_ok=True)
        return
    if overwrite:
        shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        return
    if not resume:
        raise FewlabelError(
            f"Run directory '{run_dir}' already exists; pass --overwrite to replace it or --resume to continue it."
        )
    previous = read_config_file(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    changes = config_changes(previous, cfg)
    if changes:
        raise FewlabelError(f"--resume: '{run_dir}' was started with another config ({changes}); use --overwrite.")


def config_changes(previous: dict, cfg: TrainConfig) -> str:
    """The settings that differ between a saved config and ``cfg``, as ``key: old -> new``
    (empty when none); settings that do not change results (progress, workers, ...) are ignored."""
    current = cfg.to_yaml_dict()
    changed = sorted(
        k for k, v in current.items() if k not in RUN_CONFIG_KEYS_FREE_ON_RESUME and previous.get(k, v) != v
    )
    return ", ".join(f"{k}: {previous.get(k)!r} -> {current[k]!r}" for k in changed)


def _train_one_seed(
    cfg: TrainConfig, seed: int, run_dir: Path, resume: bool, callbacks: list[L.Callback] | None
) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    data = prepare_data(cfg, seed)
    if cfg.method is None:
        model, info = create_backbone(
            cfg.model, cfg.pretrained, data.train.num_classes, cfg.dropout, class_names=data.class_names, head=cfg.head
        )
        check_image_size(model, cfg.img_size, cfg.model)
    writes = is_rank_zero()
    if writes:
        write_json(
            run_dir / "splits.json",
            {
                "seed": seed,
                "summary": data.summary(),
                "labeled": data.train.ids,
                "val": data.val.ids if data.val is not None else [],
                "unlabeled": data.unlabeled_ids,
            },
        )
    if cfg.method is None:
        resume_here = resume and (run_dir / CHECKPOINT).is_file()
        result = Engine(cfg, seed, run_dir, callbacks).fit(model, info, data, resume_here)
        timing = {"train_seconds": result.train_seconds, "train_images_per_second": result.images_per_second}
    else:
        from .semi.run import fit_semi

        model, info, timing = fit_semi(cfg, seed, run_dir, data, resume)
    card = ModelCard(
        cfg.model,
        data.class_names,
        cfg.img_size,
        list(info.mean),
        list(info.std),
        drop_rate=cfg.dropout,
        pretrained=info.weights,
        method=cfg.method or "supervised",
        module_stages=cfg.semi.module_stages if cfg.method == "trinet" else 0,
        head_hidden=cfg.semi.head_hidden if cfg.method == "trinet" else 0,
        head_dropout=cfg.semi.head_dropout if cfg.method == "trinet" else 0.0,
    )
    predictor = Predictor(model, card)
    probs = predictor.predict_proba(data.eval, progress=cfg.progress)
    metrics = classification_metrics(probs, data.eval.labels, data.class_names)
    metrics |= {
        "eval_data": data.eval_name,
        "seed": seed,
        "method": cfg.method or "supervised",
    } | timing
    if writes:
        save_model_files(run_dir, model, card)
        predictions = Predictions(data.eval.ids, probs, data.eval.labels, data.class_names)
        write_predictions(run_dir / PREDICTIONS_FILE, predictions)
        write_json(run_dir / "metrics.json", metrics)
        _finish(run_dir, cfg)
    return metrics


def _finish(run_dir: Path, cfg: TrainConfig) -> None:
    """Write the report; with ``--logger mlflow`` also record the run in MLflow."""
    from .report import write_report

    write_report(run_dir)
    if cfg.logger == "mlflow":
        from .tracking import log_run_to_mlflow

        run_id = log_run_to_mlflow(run_dir, cfg.mlflow_uri)
        log.info("recorded in MLflow as run %s", run_id)


class Predictor:
    """A trained model with its preprocessing; built by :func:`load` from a run directory."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, device: str | None = None) -> None:
        self.model = model.eval()
        self.card = card
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.transform = build_transform("none", card.img_size, card.mean, card.std, train=False)

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    def predict_proba(self, images: ImageSet | list, progress: bool = False) -> torch.Tensor:
        """Class probabilities (N x C) for an ImageSet or a list of paths, PIL images or arrays."""
        image_set = images if isinstance(images, ImageSet) else self._to_image_set(images)
        self.model.to(self.device)
        logits = batched_outputs(
            self.model, image_set, self.transform, 128, self.device, desc="evaluating", progress=progress
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


def resolve_model_dir(run_dir: str | Path) -> Path:
    """A run directory with the model, or the first seed of a multi-seed run."""
    run_dir = Path(run_dir)
    if (run_dir / WEIGHTS_FILE).is_file():
        return run_dir
    seeds = sorted(run_dir.glob("seed-*/" + WEIGHTS_FILE))
    if seeds:
        return seeds[0].parent
    raise FewlabelError(f"'{run_dir}' holds no model ({WEIGHTS_FILE} missing); train one with 'fewlabel train'.")


def load(run_dir: str | Path, device: str | None = None) -> Predictor:
    """Load a trained model from a run directory (only its model files are read)."""
    model, card = load_model_files(resolve_model_dir(run_dir))
    return Predictor(model, card, device)


def evaluate(run_dir: str | Path, data: str, out: str | Path | None = None, strict: bool = False) -> dict:
    """Metrics of a trained model on DATA, optionally written to ``out`` as JSON."""
    predictor = load(run_dir)
    images = align_classes(load_data(data, predictor.card.img_size, strict), predictor.class_names, "Evaluation")
    metrics = predictor.metrics(images, progress=True) | {"eval_data": data, "run": str(run_dir)}
    if out is not None:
        write_json(out, metrics)
    return metrics


def list_models(pattern: str = "") -> list[dict]:
    """Backbone names (timm's), each with whether ImageNet weights are available offline."""
    names = list_backbones(pattern)
    return [{"name": n, "offline_imagenet": n in OFFLINE_WEIGHTS and OFFLINE_WEIGHTS[n].is_installed()} for n in names]


def list_datasets() -> list[dict]:
    return [
        {"name": d.name, "splits": list(d.splits), "present": d.is_present(), "description": d.description}
        for d in BUILTIN_DATASETS.values()
    ]


def build_intermediate(
    data: str | None,
    out: str | Path,
    *,
    method: str = "clusters",
    unlabeled: str | None = None,
    pool_size: int | None = None,
    k: int = 20,
    descriptor: str = "handcrafted",
    keep_fraction: float = 0.8,
    generator: str | None = None,
    per_class: int = 100,
    options: dict | None = None,
    seed: int = 0,
    model: str = "efficientnet_lite0",
    pretrained: str = "imagenet",
    img_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build an intermediate dataset for stepwise fine-tuning and write it to ``out``.

    ``clusters``: K pseudo-classes from the unlabeled pool (``unlabeled`` if given, else DATA's
    training split, labels unused; ``pool_size`` draws a seeded random subset), written as an
    ImageFolder plus ``clusters.json``. ``synthetic``: ``per_class`` images per class from
    ``generator`` (``module:function``), written as ``labels.csv`` plus ``synthetic.json``.
    """
    from .stepwise.intermediate import cluster_pseudo_classes, describe, write_cluster_folder
    from .stepwise.synthetic import build_synthetic

    if method not in INTERMEDIATE_METHODS:
        raise unknown_choice("intermediate method", method, INTERMEDIATE_METHODS)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FewlabelError(f"Output folder '{out}' already exists; pass --overwrite to replace it.")
        shutil.rmtree(out)
    if method == "synthetic":
        if not generator:
            raise FewlabelError("--method synthetic needs --generator module:function.")
        return build_synthetic(generator, out, per_class, seed, options)
    if unlabeled is None and data is None:
        raise FewlabelError("--method clusters needs DATA or --unlabeled POOL: the images to group.")
    pool = random_subset(load_pool(unlabeled or data, img_size, progress=progress), pool_size, seed)

    def embed(images: ImageSet) -> torch.Tensor:
        backbone, info = create_backbone(model, pretrained, num_classes=2)
        transform = build_transform("none", img_size, info.mean, info.std, train=False)
        return batched_outputs(
            pre_logits(backbone.eval()), images, transform, desc="embedding the pool", progress=progress
        )

    groups = cluster_pseudo_classes(describe(pool, descriptor, embed), k, seed, keep_fraction)
    params = {
        "method": method,
        "k": k,
        "descriptor": descriptor,
        "keep_fraction": keep_fraction,
        "pool_size": pool_size,
        "seed": seed,
        "model": model if descriptor != "handcrafted" else None,
        "img_size": img_size,
    }
    return write_cluster_folder(pool, groups, out, params)


INTERMEDIATE_METHODS = ("clusters", "synthetic")

"""Render report.html from a run directory's files: metrics.json, predictions.csv, history.csv,
splits.json, config.yaml and the model files. Nothing comes from a training process's memory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from ..audit.calibration import reliability_bins
from ..audit.saliency import grad_cam
from ..data.sources import load_images_by_id
from ..data.transforms import build_transform
from ..evaluate.predictions import FILE as PREDICTIONS_FILE
from ..evaluate.predictions import Predictions, read_predictions
from ..fileio import read_json, write_text
from ..train.callbacks import read_history
from .figures import (
    confusion_figure,
    image_grid_figure,
    learning_curves_figure,
    reliability_figure,
    roc_figure,
)

log = logging.getLogger("fewlabel.report")
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "ece", "nll")
GALLERY_SIZE = 8
SALIENCY_SIZE = 8


def _environment() -> Environment:
    return Environment(loader=PackageLoader("fewlabel.report", "templates"), autoescape=select_autoescape())


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html``; every image is embedded, so the file stands alone."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    splits_path = run_dir / "splits.json"
    context = {
        "title": run_dir.name,
        "metrics": metrics,
        "rows": [
            {"name": k, "value": metrics.get(k), "sd": metrics.get(f"{k}_sd"), "ci": metrics.get(f"{k}_ci95")}
            for k in HEADLINE
            if k in metrics
        ],
        "per_class": metrics.get("per_class", {}),
        "per_seed": metrics.get("per_seed"),
        "confusion_counts": confusion_figure(metrics["confusion_matrix"], metrics["class_names"], False),
        "confusion_norm": confusion_figure(metrics["confusion_matrix"], metrics["class_names"], True),
        "curves": learning_curves_figure(read_history(run_dir / "history.csv")),
        "config": yaml.safe_dump(config, sort_keys=False),
        "data_summary": read_json(splits_path)["summary"] if splits_path.is_file() else None,
        "rounds": read_json(run_dir / "rounds.json") if (run_dir / "rounds.json").is_file() else None,
    }
    if (run_dir / PREDICTIONS_FILE).is_file():
        context |= _prediction_sections(run_dir, read_predictions(run_dir / PREDICTIONS_FILE))
    html = _environment().get_template("run.html").render(**context)
    return write_text(run_dir / "report.html", html)


def _prediction_sections(run_dir: Path, predictions: Predictions) -> dict:
    """Reliability diagram, ROC curves, the most confidently wrong images and Grad-CAM maps."""
    bins = reliability_bins(predictions.probs, predictions.labels)
    sections = {
        "reliability": reliability_figure(bins, bins.ece),
        "roc": roc_figure(predictions.probs, predictions.labels, predictions.class_names),
    }
    wrong = torch.nonzero(predictions.predicted != predictions.labels).flatten()
    right = torch.nonzero(predictions.predicted == predictions.labels).flatten()
    by_confidence = lambda idx: idx[predictions.confidence[idx].argsort(descending=True)]  # noqa: E731
    wrong, right = by_confidence(wrong)[:GALLERY_SIZE], by_confidence(right)
    if (run_dir / "model.safetensors").is_file():
        from ..models import load_model_files

        model, card = load_model_files(run_dir)
        chosen = torch.cat([wrong[: SALIENCY_SIZE // 2], right[: SALIENCY_SIZE - min(len(wrong), SALIENCY_SIZE // 2)]])
        sections["gallery"] = _gallery(predictions, wrong, card.img_size)
        sections["saliency"] = _saliency(predictions, chosen, model, card)
    return sections


def _title(predictions: Predictions, i: int) -> str:
    names = predictions.class_names
    return (
        f"true: {names[predictions.labels[i]]}\npred: {names[predictions.predicted[i]]} "
        f"({predictions.confidence[i]:.2f})"
    )


def _found_images(predictions: Predictions, indices: torch.Tensor, img_size: int) -> list[tuple[int, torch.Tensor]]:
    """(index, image) for the evaluation images that can still be loaded by their id."""
    images = load_images_by_id([predictions.ids[i] for i in indices.tolist()], img_size)
    return [(i, im) for i, im in zip(indices.tolist(), images, strict=True) if im is not None]


def _gallery(predictions: Predictions, indices: torch.Tensor, img_size: int) -> str | None:
    found = _found_images(predictions, indices, img_size)
    if not found:
        return None
    return image_grid_figure([im for _, im in found], [_title(predictions, i) for i, _ in found])


def _saliency(predictions: Predictions, indices: torch.Tensor, model, card) -> str | None:
    found = _found_images(predictions, indices, card.img_size)
    if not found:
        return None
    transform = build_transform("none", card.img_size, card.mean, card.std, train=False)
    batch = torch.stack([transform(im) for _, im in found])
    try:
        maps = grad_cam(model, batch)
    except (RuntimeError, AttributeError) as exc:  # a model without a 2-D feature map (e.g. some ViTs)
        log.warning("no Grad-CAM for %s: %s", card.arch, exc)
        return None
    return image_grid_figure([im for _, im in found], [_title(predictions, i) for i, _ in found], list(maps))

"""The classification sections of report.html: confusion matrices, per-class figures,
calibration and ROC, the most confidently wrong images, Grad-CAM and the data summary. Built
from metrics.json, predictions.csv, splits.json and the model files."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..audit.calibration import reliability_bins
from ..audit.saliency import grad_cam
from ..data.augment import BatchTransform
from ..data.sources import load_images_by_id
from ..evaluate.predictions import Predictions, read_predictions
from ..methods import load_network
from ..rundir import PREDICTIONS, ROBUSTNESS, has_model, read_infoplane, read_infoplane_audit, read_record, read_splits
from .figures import confusion_figure, image_grid_figure, infoplane_figure, reliability_figure, roc_figure
from .html import _environment

log = logging.getLogger("fewlabel.report")
GALLERY_SIZE = 8
SALIENCY_SIZE = 8


def sections(run_dir: Path, metrics: dict) -> list[str]:
    """The classification part of the report, as one HTML section."""
    splits = read_splits(run_dir)
    context = {
        "per_class": metrics.get("per_class", {}),
        "confusion_counts": confusion_figure(metrics["confusion_matrix"], metrics["class_names"], False),
        "confusion_norm": confusion_figure(metrics["confusion_matrix"], metrics["class_names"], True),
        "data_summary": splits.get("summary") if splits else None,
    }
    if (run_dir / PREDICTIONS).is_file():
        context |= _prediction_sections(run_dir, read_predictions(run_dir / PREDICTIONS))
    sections = [
        _environment().get_template("classification.html").render(**context),
        *_perturbed(run_dir),
        *_robustness(run_dir),
    ]
    return sections + _information_plane(run_dir, metrics)


def _information_plane(run_dir: Path, metrics: dict) -> list[str]:
    """The section of ``--track-infoplane``: the run's trajectory, its final point by both
    estimators, what tracking cost, and its place in the last ``audit infoplane`` comparison."""
    tracked = read_infoplane(run_dir)
    if not tracked or not tracked["points"]:
        return []
    final = {p["estimator"]: p for p in tracked["points"]}
    seconds, train = tracked["seconds"], metrics.get("train_seconds") or 0.0
    context = {
        "final": final,
        "epochs": sum(p["estimator"] == "binning" for p in tracked["points"]),
        "seconds": seconds,
        "share": seconds / train if train else None,
        "figure": infoplane_figure({str(run_dir): tracked}),
        "comparison": read_infoplane_audit(run_dir),
        "warning": tracked.get("warning"),
    }
    return [_environment().get_template("infoplane.html").render(**context)]


def _perturbed(run_dir: Path) -> list[str]:
    """Accuracy under noise and FGSM, measured when the run was trained (robustness.json)."""
    record = read_record(run_dir, ROBUSTNESS)
    return [_environment().get_template("perturbed.html").render(r=record)] if record else []


def _robustness(run_dir: Path) -> list[str]:
    """The UAP audit's section, when ``fewlabel audit uap`` wrote its results into the run."""
    import base64

    from ..fileio import read_json

    folder = run_dir / "audit" / "uap"
    if not (folder / "uap.json").is_file():
        return []
    uap = read_json(folder / "uap.json")
    key = "fooling_rate" if uap.get("target") is None else "targeted_success_rate"
    figure = base64.b64encode((folder / "uap.png").read_bytes()).decode() if (folder / "uap.png").is_file() else None
    return [_environment().get_template("robustness.html").render(uap=uap, key=key, figure=figure)]


def _prediction_sections(run_dir: Path, predictions: Predictions) -> dict:
    """Reliability diagram, ROC curves, the most confidently wrong images and Grad-CAM maps."""
    bins = reliability_bins(predictions.probs, predictions.labels)
    found = {
        "reliability": reliability_figure(bins, bins.ece),
        "roc": roc_figure(predictions.probs, predictions.labels, predictions.class_names),
    }
    wrong = torch.nonzero(predictions.predicted != predictions.labels).flatten()
    right = torch.nonzero(predictions.predicted == predictions.labels).flatten()
    by_confidence = lambda idx: idx[predictions.confidence[idx].argsort(descending=True)]  # noqa: E731
    wrong, right = by_confidence(wrong)[:GALLERY_SIZE], by_confidence(right)
    if has_model(run_dir):
        model, card = load_network(run_dir)
        chosen = torch.cat([wrong[: SALIENCY_SIZE // 2], right[: SALIENCY_SIZE - min(len(wrong), SALIENCY_SIZE // 2)]])
        found["gallery"] = _gallery(predictions, wrong, card.img_size)
        found["saliency"] = _saliency(predictions, chosen, model, card)
    return found


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
    transform = BatchTransform("none", card.img_size, card.mean, card.std, train=False)
    batch = transform(torch.stack([im.expand(3, -1, -1) for _, im in found]))
    try:
        maps = grad_cam(model, batch)
    except (RuntimeError, AttributeError) as exc:  # a model without a 2-D feature map (e.g. some ViTs)
        log.warning("no Grad-CAM for %s: %s", card.arch, exc)
        return None
    return image_grid_figure([im for _, im in found], [_title(predictions, i) for i, _ in found], list(maps))

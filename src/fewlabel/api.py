"""The Python API; the CLI is a thin shell over these functions.

import fewlabel
result = fewlabel.train("fashion-mnist-small", out="runs/fashion", strategy="linear-probe", img_size=64)
predictor = fewlabel.load("runs/fashion")
predictor.predict(["shoe.png"], top_k=3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from .config import TrainConfig, make_config, merge_options, method_section, read_config_file
from .data.builtin import BUILTIN_DATASETS
from .errors import FewlabelError
from .fileio import write_json
from .methods import load_network
from .models import OFFLINE_WEIGHTS, list_backbones
from .models.files import read_card
from .rundir import ONNX, WEIGHTS, model_dir
from .runner import TrainResult, run_training
from .stepwise import INTERMEDIATE_METHODS
from .stepwise.build import build_intermediate
from .tasks import get_task
from .tasks.classification import Predictor

__all__ = [
    "INTERMEDIATE_METHODS",
    "Predictor",
    "TrainResult",
    "build_config",
    "build_intermediate",
    "evaluate",
    "export",
    "list_datasets",
    "list_models",
    "load",
    "load_classifier",
    "quantize",
    "train",
]


def build_config(
    data: str | None = None,
    config: TrainConfig | str | Path | None = None,
    *,
    default_method: str | None = None,
    **options: Any,
) -> TrainConfig:
    """Resolve a config: explicit options override the config (object or YAML file), which
    overrides ``default_method`` (the method when neither names one) and the defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    if data is not None:
        options["data"] = data
    if isinstance(config, TrainConfig):
        return make_config(merge_options(config.model_dump(), options))
    base = read_config_file(config) if config is not None else {}
    if default_method and "method" not in options and "method" not in base:
        options["method"] = method_section(default_method)
    if config is not None:
        return make_config(merge_options(base, options), str(config))
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
    default_method: str | None = None,
    **options: Any,
) -> TrainResult:
    """Train on DATA and write a run directory (see DESIGN.md) to ``out``.

    ``options`` are any config keys (``fewlabel.config.TrainConfig``) and the chosen method's
    options (``method="trinet", rounds=4``). With several ``seeds`` each seed gets
    ``out/seed-<s>`` and ``out/metrics.json`` holds the mean, standard deviation and 95%
    interval of every figure.
    """
    cfg = build_config(data, config, default_method=default_method, **options)
    return run_training(cfg, out, overwrite=overwrite, resume=resume, callbacks=callbacks)


def quantize(
    run_dir: str | Path,
    data: str | None = None,
    out: str | Path = "runs/quantized",
    *,
    config: TrainConfig | str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    **options: Any,
) -> TrainResult:
    """Quantization-aware training (method ``qat``) of the float run ``run_dir`` on DATA: the
    run's architecture, weights and image size; ``options`` as for :func:`train`
    (``weight_bits=2, act_bits=2, qat_schedule="hlhl"``)."""
    parent = model_dir(run_dir)
    card = read_card(parent)
    given = options.get("model")
    if given and given != card.arch:
        raise FewlabelError(f"model '{given}': quantize keeps the run's architecture ({card.arch}); leave it out.")
    options |= {"model": card.arch, "pretrained": str(parent / WEIGHTS)}
    options.setdefault("img_size", card.img_size)
    return train(data, out, config=config, overwrite=overwrite, resume=resume, default_method="qat", **options)


def export(run_dir: str | Path, out: str | Path | None = None, fmt: str = "onnx") -> dict:
    """Export a run's network (float, or quantized by ``qat`` as QCDQ) to ONNX, by default as
    ``model.onnx`` beside its weights; returns the export's record (see
    :func:`fewlabel.quant.export.export_model`)."""
    if fmt != "onnx":
        raise FewlabelError(f"--format '{fmt}' is not accepted; use onnx.")
    from .quant.export import export_model

    folder = model_dir(run_dir)
    model, card = load_network(folder)
    return export_model(model, card, Path(out) if out else folder / ONNX)


def load(run_dir: str | Path, device: str | None = None):
    """Load a trained model from a run directory (only its model files are read): the task's
    predictor (classification: :class:`Predictor`)."""
    model, card = load_network(model_dir(run_dir))
    return get_task(card.task).predictor(model, card, device)


def load_classifier(run_dir: str | Path, device: str | None = None) -> Predictor:
    """:func:`load` for commands that speak of classes (predict, serve): another task's run is
    refused in one line."""
    predictor = load(run_dir, device)
    if not isinstance(predictor, Predictor):
        task = predictor.card.task if hasattr(predictor, "card") else type(predictor).__name__
        raise FewlabelError(f"'{run_dir}' is a {task} run; predict and serve take classification runs.")
    return predictor


def evaluate(run_dir: str | Path, data: str, out: str | Path | None = None, strict: bool = False) -> dict:
    """Metrics of a trained model on DATA, optionally written to ``out`` as JSON."""
    model, card = load_network(model_dir(run_dir))
    task = get_task(card.task)
    split = task.load_split(data, card, strict)
    metrics, _ = task.evaluate(model, card, split, progress=True)
    metrics |= {"eval_data": data, "run": str(run_dir)}
    if out is not None:
        write_json(out, metrics)
    return metrics


def list_models(pattern: str = "") -> list[dict]:
    """Backbones (timm's), each with whether ImageNet weights are available offline."""
    names = list_backbones(pattern)
    return [{"name": n, "offline_imagenet": n in OFFLINE_WEIGHTS and OFFLINE_WEIGHTS[n].is_installed()} for n in names]


def list_datasets() -> list[dict]:
    return [
        {"name": d.name, "splits": list(d.splits), "present": d.is_present(), "description": d.description}
        for d in BUILTIN_DATASETS.values()
    ]

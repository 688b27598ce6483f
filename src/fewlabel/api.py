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
from .runner import TrainResult, evaluate_run, run_training
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
    "detect_nuclei",
    "evaluate",
    "export",
    "list_datasets",
    "list_models",
    "load",
    "load_classifier",
    "nuclei_transfer",
    "quantize",
    "train",
    "train_nuclei",
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
    target = Path(out) if out else folder / ONNX
    check_replaceable_onnx(target)
    return export_model(model, card, target)


def check_replaceable_onnx(path: Path) -> None:
    """An export replaces an existing file only when it is an ONNX model (an earlier export);
    anything else at ``path`` is refused, named."""
    if not path.exists():
        return
    if path.is_dir():
        raise FewlabelError(f"--out '{path}' is a folder; give the .onnx file to write.")
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:
        raise FewlabelError(
            f"--out '{path}' exists and is not an ONNX model (an earlier export); choose another file."
        ) from None


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


def evaluate(
    run_dir: str | Path, data: str, out: str | Path | None = None, strict: bool = False, **settings: Any
) -> dict:
    """Metrics of a trained model on DATA, optionally written to ``out`` as JSON; ``settings``
    override the task options the model stored, for this evaluation (nuclei: ``match_radius``)."""
    metrics = evaluate_run(run_dir, data, strict, settings)
    if out is not None:
        write_json(out, metrics)
    return metrics


def train_nuclei(data: str | None = None, out: str | Path = "runs/nuclei", **options: Any) -> TrainResult:
    """:func:`train` of the nuclei task; without a ``config``, ``TRAIN_DEFAULTS`` (full
    fine-tuning of 128-pixel crops at lr 1e-3) fill in what ``options`` leave out."""
    from .nuclei.options import TRAIN_DEFAULTS

    return _train_task("nuclei", TRAIN_DEFAULTS, data, out, options)


def detect_nuclei(
    run_dir: str | Path,
    images: list[str | Path],
    out: str | Path = "detections.csv",
    overlays: str | Path | None = None,
    threshold: float | None = None,
) -> dict:
    """Nuclei in image files with a nuclei run's detector: ``out`` (CSV ``image,x,y,score``)
    and an overlay PNG per image; returns the count per image."""
    from .nuclei.workflows import detect_files

    return detect_files(_load_task_run(run_dir, "nuclei", "nuclei detect"), images, out, overlays, threshold)


def render_depth(out: str | Path, style: str = "cinematic", n: int = 200, seed: int = 0, size: int = 256,
                 test_share: float = 0.2, overwrite: bool = False, patients: int | None = None,
                 outside: str = "all") -> dict:  # fmt: skip
    """Rendered colon-like scenes with exact depth (see :mod:`fewlabel.depth.render`) in
    ``out/train`` and ``out/test`` (held-out anatomy and lighting); ``patients``: the training
    images show only that many colons, each from several places and lightings; returns
    render.json's record."""
    from .depth.render import write_renders

    return write_renders(Path(out), style, n, overwrite=overwrite, seed=seed, size=size, test_share=test_share,
                         patients=patients, outside=outside)  # fmt: skip


def train_depth(data: str | None = None, out: str | Path = "runs/depth", init: str | Path | None = None,
                **options: Any) -> TrainResult:  # fmt: skip
    """:func:`train` of the depth task; ``init`` a depth run to fine-tune (its whole network, its
    depth offset, and a comparison against it in the report). Without a ``config``,
    ``TRAIN_DEFAULTS`` (full fine-tuning at 128 px, lr 1e-3) fill in what ``options`` leave out."""
    from .depth.options import TRAIN_DEFAULTS

    if init is not None:
        parent = model_dir(init)
        card = read_card(parent)
        if card.task != "depth":
            raise FewlabelError(f"--init '{init}' is a {card.task} run; the depth task fine-tunes a depth run.")
        given = options.get("model")
        if given and given != card.arch:
            raise FewlabelError(f"model '{given}': --init keeps the run's architecture ({card.arch}); leave it out.")
        options = options | {"model": card.arch, "pretrained": str(parent / WEIGHTS)}
    return _train_task("depth", TRAIN_DEFAULTS, data, out, options)


def _train_task(task: str, defaults: dict, data: str | None, out: str | Path, options: dict) -> TrainResult:
    """:func:`train` of ``task``; its ``defaults`` fill in what ``options`` leave out, unless a
    ``config`` is given (the config's values stand)."""
    chosen = {} if options.get("config") is not None else defaults
    return train(data, out, **(chosen | options | {"task": task}))


def predict_depth(run_dir: str | Path, images: list[str | Path], out: str | Path | None = None,
                  test_symmetries: bool | None = None) -> list[dict]:  # fmt: skip
    """Depth maps of image files with a depth run: ``<out or image stem>-depth.png`` (colour-mapped)
    and ``.npy`` (float32, the card's units) per image; returns their paths and depth range.
    ``test_symmetries`` averages over each image's 8 symmetries (default: the run's setting)."""
    from .depth.workflows import predict_files

    predictor = _load_task_run(run_dir, "depth", "depth predict")
    if test_symmetries is not None:
        predictor.symmetries = test_symmetries
    return predict_files(predictor, images, out)


def _load_task_run(run_dir: str | Path, task: str, command: str):
    """:func:`load` for a command of one task: another task's run is refused in one line."""
    predictor = load(run_dir)
    if predictor.card.task != task:
        raise FewlabelError(f"'{run_dir}' is a {predictor.card.task} run; {command} takes a {task} run.")
    return predictor


def nuclei_transfer(
    datasets: list[str], out: str | Path = "runs/transfer", few: int = 5, few_val: int = 1, seed: int = 0, **options
) -> dict:
    """Xing et al.'s transfer experiment over DATA folders (see :mod:`fewlabel.nuclei.transfer`);
    ``seed`` draws the few target images and seeds every run."""
    from .nuclei.transfer import run_transfer

    options = options | {"seed": seed}

    def one_run(data: str, run_out: Path, **run_options) -> dict:
        return train_nuclei(data, run_out, overwrite=True, **run_options).metrics

    return run_transfer(datasets, out, one_run, few=few, few_val=few_val, seed=seed, options=options)


def list_models(pattern: str = "") -> list[dict]:
    """Backbones (timm's), each with whether ImageNet weights are available offline."""
    names = list_backbones(pattern)
    return [{"name": n, "offline_imagenet": n in OFFLINE_WEIGHTS and OFFLINE_WEIGHTS[n].is_installed()} for n in names]


def list_datasets() -> list[dict]:
    return [
        {"name": d.name, "splits": list(d.splits), "present": d.is_present(), "description": d.description}
        for d in BUILTIN_DATASETS.values()
    ]

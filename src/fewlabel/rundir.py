"""The run directory, the contract between commands: every file and folder name, and their readers
and writers. No other module spells a file name of a run.

A command that writes a run directory writes through these functions; a command that reads one
(report, tracking, eval, a later recipe stage) reads through them, so that neither needs the
other's code. Nothing here imports torch or Lightning.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FewlabelError
from .fileio import read_json, read_yaml, write_json, write_text, write_yaml
from .outputs import MARKER, register_output_kind

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
CARD = "model.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
SPLITS = "splits.json"
REPORT = "report.html"
ROUNDS = "rounds.json"
INFOPLANE = "infoplane.json"
DISTILL = "distill.json"  # the distill method: teacher, layer pairs, sizes, terms
QUANT = "quant.json"  # the qat method: float parent, precision, schedule stages, deployment figures
ONNX = "model.onnx"  # fewlabel export, and the qat method's deployment check
DETECTIONS = "detections.csv"  # the nuclei task: one row per detected or missed nucleus of the evaluation images
NUCLEI_EXAMPLES = "nuclei-examples.npz"  # the nuclei task: a few evaluation crops, their maps and centres
DEPTH_EXAMPLES = "depth-examples.npz"  # the depth task: a few evaluation images, true and predicted depth
RENDER_RECORD = "render.json"  # fewlabel depth render: style, ranges, counts and parameters of rendered scenes
TRANSFER = "transfer.json"  # fewlabel nuclei transfer: the F1 matrix, fine-tuning and mixing results
ROBUSTNESS = "robustness.json"  # accuracy under Gaussian noise and FGSM, written with the metrics
INFOPLANE_AUDIT = f"audit/{INFOPLANE}"  # where ``audit infoplane`` leaves a run its comparison
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINTS}/last.ckpt"
STATE = f"{CHECKPOINTS}/state.pt"
STATE_WEIGHTS = f"{CHECKPOINTS}/weights.safetensors"  # the network after the last finished fit, for --pretrained
LOGS = "logs"
AUDIT = "audit"
STAGE = "stage.json"
RECIPE = "recipe.yaml"
SUMMARY = "summary.json"
CLUSTERS_MARKER = "clusters.json"  # built data: written last, its presence marks a finished build
SYNTHETIC_MARKER = "synthetic.json"
BUILT_LABELS = "labels.csv"
HISTORY_COLUMNS = ("phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


@dataclass(frozen=True)
class Entry:
    """One file or folder: where it lives, what writes it, what reads it, what it holds."""

    path: str
    scope: str  # "run", "semi run", "recipe"
    written_by: str
    read_by: str
    holds: str


FILES: tuple[Entry, ...] = (
    Entry(
        CONFIG,
        "run",
        "fewlabel train/semi (runner)",
        "--config, --resume, report, MLflow",
        "the resolved config: common options and the method section; enough to re-run",
    ),
    Entry(
        WEIGHTS,
        "run",
        "runner",
        "load, eval, predict, serve, report (Grad-CAM), later stages",
        "weights (safetensors: loading never unpickles)",
    ),
    Entry(
        CARD,
        "run",
        "runner",
        "every reader of the model",
        "task, method, arch, class names, img_size, mean/std, method and task extras, version",
    ),
    Entry(
        METRICS,
        "run",
        "runner (the task's metrics)",
        "report, MLflow, recipe summary, the CLI",
        "final metrics on the evaluation data, timing; with seeds, mean, sd and 95% interval",
    ),
    Entry(
        HISTORY,
        "run",
        "engine (one row per epoch of every fit)",
        "report (learning curves), MLflow",
        "phase, epoch, train/validation loss and accuracy, learning rate, seconds",
    ),
    Entry(
        PREDICTIONS,
        "run",
        "the task (classification)",
        "report, audits",
        "one row per evaluation image: id, true, predicted, confidence, probabilities",
    ),
    Entry(
        SPLITS,
        "run",
        "runner",
        "report (data section), a person",
        "labelled, validation and unlabeled ids of this seed, class counts, duplicates across splits",
    ),
    Entry(REPORT, "run", "report.write_report (from the files above)", "a person", "one self-contained HTML page"),
    Entry(
        LAST_CHECKPOINT,
        "run",
        "engine, end of every epoch",
        "engine on --resume",
        "Lightning checkpoint of the fit in progress (tensors only; loaded with weights_only)",
    ),
    Entry(
        STATE,
        "run",
        "engine, after every finished fit",
        "engine on --resume",
        "weights after the last finished fit, its name, throughput so far, the method's state, and the run's "
        "architecture, class names and settings hash (checked by --resume)",
    ),
    Entry(
        STATE_WEIGHTS,
        "run",
        "engine, from state.pt, when a message names it (a NaN loss, a refused --resume)",
        "--pretrained of a new run (after a NaN loss, or to change a setting)",
        "the network's weights after the last finished fit (safetensors)",
    ),
    Entry(
        MARKER,
        "every output folder",
        "fewlabel.outputs, first (kind, version) and when complete (entries)",
        "--overwrite, --resume (only fewlabel's own output of the same kind is replaced)",
        "the kind of output, fewlabel's version, whether it is complete, its top-level entries",
    ),
    Entry(
        LOGS + "/",
        "run",
        "Lightning's CSV or TensorBoard logger, per fit",
        "TensorBoard, a person",
        "per-step logs of each fit",
    ),
    Entry(
        AUDIT + "/",
        "run",
        "nothing yet: reserved for fewlabel audit (UAP, information plane)",
        "-",
        "one folder per audit of this run",
    ),
    Entry(
        "seed-<s>/",
        "run",
        "runner with several seeds",
        "report, load (first seed)",
        "one run directory per seed; the top level holds the aggregate metrics.json and report",
    ),
    Entry(
        ROUNDS,
        "semi run",
        "semi-supervised methods",
        "report, bench/semi.py",
        "per round: threshold, images examined, pseudo-labels proposed/removed/kept per module, "
        "their audited accuracy, and the evaluations after the initial fit and every round",
    ),
    Entry(
        ROBUSTNESS,
        "run",
        "runner (the task's robustness; --robustness-images, default 500)",
        "report, bench/distill.py",
        "accuracy of the trained model on a seeded draw of evaluation images: clean, under Gaussian noise "
        "(sigma 0.05, 0.1, 0.2) and under FGSM (epsilon 1, 2, 4, 8 /255)",
    ),
    Entry(
        DISTILL,
        "distill run",
        "the distill method",
        "report, bench/distill.py",
        "teacher run and architecture, loss terms and weights, temperature, LGG layer pairs (given or by depth), "
        "pool, parameters of teacher and student, warnings",
    ),
    Entry(
        DETECTIONS,
        "nuclei run",
        "the nuclei task",
        "a person, spreadsheets",
        "image, x, y, score, and status (matched, false positive, or missed true centre) at the chosen threshold",
    ),
    Entry(
        NUCLEI_EXAMPLES,
        "nuclei run",
        "the nuclei task",
        "report (overlays, proximity map next to its target)",
        "up to 4 evaluation crops (uint8), their predicted and target proximity maps, true and detected centres",
    ),
    Entry(
        DEPTH_EXAMPLES,
        "depth run",
        "the depth task",
        "report (image, true and predicted depth, error map; against the parent run)",
        "up to 4 evaluation images (uint8), their true and predicted depth (float32, the card's units), the parent's",
    ),
    Entry(
        RENDER_RECORD,
        "rendered depth data",
        "fewlabel depth render",
        "bench/depth.py, a person",
        "style, image size, field of view, units, training and held-out parameter ranges, counts, each image's "
        "anatomy and lighting (`scenes`)",
    ),
    Entry(
        TRANSFER,
        "nuclei transfer",
        "fewlabel nuclei transfer",
        "its report, bench/nuclei.py",
        "train-on-X/test-on-Y F1 matrix, fine-tuning with a few target images against training on them alone, mixing",
    ),
    Entry(
        QUANT,
        "qat run",
        "the qat method",
        "report, bench/quant.py",
        "float parent and its accuracy, bit widths, the layers folded and quantized, each schedule stage (precision, "
        "epochs, learning rate, validation accuracy at its end), and the deployment check: size on disk and CPU "
        "latency (batch 1 and 64) of eager PyTorch float, onnxruntime float and quantized, their argmax agreement",
    ),
    Entry(
        ONNX,
        "run",
        "fewlabel export; the qat method (with model-float.onnx, its parent)",
        "onnxruntime, edge runtimes",
        "the network in ONNX: float, or quantized as QuantizeLinear/Clip/DequantizeLinear (QCDQ)",
    ),
    Entry(
        RECIPE,
        "recipe",
        "fewlabel run",
        "fewlabel run (continue only the same recipe's folder)",
        "the validated recipe",
    ),
    Entry(
        SUMMARY,
        "recipe",
        "fewlabel run",
        "recipe report, the CLI",
        "per stage: metrics over seeds; with --compare direct the paired comparison",
    ),
    Entry(
        REPORT + " (recipe)",
        "recipe",
        "report.write_recipe_report",
        "a person",
        "stages side by side, the comparison, example images of built data",
    ),
    Entry(
        "seed-<s>/<stage>/",
        "recipe",
        "fewlabel run",
        "later stages (weights), the recipe report",
        "an ordinary run directory per stage",
    ),
    Entry(
        f"seed-<s>/<stage>/{STAGE}",
        "recipe",
        "fewlabel run, when the stage finished",
        "fewlabel run (skips finished stages, refuses changed ones)",
        "the stage's config and metrics",
    ),
    Entry(
        "seed-<s>/data-<stage>/",
        "recipe",
        "intermediate builders",
        "the stage that trains on it",
        "built data: an ImageFolder with clusters.json, or labels.csv with synthetic.json",
    ),
)


RUN_OUTPUT = register_output_kind(
    "run",
    entries=(
        *{entry.path.split("/")[0].replace("<s>", "*") for entry in FILES if entry.scope.endswith("run")},
        "model-float.onnx",  # the qat method's float parent, beside model.onnx
        INFOPLANE,
        STAGE,
    ),
    records=(CONFIG,),
    resumable=True,
)
RECIPE_OUTPUT = register_output_kind("recipe", entries=(RECIPE, SUMMARY, REPORT, "seed-*"), records=(RECIPE,))


def seed_dir(root: str | Path, seed: int) -> Path:
    """The run directory of one seed of a multi-seed run, or of a recipe."""
    return Path(root) / f"seed-{seed}"


def seed_dirs(root: str | Path) -> list[Path]:
    return sorted(p for p in Path(root).glob("seed-*") if p.is_dir())


def built_data_dir(seed_folder: str | Path, stage: str) -> Path:
    """Where a recipe stage's builder writes its data."""
    return Path(seed_folder) / f"data-{stage}"


def has_model(run_dir: str | Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file() and (Path(run_dir) / CARD).is_file()


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether an interrupted run can continue: a fit in progress or a finished one saved."""
    return (Path(run_dir) / LAST_CHECKPOINT).is_file() or (Path(run_dir) / STATE).is_file()


def model_dir(run_dir: str | Path) -> Path:
    """The folder holding the model: the run itself, or the first seed of a multi-seed run."""
    run_dir = Path(run_dir)
    if has_model(run_dir):
        return run_dir
    seeds = [d for d in seed_dirs(run_dir) if has_model(d)]
    if seeds:
        return seeds[0]
    raise FewlabelError(f"'{run_dir}' holds no model ({WEIGHTS} missing); train one with 'fewlabel train'.")


def write_config(run_dir: str | Path, config: dict) -> Path:
    return write_yaml(Path(run_dir) / CONFIG, config)


def read_config(run_dir: str | Path) -> dict:
    """The run's config as written (empty when there is none)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    return read_yaml(path) or {}


def write_metrics(run_dir: str | Path, metrics: dict) -> Path:
    return write_json(Path(run_dir) / METRICS, metrics)


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise FewlabelError(f"'{run_dir}' holds no {METRICS}: the run has not finished.")
    return read_json(path)


def read_history(run_dir: str | Path) -> list[dict]:
    """The rows of history.csv (strings, as written); empty when there is none."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_history(run_dir: str | Path, rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(Path(run_dir) / HISTORY, buffer.getvalue())


def write_splits(run_dir: str | Path, splits: dict) -> Path:
    return write_json(Path(run_dir) / SPLITS, splits)


def read_splits(run_dir: str | Path) -> dict | None:
    return _read_optional(Path(run_dir) / SPLITS)


def write_rounds(run_dir: str | Path, rounds: dict) -> Path:
    return write_json(Path(run_dir) / ROUNDS, rounds)


def read_rounds(run_dir: str | Path) -> dict | None:
    return _read_optional(Path(run_dir) / ROUNDS)


def write_record(run_dir: str | Path, name: str, record: dict) -> Path:
    """Write one of the run's JSON records (``name``: one of this module's file names)."""
    return write_json(Path(run_dir) / name, record)


def read_record(run_dir: str | Path, name: str) -> dict | None:
    """One of the run's JSON records; None when the run has none."""
    return _read_optional(Path(run_dir) / name)


def write_infoplane(run_dir: str | Path, record: dict) -> Path:
    return write_json(Path(run_dir) / INFOPLANE, record)


def read_infoplane(run_dir: str | Path) -> dict | None:
    """The information-plane points tracked while the run trained; None when it was not tracked."""
    return _read_optional(Path(run_dir) / INFOPLANE)


def write_infoplane_audit(run_dir: str | Path, record: dict) -> Path:
    return write_json(Path(run_dir) / INFOPLANE_AUDIT, record)


def read_infoplane_audit(run_dir: str | Path) -> dict | None:
    """The run's place in the last ``fewlabel audit infoplane`` that compared it; None if none."""
    return _read_optional(Path(run_dir) / INFOPLANE_AUDIT)


def write_stage(run_dir: str | Path, config: dict, metrics: dict) -> Path:
    return write_json(Path(run_dir) / STAGE, {"config": config, "metrics": metrics})


def read_stage(run_dir: str | Path) -> dict | None:
    """A finished stage's ``{"config", "metrics"}``; None while it has not finished."""
    return _read_optional(Path(run_dir) / STAGE)


def write_summary(out: str | Path, summary: dict) -> Path:
    return write_json(Path(out) / SUMMARY, summary)


def read_summary(out: str | Path) -> dict:
    return read_json(Path(out) / SUMMARY)


def write_recipe(out: str | Path, recipe: dict) -> Path:
    return write_yaml(Path(out) / RECIPE, recipe)


def read_recipe_file(out: str | Path) -> dict:
    return read_yaml(Path(out) / RECIPE)


def is_recipe_folder(out: str | Path) -> bool:
    return (Path(out) / RECIPE).is_file()


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.is_file() else None

"""The transfer experiment of Xing et al. (2019), their three questions in one run:

1. Does a detector need data of the same organ? Train one detector per DATA (its training
   split) and test each on every DATA's test split: the train-on-X / test-on-Y F1 matrix.
2. Does a model from another organ need fine-tuning, and with a few target images is
   fine-tuning it better than training on them alone? For every target Y, ``few`` labelled
   images of Y (drawn with the seed; ``few_val`` more hold out the threshold) train a detector
   from ImageNet weights alone, and fine-tune every other DATA's detector.
3. Does mixing target and non-target data help? A detector trained from ImageNet weights on
   X's training images plus Y's few ones.

All are tested on Y's test split. Every fit takes the same options; a few-image fit draws more
crops per image so that each epoch has as many crops as a source fit's (``crops_per_image x
source images / few``): the same number of steps, so a difference is the data's, not the
budget's. Each training is an ordinary run directory under OUT; a rerun skips finished ones.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data.sources import split_folder
from ..errors import FewlabelError
from ..fileio import write_text
from ..rundir import METRICS, REPORT, TRANSFER, WEIGHTS, read_metrics, read_record, read_splits, write_record
from .data import MASK_SUFFIXES, load_nuclei
from .options import NucleiOptions

Trainer = Callable[..., dict]  # (data, out, **options) -> metrics of a finished run


def dataset_names(datasets: list[str]) -> list[str]:
    """A short unique name per DATA (its folder's name; numbered where two agree)."""
    names = [Path(d.rpartition(":")[0] if d.endswith((":train", ":test", ":val")) else d).name for d in datasets]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _copy_image(path: Path, folder: Path, prefix: str = "") -> None:
    """Copy an image and its annotation file, both names prefixed (two sources may share names)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, folder / f"{prefix}{path.name}")
    for annotation in [path.with_suffix(".csv")] + [path.with_name(path.stem + s) for s in MASK_SUFFIXES]:
        if annotation.is_file():
            shutil.copy2(annotation, folder / f"{prefix}{annotation.name}")


def write_few(spec: str, out: Path, few: int, few_val: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Copy ``few`` training and ``few_val`` validation images of DATA's training split (drawn
    with ``seed``) into ``out/train`` and ``out/val``; returns both lists of source files."""
    images = [Path(i) for i in load_nuclei(spec).ids]
    if len(images) < few + few_val:
        raise FewlabelError(f"DATA '{spec}' has {len(images)} training images; --few {few} needs {few + few_val}.")
    order = np.random.default_rng(seed).permutation(len(images))
    train, val = [images[i] for i in order[:few]], [images[i] for i in order[few : few + few_val]]
    if not (out / "val").is_dir():
        for path in train:
            _copy_image(path, out / "train")
        for path in val:
            _copy_image(path, out / "val")
    return train, val


def write_mix(source: str, few_folder: Path, out: Path) -> None:
    """``out/train``: all of the source's training images and the target's few; ``out/val``: the
    target's validation images (the threshold is chosen on the target)."""
    if (out / "val").is_dir():
        return
    for path in [Path(i) for i in load_nuclei(source).ids]:
        _copy_image(path, out / "train", "source-")
    for path in [Path(i) for i in load_nuclei(str(few_folder)).ids]:
        _copy_image(path, out / "train", "target-")
    shutil.copytree(few_folder / "val", out / "val")


def _run(train: Trainer, data: str, out: Path, options: dict) -> dict:
    if (out / METRICS).is_file():
        return read_metrics(out)
    return train(data, out, **options)


def run_transfer(
    datasets: list[str],
    out: str | Path,
    train: Trainer,
    *,
    few: int = 5,
    few_val: int = 1,
    seed: int = 0,
    options: dict | None = None,
) -> dict:
    """The experiment of the module docstring; ``train(data, out, **options)`` trains one run
    (the API's, with the task and overwrite set). Writes OUT/transfer.json and OUT/report.html."""
    if len(datasets) < 2:
        raise FewlabelError("transfer needs at least two DATA folders (one per organ or style).")
    out, options = Path(out), dict(options or {})
    names = dataset_names(datasets)
    task_options = options.pop("task_options", {})
    sources = {}
    for name, spec in zip(names, datasets, strict=True):
        split_folder(spec)  # a missing folder is refused before any training
        sources[name] = _run(train, spec, out / f"on-{name}", options | {"task_options": task_options})
    crops = task_options.get("crops_per_image", NucleiOptions.model_fields["crops_per_image"].default)
    source_images = np.mean([len(read_splits(out / f"on-{name}")["labeled"]) for name in sources])
    few_crops = max(crops, math.ceil(crops * source_images / few))
    few_options = options | {"task_options": task_options | {"crops_per_image": few_crops}}
    matrix = [[_evaluate(out / f"on-{x}", f"{spec}:test") for spec in datasets] for x in names]
    targets = {}
    for y, target in zip(names, datasets, strict=True):
        few_folder = out / "data" / f"few-{y}"
        write_few(target, few_folder, few, few_val, seed)
        test = f"{target}:test" if (Path(target) / "test").is_dir() else target
        alone = _run(train, str(few_folder), out / f"few-{y}-alone", few_options | {"eval_data": test})
        row = {"same_style": matrix[names.index(y)][names.index(y)], "alone": alone["f1"], "from": {}}
        for x, source in zip(names, datasets, strict=True):
            if x == y:
                continue
            tuned = _run(train, str(few_folder), out / f"few-{y}-from-{x}", few_options | {
                "eval_data": test, "pretrained": str(out / f"on-{x}" / WEIGHTS)})  # fmt: skip
            mix_folder = out / "data" / f"mix-{x}-{y}"
            write_mix(source, few_folder, mix_folder)
            mixed = _run(train, str(mix_folder), out / f"mix-{x}-{y}", options | {
                "task_options": task_options, "eval_data": test})  # fmt: skip
            as_is = matrix[names.index(x)][names.index(y)]
            row["from"][x] = {"as_is": as_is, "fine_tuned": tuned["f1"], "mixed": mixed["f1"]}
        targets[y] = row
    record = {
        "datasets": dict(zip(names, datasets, strict=True)),
        "f1_matrix": {"trained_on": names, "tested_on": names, "f1": matrix},
        "few": few, "few_val": few_val, "seed": seed, "targets": targets, "answers": answers(names, matrix, targets),
        "options": options | {"task_options": task_options}, "few_crops_per_image": few_crops,
    }  # fmt: skip
    write_record(out, TRANSFER, record)
    from .report import transfer_report

    write_text(out / REPORT, transfer_report(record))
    return record


def _evaluate(run: Path, spec: str) -> float:
    from ..runner import evaluate_run

    return float(evaluate_run(run, spec)["f1"])


def answers(names: list[str], matrix: list[list[float]], targets: dict) -> dict:
    """The three questions answered from the figures (means over the pairs)."""
    diagonal = [matrix[i][i] for i in range(len(names))]
    off = [[matrix[i][j] for i in range(len(names)) if i != j] for j in range(len(names))]
    pairs = [(y, x, r) for y, t in targets.items() for x, r in t["from"].items()]
    return {
        "same_style_best_for": [y for j, y in enumerate(names) if diagonal[j] >= max(off[j])],
        "same_style_minus_other_mean": float(np.mean([diagonal[j] - np.mean(off[j]) for j in range(len(names))])),
        "fine_tuned_minus_alone_mean": float(np.mean([r["fine_tuned"] - targets[y]["alone"] for y, _, r in pairs])),
        "fine_tuned_minus_as_is_mean": float(np.mean([r["fine_tuned"] - r["as_is"] for _, _, r in pairs])),
        "mixed_minus_alone_mean": float(np.mean([r["mixed"] - targets[y]["alone"] for y, _, r in pairs])),
        "mixed_minus_fine_tuned_mean": float(np.mean([r["mixed"] - r["fine_tuned"] for _, _, r in pairs])),
        "mixing_helps_over_alone": sum(r["mixed"] > targets[y]["alone"] for y, _, r in pairs),
        "pairs": len(pairs),
    }


def read_transfer(out: str | Path) -> dict | None:
    return read_record(out, TRANSFER)

"""``fewlabel nuclei``: synthetic microscopy, training, detection, evaluation and the transfer
experiment of nucleus detection (Xing et al. 2019)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..nuclei.options import STYLE_NAMES, NucleiOptions
from .app import app
from .commands import ConfigOption, OverwriteOption, ResumeOption, _metrics_table, _print_result, console
from .options import with_training_options

nuclei_app = typer.Typer(no_args_is_help=True, help="Nucleus detection in microscopy images (Xing et al. 2019).")
app.add_typer(nuclei_app, name="nuclei")
Style = Enum("Style", {s: s for s in STYLE_NAMES}, type=str)
SKIP = ("task", "task_options")


@nuclei_app.command("synth")
def synth(
    style: Annotated[Style, typer.Option(help="organ and stain")] = Style["breast-he"],
    n: Annotated[int, typer.Option(min=1, help="tiles")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    size: Annotated[int, typer.Option(min=16, help="tile side in pixels")] = 256,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="share of tiles in test/")] = 0.25,
    out: Annotated[Path, typer.Option(help="folder to write (train/, test/, style.json)")] = Path("data/synth"),
    overwrite: Annotated[bool, typer.Option(help="replace tiles this command wrote before")] = False,
) -> None:
    """Synthetic microscopy tiles with exact nucleus centres (one x,y CSV per tile)."""
    from ..nuclei.synth import write_synthetic

    record = write_synthetic(out, style.value, n, seed, size, test_fraction, overwrite)
    console().print(
        f"{out}: {record['images']['train']} training and {record['images']['test']} test tiles ({style.value})"
    )


@nuclei_app.command("train")
@with_training_options(skip=(*SKIP, "model"), task_options=NucleiOptions)
def train(
    data: Annotated[str, typer.Argument(help="folder of images with x,y CSVs or _mask files, or a CSV image,x,y")],
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/nuclei"),
    encoder: Annotated[str | None, typer.Option(help="timm encoder (default efficientnet_lite0)")] = None,
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    options: dict | None = None,
) -> None:
    """Train a nucleus detector (proximity-map regression) on DATA."""
    from .. import api

    options = options | ({"model": encoder} if encoder else {})
    _print_result(api.train_nuclei(data, out, config=config, overwrite=overwrite, resume=resume, **options))


@nuclei_app.command("detect")
def detect(
    run: Annotated[Path, typer.Argument(help="nuclei run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files of any size")],
    out: Annotated[Path, typer.Option(help="CSV of image,x,y,score")] = Path("detections.csv"),
    overlays: Annotated[Path | None, typer.Option(help="folder of overlay PNGs (default: beside --out)")] = None,
    threshold: Annotated[float | None, typer.Option(help="instead of the one chosen on validation")] = None,
) -> None:
    """Detect nuclei in images: a CSV of centres and an overlay PNG per image."""
    from .. import api

    counts = api.detect_nuclei(run, images, out, overlays, threshold)
    for image, count in counts.items():
        console().print(f"{image}: {count} nuclei", soft_wrap=True)
    console().print(f"detections: {out}", soft_wrap=True)


@nuclei_app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="nuclei run directory")],
    data: Annotated[str, typer.Argument(help="annotated DATA, e.g. data/synth-A:test")],
    radius: Annotated[float | None, typer.Option(help="matching radius in pixels (default: the run's)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the metrics JSON here")] = None,
) -> None:
    """Precision, recall, F1 and localisation error of a detector on annotated DATA."""
    from .. import api

    settings = {"match_radius": radius} if radius is not None else {}
    metrics = api.evaluate(run, data, out, **settings)
    console().print(_metrics_table(metrics, f"{run} on {data} (radius {metrics['match_radius']:g} px)"))


@nuclei_app.command("transfer")
@with_training_options(skip=(*SKIP, "data", "eval_data", "seeds"), task_options=NucleiOptions)
def transfer(
    datasets: Annotated[list[str], typer.Argument(help="two or more DATA folders, one per organ or style")],
    out: Annotated[Path, typer.Option(help="experiment folder")] = Path("runs/transfer"),
    few: Annotated[int, typer.Option(min=1, help="target images to fine-tune on")] = 5,
    few_val: Annotated[int, typer.Option(min=1, help="more target images to choose the threshold on")] = 1,
    options: dict | None = None,
) -> None:
    """Train on each DATA and test on each; fine-tune with a few target images; train on a mix."""
    from .. import api

    record = api.nuclei_transfer(datasets, out, few=few, few_val=few_val, **options)
    names = record["f1_matrix"]["trained_on"]
    rows = _matrix_table(names, record["f1_matrix"]["f1"])
    console().print(rows)
    console().print(f"report: {out / 'report.html'}", soft_wrap=True)


def _matrix_table(names: list[str], matrix: list[list[float]]):
    from .commands import table

    rows = table("trained on \\ tested on", *names, title="F1")
    for name, values in zip(names, matrix, strict=True):
        rows.add_row(name, *[f"{v:.3f}" for v in values])
    return rows

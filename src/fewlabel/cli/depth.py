"""``fewlabel depth``: rendered endoscopy with exact depth, training (and fine-tuning from a
rendered-data run), prediction and evaluation of monocular depth (Mahmood et al. 2018)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..depth.options import RENDER_OUTSIDE, RENDER_STYLES, DepthOptions
from .app import app
from .commands import ConfigOption, OverwriteOption, ResumeOption, _metrics_table, _print_result, console
from .options import with_training_options

depth_app = typer.Typer(no_args_is_help=True, help="Monocular depth, trained on renderings (Mahmood et al. 2018).")
app.add_typer(depth_app, name="depth")
TestSymmetries = Annotated[
    bool | None,
    typer.Option(
        "--test-symmetries/--no-test-symmetries",
        help="average the network over each image's 8 symmetries (8 times the cost); default the run's setting",
    ),
]
Style = Enum("Style", {s: s for s in RENDER_STYLES}, type=str)
Outside = Enum("Outside", {s: s for s in RENDER_OUTSIDE}, type=str)


@depth_app.command("render")
def render(
    style: Annotated[Style, typer.Option(help="synthetic: flat shading; cinematic: photorealistic")] = Style.cinematic,
    n: Annotated[int, typer.Option(min=1, help="images")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    size: Annotated[int, typer.Option(min=16, help="image side in pixels")] = 256,
    test_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.9, help="share in test/, drawn outside the training ranges of anatomy and lighting"
        ),
    ] = 0.2,
    patients: Annotated[
        int | None,
        typer.Option(min=1, help="training images show only this many colons, each from several places and lightings"),
    ] = None,
    outside: Annotated[
        Outside, typer.Option(help="which parameters test/ draws outside the training ranges (the others inside)")
    ] = Outside.all,
    out: Annotated[Path, typer.Option(help="folder to write (train/, test/, render.json)")] = Path("data/colon"),
    overwrite: OverwriteOption = False,
) -> None:
    """Colon-like scenes seen by an endoscope, with exact depth maps (NAME_depth.npy, mm)."""
    from .. import api

    record = api.render_depth(out, style.value, n, seed, size, test_share, overwrite, patients, outside.value)
    console().print(f"{out}: {record['train']} training and {record['test_held_out']} held-out images ({style.value})")


@depth_app.command("train")
@with_training_options(skip=("task", "task_options", "model", "labels_per_class"), task_options=DepthOptions)
def train(
    data: Annotated[str, typer.Argument(help="folder of images with NAME_depth.npy or 16-bit NAME_depth.png")],
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/depth"),
    encoder: Annotated[str | None, typer.Option(help="timm encoder (default efficientnet_lite0)")] = None,
    init: Annotated[Path | None, typer.Option(help="depth run to fine-tune (compared against in the report)")] = None,
    labels: Annotated[int | None, typer.Option(min=1, help="training images drawn (seeded); same as --images")] = None,
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    options: dict | None = None,
) -> None:
    """Train a depth network on DATA, or fine-tune one (--init) with few images (--labels)."""
    from .. import api

    options = options | ({"model": encoder} if encoder else {})
    if labels is not None:
        options["task_options"] = options.get("task_options", {}) | {"images": labels}
    result = api.train_depth(data, out, init=init, config=config, overwrite=overwrite, resume=resume, **options)
    _print_result(result)


@depth_app.command("predict")
def predict(
    run: Annotated[Path, typer.Argument(help="depth run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    out: Annotated[Path | None, typer.Option(help="PNG file (one image) or folder; default beside each image")] = None,
    test_symmetries: TestSymmetries = None,
) -> None:
    """Depth of images: a colour-mapped PNG (near bright, far dark) and the map as .npy."""
    from .. import api

    for result in api.predict_depth(run, images, out, test_symmetries):
        console().print(f"{result['image']}: {result['png']}, {result['npy']} (median {result['median']:.1f} "
                        f"{result['units']}, {result['min']:.1f} to {result['max']:.1f})", soft_wrap=True)  # fmt: skip


@depth_app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="depth run directory")],
    data: Annotated[str, typer.Argument(help="DATA with depth maps, e.g. data/colon:test")],
    out: Annotated[Path | None, typer.Option(help="write the metrics JSON here")] = None,
    test_symmetries: TestSymmetries = None,
) -> None:
    """Absolute relative error, RMSE, log RMSE and delta thresholds, absolute and median-scaled, and
    the median-scaling factors."""
    from .. import api

    settings = {} if test_symmetries is None else {"test_symmetries": test_symmetries}
    metrics = api.evaluate(run, data, out, **settings)
    console().print(_metrics_table(metrics, f"{run} on {data} (absolute)"))
    scaled = metrics["median_scaled"]
    console().print(_metrics_table(scaled | {"task": "depth"}, f"{run} on {data} (median-scaled)"))
    if scaled.get("scale_median") is not None:
        console().print(
            f"median scaling multiplied the predictions by {scaled['scale_median']:.3f} (median over images; "
            f"sd / median {scaled['scale_spread']:.3f}: how much the absolute scale errs from image to image)"
        )

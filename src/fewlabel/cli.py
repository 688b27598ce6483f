"""The ``fewlabel`` command: parses arguments, calls :mod:`fewlabel.api`, prints. No logic here."""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from . import api
from .config import TrainConfig
from .errors import FewlabelError
from .stepwise.intermediate import DESCRIPTORS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train trustworthy image models when labels are scarce.",
)
console = Console()


def _choices(field: str) -> type[Enum]:
    """A str Enum of a config field's Literal choices: --help lists them, typos fail early."""
    values = get_args(TrainConfig.model_fields[field].annotation)
    return Enum(field.title().replace("_", ""), {v: v for v in values}, type=str)


Augment, Schedule, Imbalance, Logger, FreezeBN, FeatureCache, Head = map(
    _choices, ("augment", "schedule", "imbalance", "logger", "freeze_bn", "feature_cache", "head")
)


Compare = Enum("Compare", {"direct": "direct"}, type=str)


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=Console(stderr=True), show_path=False)]
    )
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _seeds(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise FewlabelError(f"--seeds must be comma-separated integers such as 0,1,2; got '{value}'.") from None


def _metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "ece", "nll", "n_samples"):
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            if f"{key}_sd" in metrics:
                text += f" ± {metrics[key + '_sd']:.4f}"
            table.add_row(key, text)
    return table


@app.command()
def train(
    data: Annotated[str | None, typer.Argument(help="folder, CSV (path,label) or built-in name[:split]")] = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/run"),
    config: Annotated[Path | None, typer.Option(help="YAML config; flags override it")] = None,
    model: Annotated[str | None, typer.Option(help="timm architecture")] = None,
    pretrained: Annotated[str | None, typer.Option(help="none | imagenet | hub | path.safetensors")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="linear-probe | freeze-unfreeze | full | layer-decay | partial:N")
    ] = None,
    head: Annotated[
        Head | None,
        typer.Option(help="with --pretrained RUN/model.safetensors: keep that run's head or train a new one"),
    ] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    head_epochs: Annotated[int | None, typer.Option(help="head epochs on cached features (freeze-unfreeze)")] = None,
    img_size: Annotated[int | None, typer.Option()] = None,
    labels_per_class: Annotated[int | None, typer.Option(help="stratified labelled subset of K per class")] = None,
    val_split: Annotated[float | None, typer.Option(help="hold out this fraction for validation")] = None,
    eval_data: Annotated[str | None, typer.Option(help="data for the final metrics")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    seeds: Annotated[str | None, typer.Option(help="repeat over seeds, e.g. 0,1,2")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    head_lr: Annotated[float | None, typer.Option()] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    schedule: Annotated[Schedule | None, typer.Option()] = None,
    warmup_epochs: Annotated[float | None, typer.Option()] = None,
    layer_decay: Annotated[float | None, typer.Option()] = None,
    dropout: Annotated[float | None, typer.Option(help="head dropout")] = None,
    augment: Annotated[Augment | None, typer.Option()] = None,
    label_smoothing: Annotated[float | None, typer.Option()] = None,
    imbalance: Annotated[Imbalance | None, typer.Option()] = None,
    freeze_bn: Annotated[FreezeBN | None, typer.Option(help="keep BatchNorm statistics fixed")] = None,
    early_stopping: Annotated[int | None, typer.Option(help="patience (epochs) on validation loss")] = None,
    accelerator: Annotated[str | None, typer.Option()] = None,
    devices: Annotated[str | None, typer.Option(help="devices (processes) per machine")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="machines (launch with torchrun or srun)")] = None,
    distributed: Annotated[str | None, typer.Option(help="Lightning strategy: auto, ddp, ...")] = None,
    precision: Annotated[str | None, typer.Option()] = None,
    workers: Annotated[int | None, typer.Option()] = None,
    logger: Annotated[Logger | None, typer.Option()] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow store for --logger mlflow")] = None,
    feature_cache: Annotated[FeatureCache | None, typer.Option(help="where cached features live")] = None,
    strict: Annotated[
        bool | None, typer.Option("--strict", help="refuse unreadable images instead of skipping")
    ] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="progress bars")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    resume: Annotated[bool, typer.Option(help="continue from checkpoints/last.ckpt")] = False,
) -> None:
    """Fine-tune a pretrained backbone on DATA; writes a run directory."""
    options = {
        k: (v.value if isinstance(v, Enum) else v)
        for k, v in locals().items()
        if k not in ("data", "out", "config", "overwrite", "resume", "seeds")
    }
    options["seeds"] = _seeds(seeds)
    result = api.train(data, out, config=config, overwrite=overwrite, resume=resume, **options)
    console.print(_metrics_table(result.metrics, f"{result.run_dir} on {result.metrics.get('eval_data')}"))
    console.print(f"report: {result.run_dir / 'report.html'}")


Method = Enum("Method", {m: m for m in get_args(get_args(TrainConfig.model_fields["method"].annotation)[0])}, type=str)


@app.command()
def semi(
    data: Annotated[str | None, typer.Argument(help="labelled DATA (folder, CSV or built-in)")] = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/semi"),
    method: Annotated[Method, typer.Option(help="semi-supervised method or baseline")] = Method.trinet,
    unlabeled: Annotated[
        str | None, typer.Option(help="pool: folder of images, CSV of paths, or DATA; default the unlabeled rest")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (also the semi: section); flags override it")] = None,
    model: Annotated[str | None, typer.Option(help="timm architecture")] = None,
    pretrained: Annotated[str | None, typer.Option(help="none | imagenet | hub | path.safetensors")] = None,
    labels_per_class: Annotated[
        int | None, typer.Option(help="labelled images per class; the rest is the pool")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs on the labelled set before the rounds")] = None,
    rounds: Annotated[
        int | None, typer.Option(help="self-training rounds (FixMatch: rounds x round-epochs epochs)")
    ] = None,
    round_epochs: Annotated[int | None, typer.Option()] = None,
    pool_size: Annotated[int | None, typer.Option(help="seeded random subset of the pool")] = None,
    module_stages: Annotated[
        int | None, typer.Option(help="tri-net: last backbone stages each module owns (0: MLP modules)")
    ] = None,
    img_size: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    eval_data: Annotated[str | None, typer.Option(help="data for the final metrics")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    seeds: Annotated[str | None, typer.Option(help="repeat over seeds, e.g. 0,1,2")] = None,
    audit_pseudo_labels: Annotated[
        bool | None, typer.Option("--audit-pseudo-labels", help="score pseudo-labels against the pool's hidden labels")
    ] = None,
    allow_overlap: Annotated[
        bool | None, typer.Option("--allow-overlap", help="accept a pool holding evaluation images")
    ] = None,
    workers: Annotated[int | None, typer.Option()] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="progress bars")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    resume: Annotated[bool, typer.Option(help="continue after the last finished round")] = False,
) -> None:
    """Semi-supervised training: tri-net, or the supervised, pseudo-label and FixMatch baselines."""
    given = locals()
    section = ("rounds", "round_epochs", "pool_size", "module_stages")  # options of the semi: section
    options = {
        k: v
        for k, v in given.items()
        if k not in ("data", "out", "config", "overwrite", "resume", "seeds", "method", *section)
    }
    options["method"] = method.value
    options["seeds"] = _seeds(seeds)
    semi_options = {k: given[k] for k in section if given[k] is not None}
    if semi_options:
        options["semi"] = semi_options
    result = api.train(data, out, config=config, overwrite=overwrite, resume=resume, **options)
    console.print(
        _metrics_table(result.metrics, f"{result.run_dir} ({method.value}) on {result.metrics.get('eval_data')}")
    )
    console.print(f"report: {result.run_dir / 'report.html'}")


@app.command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML: stages of stepwise fine-tuning")],
    out: Annotated[Path | None, typer.Option(help="recipe folder (default runs/<recipe name>)")] = None,
    seeds: Annotated[str | None, typer.Option(help="run the whole recipe per seed, e.g. 0,1,2")] = None,
    compare: Annotated[Compare | None, typer.Option(help="also fine-tune source -> target directly")] = None,
    overwrite: Annotated[bool, typer.Option(help="redo finished stages")] = False,
) -> None:
    """Run a recipe's stages in order; a rerun resumes at the first unfinished stage."""
    from .stepwise.recipe import run_recipe

    out = out or Path("runs") / recipe.stem
    summary = run_recipe(
        recipe, out, seeds=_seeds(seeds), compare=compare.value if compare else None, overwrite=overwrite
    )
    table = Table(title=f"{out} ({len(summary['seeds'])} seed(s))")
    for column in ("stage", "evaluated on", "accuracy", "macro-F1"):
        table.add_column(column)
    for stage in summary["stages"]:
        acc, f1 = stage["metrics"]["accuracy"], stage["metrics"]["macro_f1"]
        table.add_row(stage["name"], stage["eval_data"], _mean_sd(acc), _mean_sd(f1))
    console.print(table)
    if "comparison" in summary:
        console.print(summary["comparison"]["statement"])
    console.print(f"report: {out / 'report.html'}")


def _mean_sd(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f}" + (f" ± {100 * stats['sd']:.1f}" if stats["n"] > 1 else "")


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[str, typer.Argument(help="DATA to evaluate on, e.g. fashion-mnist:test")],
    out: Annotated[Path | None, typer.Option(help="write the metrics JSON here")] = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
) -> None:
    """Evaluate a trained model on DATA."""
    metrics = api.evaluate(run, data, out, strict)
    console.print(_metrics_table(metrics, f"{run} on {data}"))
    if out:
        console.print(f"metrics: {out}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Top-k classes for each image."""
    predictions = api.load(run).predict([str(p) for p in images], top_k=top_k)
    if as_json:
        typer.echo(json.dumps(predictions, indent=2))
        return
    table = Table()
    table.add_column("image")
    for i in range(min(top_k, len(predictions[0]["top"]))):
        table.add_column(f"#{i + 1}")
    for p in predictions:
        table.add_row(p["image"], *[f"{t['class']} {t['probability']:.3f}" for t in p["top"]])
    console.print(table)


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="run directory")],
    host: Annotated[str, typer.Option(help="interface to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="largest accepted upload")] = 10.0,
) -> None:
    """A local web app: drop images, see top-k classes and Grad-CAM, download CSV."""
    from .serve import serve as run_server

    run_server(run, host, port, top_k, max_upload_mb)


@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="glob, e.g. 'efficientnet*'")] = "",
    offline: Annotated[bool, typer.Option(help="only those with ImageNet weights offline")] = False,
) -> None:
    """Backbones (any timm architecture) and which have ImageNet weights offline."""
    rows = [r for r in api.list_models(pattern) if r["offline_imagenet"] or not offline]
    table = Table(title=f"{len(rows)} backbones")
    table.add_column("name")
    table.add_column("ImageNet weights offline")
    for r in sorted(rows, key=lambda r: (not r["offline_imagenet"], r["name"])):
        table.add_row(r["name"], "yes" if r["offline_imagenet"] else "hub download only")
    console.print(table)


@app.command()
def datasets() -> None:
    """Built-in datasets and whether each is present on this machine."""
    table = Table()
    for column in ("name", "splits", "present", "description"):
        table.add_column(column)
    for d in api.list_datasets():
        table.add_row(d["name"], ", ".join(d["splits"]), "yes" if d["present"] else "no", d["description"])
    console.print(table)


intermediate_app = typer.Typer(no_args_is_help=True, help="Intermediate datasets for stepwise fine-tuning.")
app.add_typer(intermediate_app, name="intermediate")
Descriptor = Enum("Descriptor", {d: d for d in DESCRIPTORS}, type=str)
BuildMethod = Enum("BuildMethod", {m: m for m in api.INTERMEDIATE_METHODS}, type=str)


@intermediate_app.command("build")
def intermediate_build(
    data: Annotated[str | None, typer.Argument(help="target DATA (clusters: its training split is the pool)")] = None,
    out: Annotated[Path, typer.Option(help="folder to write")] = Path("data/intermediate"),
    method: Annotated[BuildMethod, typer.Option()] = BuildMethod.clusters,
    unlabeled: Annotated[str | None, typer.Option(help="clusters: pool of target-domain images")] = None,
    pool_size: Annotated[int | None, typer.Option(help="clusters: random subset of the pool")] = None,
    k: Annotated[int, typer.Option(help="clusters: number of pseudo-classes")] = 20,
    descriptor: Annotated[Descriptor, typer.Option()] = Descriptor.handcrafted,
    keep_fraction: Annotated[float, typer.Option(help="clusters: share of each cluster kept, nearest first")] = 0.8,
    generator: Annotated[str | None, typer.Option(help="synthetic: module:function making the images")] = None,
    per_class: Annotated[int, typer.Option(help="synthetic: images per class")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    model: Annotated[str, typer.Option(help="backbone for the embedding descriptor")] = "efficientnet_lite0",
    img_size: Annotated[int, typer.Option()] = 64,
    overwrite: Annotated[bool, typer.Option()] = False,
) -> None:
    """Build an intermediate dataset: pseudo-classes of unlabeled images, or generated images."""
    summary = api.build_intermediate(
        data,
        out,
        method=method.value,
        unlabeled=unlabeled,
        pool_size=pool_size,
        k=k,
        descriptor=descriptor.value,
        keep_fraction=keep_fraction,
        generator=generator,
        per_class=per_class,
        seed=seed,
        model=model,
        img_size=img_size,
        overwrite=overwrite,
    )
    sizes = summary["sizes"]
    console.print(f"{sum(sizes.values())} images in {len(sizes)} classes: {out}")


def main() -> None:
    _setup_logging()
    try:
        app()
    except FewlabelError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

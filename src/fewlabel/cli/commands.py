"""The commands of ``fewlabel``; each parses, calls the API and prints. Heavy imports happen
inside the command that runs."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..config import PER_STAGE_KEYS
from .app import app
from .options import parse_seeds, with_training_options

Compare = Enum("Compare", {"direct": "direct"}, type=str)
DataArgument = Annotated[str | None, typer.Argument(help="folder, CSV (path,label) or built-in name[:split]")]
ConfigOption = Annotated[Path | None, typer.Option(help="YAML config; flags override it")]
OverwriteOption = Annotated[
    bool, typer.Option(help="replace a folder fewlabel wrote before (the new one is swapped in when complete)")
]
ResumeOption = Annotated[bool, typer.Option(help="continue an interrupted run from its checkpoints")]


def console():
    """Rich output of a command that runs (imported then, not at start-up)."""
    from rich.console import Console

    return Console()


def table(*columns: str, title: str | None = None):
    from rich.table import Table

    rendered = Table(title=title)
    for column in columns:
        rendered.add_column(column)
    return rendered


def _metrics_table(metrics: dict, title: str):
    from ..tasks import get_task

    rows = table("metric", "value", title=title)
    for key in (*get_task(metrics.get("task", "classification")).metric_keys, "n_samples"):
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            if f"{key}_sd" in metrics:
                text += f" ± {metrics[key + '_sd']:.4f}"
            rows.add_row(key, text)
    return rows


def run_notices(metrics: dict) -> list[str]:
    """The run's warnings, then what it decided for itself (one line each)."""
    from ..evaluate.notices import run_sentences

    return [f"WARNING: {w}" for w in metrics.get("warnings", [])] + run_sentences(metrics)


def _train(data, out, config, overwrite, resume, options, default_method) -> None:
    from .. import api

    result = api.train(
        data, out, config=config, overwrite=overwrite, resume=resume, default_method=default_method, **options
    )
    _print_result(result)


def _print_result(result) -> None:
    """The metrics table of a finished run, its notices, and where its report is."""
    method = result.config.method.name
    out = console()
    out.print(_metrics_table(result.metrics, f"{result.run_dir} ({method}) on {result.metrics.get('eval_data')}"))
    for line in run_notices(result.metrics):
        out.print(line, soft_wrap=True, markup=False)
    out.print(f"report: {result.run_dir / 'report.html'}", soft_wrap=True)


@app.command()
@with_training_options()
def train(
    data: DataArgument = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/run"),
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    options: dict | None = None,
) -> None:
    """Train on DATA (by default: fine-tune a pretrained backbone); writes a run directory."""
    _train(data, out, config, overwrite, resume, options, default_method=None)


@app.command()
@with_training_options()
def semi(
    data: DataArgument = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/semi"),
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    options: dict | None = None,
) -> None:
    """Semi-supervised training: tri-net (the default method here), or the supervised,
    pseudo-label and FixMatch baselines; the same as 'fewlabel train --method ...'."""
    _train(data, out, config, overwrite, resume, options, default_method="trinet")


@app.command()
@with_training_options()
def distill(
    data: DataArgument = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/student"),
    student: Annotated[str | None, typer.Option(help="the student's timm architecture (same as --model)")] = None,
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    options: dict | None = None,
) -> None:
    """Distil a teacher run into a (smaller) student: cross-entropy on the labelled images plus
    --loss lgg | kd | rkd (joined by '+') on them and, with --unlabeled, on a pool; the same as
    'fewlabel train --method distill'."""
    if student:
        options = options | {"model": student}
    _train(data, out, config, overwrite, resume, options, default_method="distill")


QuantSchedule = Enum("QuantSchedule", {s: s for s in ("direct", "progressive", "hlhl")}, type=str)
ExportFormat = Enum("ExportFormat", {"onnx": "onnx"}, type=str)


@app.command()
@with_training_options(skip=("schedule", "qat_schedule", "model", "pretrained"))
def quantize(
    run: Annotated[Path, typer.Argument(help="the float run to quantize")],
    data: DataArgument = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/quantized"),
    schedule: Annotated[
        QuantSchedule | None, typer.Option(help="precision schedule: direct, progressive or hlhl (default direct)")
    ] = None,
    config: ConfigOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    options: dict | None = None,
) -> None:
    """Quantization-aware training of a float run at --weight-bits / --act-bits (the same as
    'fewlabel train --method qat --pretrained RUN/model.safetensors'); exported to ONNX and
    measured in quant.json and the report."""
    from .. import api

    if schedule:
        options = options | {"qat_schedule": schedule.value}
    result = api.quantize(run, data, out, config=config, overwrite=overwrite, resume=resume, **options)
    _print_result(result)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory (float or quantized)")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="export format")] = ExportFormat.onnx,
    out: Annotated[Path | None, typer.Option(help="the file to write (default RUN/model.onnx)")] = None,
) -> None:
    """Export a run's network to ONNX (a quantized run as QuantizeLinear/Clip/DequantizeLinear)
    and check onnxruntime against PyTorch on a seeded batch."""
    from .. import api

    record = api.export(run, out, fmt.value)
    kind = "quantized (QCDQ)" if record["quantized"] else "float"
    kernels = ", ".join(f"{n} {k}" for k, n in record["onnxruntime_kernels"].items())
    printer = console()
    printer.print(f"{record['path']}: {kind}, {record['size_bytes'] / 1e6:.2f} MB", soft_wrap=True)
    printer.print(
        f"onnxruntime vs PyTorch on {record['parity_images']} images: argmax agreement "
        f"{100 * record['argmax_agreement']:.1f}%, largest logit difference {record['max_abs_logit_difference']:.2g}; "
        f"kernels: {kernels}",
        soft_wrap=True,
    )


@app.command("run")
@with_training_options(skip=PER_STAGE_KEYS)
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML: stages of stepwise fine-tuning")],
    out: Annotated[Path | None, typer.Option(help="recipe folder (default runs/<recipe name>)")] = None,
    seeds: Annotated[str | None, typer.Option(help="run the whole recipe per seed, e.g. 0,1,2")] = None,
    compare: Annotated[Compare | None, typer.Option(help="also fine-tune source -> target directly")] = None,
    overwrite: Annotated[bool, typer.Option(help="redo finished stages")] = False,
    options: dict | None = None,
) -> None:
    """Run a recipe's stages in order; a rerun resumes at the first unfinished stage. Training
    flags apply to every stage (over the recipe's own options)."""
    from ..stepwise.recipe import run_recipe

    out = out or Path("runs") / recipe.stem
    summary = run_recipe(
        recipe,
        out,
        seeds=parse_seeds(seeds),
        compare=compare.value if compare else None,
        overwrite=overwrite,
        options=options,
    )
    rows = table("stage", "evaluated on", "accuracy", "macro-F1", title=f"{out} ({len(summary['seeds'])} seed(s))")
    for stage in summary["stages"]:
        acc, f1 = stage["metrics"]["accuracy"], stage["metrics"]["macro_f1"]
        rows.add_row(stage["name"], stage["eval_data"], _mean_sd(acc), _mean_sd(f1))
    printer = console()
    printer.print(rows)
    if "comparison" in summary:
        printer.print(summary["comparison"]["statement"])
    printer.print(f"report: {out / 'report.html'}", soft_wrap=True)


def _mean_sd(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f}" + (f" ± {100 * stats['sd']:.1f}" if stats["n"] > 1 else "")


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[str, typer.Argument(help="DATA to evaluate on, e.g. fashion-mnist:test")],
    out: Annotated[Path | None, typer.Option(help="write the metrics JSON here")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="refuse unreadable images")] = False,
) -> None:
    """Evaluate a trained model on DATA."""
    from .. import api

    metrics = api.evaluate(run, data, out, strict)
    printer = console()
    printer.print(_metrics_table(metrics, f"{run} on {data}"))
    if out:
        printer.print(f"metrics: {out}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Top-k classes for each image."""
    from .. import api

    predictions = api.load_classifier(run).predict([str(p) for p in images], top_k=top_k)
    if as_json:
        typer.echo(json.dumps(predictions, indent=2))
        return
    rows = table("image", *[f"#{i + 1}" for i in range(min(top_k, len(predictions[0]["top"])))])
    for p in predictions:
        rows.add_row(p["image"], *[f"{t['class']} {t['probability']:.3f}" for t in p["top"]])
    console().print(rows)


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="run directory")],
    host: Annotated[str, typer.Option(help="interface to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="largest accepted file")] = 10.0,
    max_files: Annotated[int, typer.Option(min=1, help="files a request may send")] = 16,
    max_request_mb: Annotated[float, typer.Option(min=0.01, help="largest accepted request")] = 64.0,
    max_megapixels: Annotated[float, typer.Option(min=0.01, help="largest accepted image, after JPEG draft")] = 40.0,
    workers: Annotated[int, typer.Option(min=1, help="images decoded and predicted at once")] = 2,
    allowed_hosts: Annotated[
        str | None, typer.Option(help="Host names answered, comma-separated (default: loopback, or --host)")
    ] = None,
) -> None:
    """A local web app: drop images, see top-k classes and Grad-CAM, download CSV."""
    from ..serve import Limits
    from ..serve import serve as run_server

    limits = Limits(max_upload_mb, max_files, max_request_mb, max_megapixels, workers)
    hosts = [h.strip() for h in allowed_hosts.split(",") if h.strip()] if allowed_hosts else None
    run_server(run, host, port, top_k, max_upload_mb, limits=limits, allowed_hosts=hosts)


@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="glob, e.g. 'efficientnet*'")] = "",
    offline: Annotated[bool, typer.Option(help="only those with ImageNet weights offline")] = False,
) -> None:
    """Backbones (any timm architecture) and which have ImageNet weights offline."""
    from .. import api

    found = [r for r in api.list_models(pattern) if r["offline_imagenet"] or not offline]
    rows = table("name", "ImageNet weights offline", title=f"{len(found)} backbones")
    for r in sorted(found, key=lambda r: (not r["offline_imagenet"], r["name"])):
        rows.add_row(r["name"], "yes" if r["offline_imagenet"] else "hub download only")
    console().print(rows)


@app.command()
def datasets() -> None:
    """Built-in datasets and whether each is present on this machine."""
    from .. import api

    rows = table("name", "splits", "present", "description")
    for d in api.list_datasets():
        rows.add_row(d["name"], ", ".join(d["splits"]), "yes" if d["present"] else "no", d["description"])
    console().print(rows)


@app.command()
def methods() -> None:
    """Registered training methods, the tasks they train and their own options."""
    from ..methods import get_method, list_methods

    rows = table("method", "what it does", "tasks", "needs unlabeled images", "options")
    for name in list_methods():
        method = get_method(name)
        options = ", ".join(k for k in method.options.model_fields if k != "name")
        rows.add_row(name, method.summary, ", ".join(method.tasks), "yes" if method.needs_unlabeled else "no", options)
    console().print(rows)


audit_app = typer.Typer(no_args_is_help=True, help="Audit a trained model (robustness).")
app.add_typer(audit_app, name="audit")


@audit_app.command("uap")
def audit_uap(
    run: Annotated[Path, typer.Argument(help="run directory of a classifier")],
    natural: Annotated[Path | None, typer.Option(help="folder of natural photos to build the UAP from")] = None,
    source: Annotated[str | None, typer.Option(help="DATA to build from instead (white-box), e.g. data:train")] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval", help="DATA to score on (default: the run's DATA test split)")
    ] = None,
    norm: Annotated[str, typer.Option(help="l2 | linf")] = "l2",
    zeta: Annotated[float, typer.Option(help="radius as a share of the mean image norm, in (0, 1]")] = 0.04,
    target: Annotated[str | None, typer.Option(help="a class to send images to (targeted UAP)")] = None,
    step: Annotated[float, typer.Option(help="FGSM step on the [-1, 1] pixel scale")] = 0.0005,
    max_passes: Annotated[int, typer.Option(help="passes over the building images at most")] = 10,
    delta: Annotated[
        float, typer.Option(help="stop once 1 - delta of the building images are fooled (0: every pass runs)")
    ] = 0.0,
    images: Annotated[int | None, typer.Option(help="building images (default: one crop per photo)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the crops and of the pass order")] = 0,
    out: Annotated[Path | None, typer.Option(help="folder for uap.json (default RUN/audit/uap)")] = None,
    compare: Annotated[
        list[Path] | None, typer.Option(help="another run to score the same perturbation against (repeatable)")
    ] = None,
) -> None:
    """Universal adversarial perturbation (Minagi et al. 2022): fooling rate against a random control."""
    from ..audit.uap_audit import audit_uap as run_audit

    record = run_audit(
        run, natural=natural, source=source, eval_data=eval_data, norm=norm, zeta=zeta, target=target, step=step,
        max_passes=max_passes, delta=delta, images=images, seed=seed, out=out, compare=compare,
    )  # fmt: skip
    key = "fooling_rate" if target is None else "targeted_success_rate"
    rows = table("images", "UAP", "random control", title=f"{run}: {key.replace('_', ' ')} ({norm}, zeta {zeta:g})")
    for name in ("evaluation", "building"):
        rates = record[name]
        rows.add_row(name, f"{rates[key]:.3f}", f"{rates['random_control_' + key]:.3f}")
    for other, rates in record.get("compare", {}).items():
        other_key = key if key in rates else "fooling_rate"
        rows.add_row(f"evaluation, {other}", f"{rates[other_key]:.3f}", f"{rates['random_control_' + other_key]:.3f}")
    printer = console()
    printer.print(rows)
    printer.print(
        f"perturbation: {record['ball_filled']:.0%} of its radius after {record['passes']} passes "
        f"over {record['building_images']} images"
    )
    printer.print(f"uap.json: {(out or run / 'audit' / 'uap') / 'uap.json'}", soft_wrap=True)


@audit_app.command("infoplane")
def audit_infoplane(
    runs: Annotated[list[Path], typer.Argument(help="run directories trained with --track-infoplane")],
    out: Annotated[Path, typer.Option(help="folder for infoplane.json and infoplane.png")],
    rank: Annotated[bool, typer.Option(help="rank runs by validation I(T;Y), correlate with test accuracy")] = False,
    per_class: Annotated[bool, typer.Option(help="per-class I(T;Y_c) trajectories and against class counts")] = False,
    reach: Annotated[
        float | None,
        typer.Option(
            help="runs differing in pretraining: epochs until I(T;Y) reaches this share of H(Y) [default: half]"
        ),
    ] = None,
) -> None:
    """Information plane of the output (Cheng et al. 2019): runs' trajectories on one plane."""
    from ..audit.infoplane_audit import audit_infoplane as run_audit

    shares = {"reach": reach} if reach is not None else {}  # the audit's own default otherwise
    result = run_audit(runs, out=out, rank=rank, per_class=per_class, **shares)
    rows = table("run", "I(X;T)", "I(T;Y)", "I(T;Y) k-NN", "val acc", "test acc", title="information plane (bits)")
    names = [row["run"] for row in result["rank"]["order"]] if rank else list(result["runs"])
    for name in names:
        record = result["runs"][name]
        binned, knn = record["final"]["binning"], record["final"].get("knn")
        rows.add_row(
            name, f"{binned['I_XT']:.3f}", f"{binned['I_TY']:.3f}", f"{knn['I_TY']:.3f}" if knn else "-",
            _rate(record["val_accuracy"]), _rate(record["test_accuracy"]),
        )  # fmt: skip
    printer = console()
    printer.print(rows)
    if rank:
        for key, what in (("I_TY_vs_test_accuracy", "I(T;Y)"), ("val_accuracy_vs_test_accuracy", "val accuracy")):
            found = result["rank"][key]
            said = (
                "undefined (fewer than 3 runs or constant)"
                if found["rho"] is None
                else (f"{found['rho']:.2f} (p = {found['p_value']:.3g})")
            )
            printer.print(f"Spearman, {what} against test accuracy over {found['runs']} runs: {said}")
    for group in result["transfer"]:
        reached = ", ".join(f"{n}: {r['epochs_to_reach']}" for n, r in group["runs"].items())
        printer.print(f"epochs to {group['reach_fraction']:.0%} of H(Y), runs differing in pretraining: {reached}")
    printer.print(f"infoplane.json: {out / 'infoplane.json'}", soft_wrap=True)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

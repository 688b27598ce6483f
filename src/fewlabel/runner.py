"""Train a resolved config into a run directory: per seed, the task's data, the method's fits
through the engine, the task's evaluation, the model files; then the report.

Under DDP every process runs all of this; only process 0 writes. Recipes and the API call
:func:`run_training`; nothing here parses user options (that is :mod:`fewlabel.config`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L

from .config import CONFIG_KEYS_FREE_ON_RESUME, TrainConfig
from .distributed import is_rank_zero
from .errors import FewlabelError
from .methods import get_method, load_object
from .models import ModelCard, save_model_files
from .outputs import input_paths, output_folder
from .rundir import (
    CONFIG,
    ROBUSTNESS,
    RUN_OUTPUT,
    WEIGHTS,
    has_checkpoint,
    has_model,
    read_config,
    seed_dir,
    seed_dirs,
    write_config,
    write_metrics,
    write_record,
    write_splits,
)
from .tasks import get_task
from .tasks.base import DataBundle, RunContext
from .train.callbacks import best_of_many_margin
from .train.engine import Engine, check_logger_available, finished_fit_weights, run_identity

log = logging.getLogger("fewlabel")
REFIT_BELOW = 50  # labelled images per class under which a held-out fifth is worth taking back


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    config: TrainConfig


def run_training(
    cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: list[L.Callback] | None = None,
) -> TrainResult:
    """Train ``cfg`` and write a run directory to ``out``; with several seeds, one per seed under
    ``out/seed-<s>`` and an aggregate (mean, sd, 95% interval) at the top.

    The first seed's data is loaded and checked before ``out`` is touched, and ``out`` is opened
    through :func:`fewlabel.outputs.output_folder`: an overwrite is built beside the previous run
    and swapped in when complete; a new run that fails before its first checkpoint leaves nothing."""
    check_logger_available(cfg.logger)
    out, seeds = Path(out), cfg.seed_list
    if overwrite and resume:
        raise FewlabelError("Use either --overwrite or --resume, not both.")
    L.seed_everything(seeds[0], workers=True, verbose=False)
    first_data = get_task(cfg.task).prepare_data(cfg, seeds[0])
    folder = output_folder(
        out, RUN_OUTPUT.name, overwrite=overwrite, resume=resume, inputs=input_paths(cfg.to_yaml_dict().values()),
        writes=is_rank_zero(), keep_on_error=has_any_checkpoint,
    )  # fmt: skip
    with folder as run_dir:
        if is_rank_zero():  # under DDP the other processes train alongside but write nothing
            if resume:
                check_resumed_config(run_dir, cfg)
            write_config(run_dir, cfg.to_yaml_dict())
        if len(seeds) == 1:
            metrics = train_one_seed(cfg, seeds[0], run_dir, resume, callbacks, first_data)
        else:
            per_seed = {
                s: train_one_seed(cfg, s, seed_dir(run_dir, s), resume, callbacks, first_data if i == 0 else None)
                for i, s in enumerate(seeds)
            }
            metrics = get_task(cfg.task).aggregate(per_seed) | {
                key: per_seed[seeds[0]][key] for key in ("eval_data", "method", "task")
            }
            if is_rank_zero():
                write_metrics(run_dir, metrics)
                finish(run_dir)
    if is_rank_zero() and cfg.logger == "mlflow":
        track_in_mlflow(out, cfg, seeds)
    return TrainResult(out, metrics, cfg)


def has_any_checkpoint(run_dir: Path) -> bool:
    """Whether a failed run left something ``--resume`` continues from (its own or a seed's)."""
    return has_checkpoint(run_dir) or any(has_checkpoint(d) for d in seed_dirs(run_dir))


def check_resumed_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run without its config.yaml, or with settings that change its weights."""
    previous = read_config(run_dir)
    if not previous:
        raise FewlabelError(
            f"--resume: '{run_dir / CONFIG}' is missing, so what the run was started with is unknown; "
            "start a new run (--pretrained can take a finished run's model.safetensors)."
        )
    changes = config_changes(previous, cfg)
    if changes:
        weights = run_dir / WEIGHTS if has_model(run_dir) else finished_fit_weights(run_dir)
        start = f" from its weights with --pretrained {weights}" if weights is not None else ""
        raise FewlabelError(
            f"--resume: '{run_dir}' was started with another config ({changes}); resume with its own settings, or "
            f"start a new --out{start}."
        )


def config_changes(previous: dict, cfg: TrainConfig) -> str:
    """The settings that differ between a saved config and ``cfg``, as ``key: old -> new``
    (empty when none); settings that do not change results (progress, workers, ...) are ignored."""
    current = cfg.to_yaml_dict()
    changed = sorted(k for k, v in current.items() if k not in CONFIG_KEYS_FREE_ON_RESUME and previous.get(k, v) != v)
    return ", ".join(f"{k}: {previous.get(k)!r} -> {current[k]!r}" for k in changed)


def train_one_seed(
    cfg: TrainConfig,
    seed: int,
    run_dir: Path,
    resume: bool,
    callbacks: list[L.Callback] | None,
    data: DataBundle | None = None,
) -> dict:
    """One seed's run: data (``data`` when already loaded, right after seeding), the method's
    fits, evaluation, model files, report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    task, method = get_task(cfg.task), get_method(cfg.method.name)
    if data is None:
        L.seed_everything(seed, workers=True, verbose=False)
        data = task.prepare_data(cfg, seed)
    writes = is_rank_zero()
    if writes:
        write_splits(run_dir, task.splits_record(data, seed))
    identity = run_identity(cfg, getattr(data.train, "class_names", None))
    engine = Engine(cfg, seed, run_dir, callbacks, resume, monitor=task.monitor, identity=identity)
    cfg, augment_decision = task.resolve_augment(cfg, data, engine)
    if writes and augment_decision and read_config(run_dir):  # a single-seed run: its config.yaml says it
        write_config(run_dir, read_config(run_dir) | {"resolved": {"augment": cfg.augment, "vflip": cfg.vflip}})
    ctx = RunContext(cfg, seed, run_dir, data, task, engine)
    model, info = method.trainer()(ctx)
    selection = model_selection(engine, cfg, task, len(data.val) if data.val is not None else 0)
    refit = refit_decision(cfg, data, method, task)
    if refit["refit"]:
        model, info, refit_record = refit_model(ctx, model, info, method)
        refit |= refit_record
    extras = (engine.method_state.get("card_extras") or {}) | task.fitted_settings(model.eval(), info, cfg, data)
    card = model_card(cfg, data, info, method, task, extras)
    metrics, predictions = task.evaluate(model.eval(), card, data.eval, cfg.progress)
    metrics |= {"eval_data": data.eval_name, "seed": seed, "task": cfg.task, "method": method.name} | engine.timing()
    if selection:
        metrics["model_selection"] = selection
    if augment_decision:
        metrics["augment_decision"] = augment_decision
    if "search" in engine.method_state:
        metrics["strategy_search"] = engine.method_state["search"]
    metrics["refit"] = refit
    robustness = task.robustness(model, card, data.eval, cfg, seed)
    metrics["warnings"] = task.learning_warnings(metrics, model, cfg)
    for warning in metrics["warnings"]:
        log.warning("%s", warning)
    if writes:
        if method.finish:
            load_object(method.finish)(ctx, model, card)
        save_model_files(run_dir, model, card)
        task.write_predictions(run_dir, predictions)
        if robustness:
            write_record(run_dir, ROBUSTNESS, robustness | {"eval_data": data.eval_name})
        write_metrics(run_dir, metrics)
        finish(run_dir)
    return metrics


def model_card(cfg: TrainConfig, data, info, method, task, extras: dict | None = None) -> ModelCard:
    """model.json of the trained network: the task's fields, the method's own options, and
    ``extras`` its training decided (qat: which layers take signed inputs)."""
    fields = task.card_fields(cfg, data, info)
    options = {key: getattr(cfg.method, key) for key in method.card_fields}
    fields["extras"] = fields.get("extras", {}) | options | (extras or {})
    return ModelCard(arch=cfg.model, pretrained=info.weights, task=cfg.task, method=method.name, **fields)


def refit_decision(cfg: TrainConfig, data, method, task) -> dict:
    """Whether to retrain the chosen plan on all labelled images, and why (for the report):
    ``refit`` when set, else on below REFIT_BELOW labelled images per class; only when the
    validation images were held out of the labelled ones and the method can refit."""
    asked = cfg.refit
    record = {"refit": False, "asked": asked, "threshold_per_class": REFIT_BELOW}
    if data.val is None:
        return record | {"why": "no validation images were held out"}
    if not data.val_held_out:
        why = "validation is DATA's own val split, not held out of the labelled images: the model trained on the "
        why += "training images only" + (", as --refit asks" if asked else "")
        if asked:
            log.info("--refit: %s", why)
        return record | {"why": why}
    if method.refit is None:
        return record | {"why": f"method '{method.name}' does not refit"}
    if not task.can_refit:
        if asked:
            raise FewlabelError(f"--refit: task '{task.name}' needs its validation images after training; remove it")
        return record | {"why": f"task '{task.name}' decides settings on its validation images after training"}
    per_class = _smallest_class(data)
    if asked is None:
        on = bool(per_class) and per_class < REFIT_BELOW
        why = f"{per_class} labelled images in the smallest class, {'below' if on else 'not below'} {REFIT_BELOW}"
        return record | {"refit": on, "why": f"default: {why}" + ("" if on else "; turn on with --refit")}
    return record | {"refit": asked, "why": "--refit" if asked else "--no-refit"}


def _smallest_class(data) -> int:
    """Labelled images (training and held-out validation) of the smallest class; of all, for a
    task without classes."""
    if not hasattr(data.train, "class_counts"):
        return len(data.train) + len(data.val)
    counts = [a + b for a, b in zip(data.train.class_counts(), data.val.class_counts(), strict=True)]
    return min(c for c in counts if c)


def refit_model(ctx: RunContext, model, info, method) -> tuple:
    """Score the chosen model on the evaluation data, then retrain its plan on all labelled
    images. Returns (model, info, the refit's record: the pre-refit metrics, the plan, the
    number of images, and whether the evaluation images were among them)."""
    cfg, task, data, engine = ctx.cfg, ctx.task, ctx.data, ctx.engine
    pre = engine.method_state.get("pre_refit")
    if pre is None:  # not yet scored (a resumed refit scored it before its first fit)
        card = model_card(cfg, data, info, method, task)
        metrics, _ = task.evaluate(model.eval(), card, data.eval, cfg.progress)
        pre = {k: metrics[k] for k in task.metric_keys if isinstance(metrics.get(k), (int, float))}
        pre |= {"eval_data": data.eval_name, "n_samples": metrics.get("n_samples")}
        engine.method_state["pre_refit"] = pre
    joined = task.refit_data(data)
    log.info("refit: retraining the chosen plan on all %d labelled images", len(joined.train))
    model, info = load_object(method.refit)(replace(ctx, data=joined))
    record = {
        "pre_refit": pre,
        "images": len(joined.train),
        "plan": engine.method_state.get("plan", []),
        "eval_trained_on": data.eval_name == "validation",
    }
    return model, info, record


def model_selection(engine: Engine, cfg: TrainConfig, task, val_images: int) -> dict | None:
    """With ``keep_best``, restore the best validated epoch of the run (over all its fits) when
    it is clearly better than the epoch the network holds (the last, or the winner's under
    strategy auto): by more than the task's noise margin on ``val_images`` images, widened for
    the number of epochs the best was chosen from (:func:`best_of_many_margin`). Record which
    epochs these were, the margin, and what the network holds (``engine.method_state['held']``,
    what a refit retrains up to)."""
    selection = engine.selection
    best, last = selection.best, selection.last
    if best is None:
        return None
    margin = best_of_many_margin(task.selection_margin(last[selection.key], val_images), len(selection.history))
    restored = cfg.keep_best and best != last and selection.clearly_beats(best, last, margin)
    if restored:
        engine.restore_best()
        log.info(
            "restored the weights of fit '%s', epoch %d (%s %.4f on %d validation images); the last epoch scored %.4f",
            best["fit"], best["epoch"], selection.key, best[selection.key], val_images, last[selection.key],
        )  # fmt: skip
    engine.method_state["held"] = best if restored else last
    return {
        "monitor": selection.key,
        "best": best,
        "last": last,
        "restored_best": restored,
        "keep_best": cfg.keep_best,
        "val_images": val_images,
        "margin": margin,
    }


def finish(run_dir: Path) -> None:
    """Write the run's report (imported here: reading a run needs none of the training code)."""
    from .report import write_report

    write_report(run_dir)


def track_in_mlflow(out: Path, cfg: TrainConfig, seeds: list[int]) -> None:
    """With ``--logger mlflow``, record the finished run (each seed, then the aggregate) in MLflow;
    after the run is in place, so that MLflow names its final folder."""
    from .tracking import log_run_to_mlflow

    folders = [seed_dir(out, s) for s in seeds] + [out] if len(seeds) > 1 else [out]
    for folder in folders:
        run_id = log_run_to_mlflow(folder, cfg.mlflow_uri)
        log.info("recorded %s in MLflow as run %s", folder, run_id)


def evaluate_run(run_dir: str | Path, data: str, strict: bool = False, settings: dict | None = None) -> dict:
    """Metrics of a trained run's model on DATA; ``settings`` change task options stored in its
    model.json for this evaluation only (nuclei: ``match_radius``, ``threshold``)."""
    from .methods import load_network
    from .rundir import model_dir

    model, card = load_network(model_dir(run_dir))
    if settings:
        card = replace(card, extras=card.extras | settings)
    task = get_task(card.task)
    metrics, _ = task.evaluate(model, card, task.load_split(data, card, strict), progress=True)
    return metrics | {"eval_data": data, "run": str(run_dir), "task": card.task}

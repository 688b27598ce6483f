"""Recipes: stepwise fine-tuning as a list of stages, each starting from the previous one's weights.

Qu et al. (2018) fine-tune an ImageNet network on a target-correlative intermediate dataset
before the scarce target set. A recipe YAML names the stages::

    name: stepwise-fashion
    defaults: {model: efficientnet_lite0, img_size: 64}   # training options of every stage
    seeds: [0]
    stages:
      - name: clusters
        build: {method: clusters, pool: fashion-mnist, pool_size: 5000, k: 20}
        epochs: 3
      - name: target
        data: fashion-mnist
        labels_per_class: 10

Each stage is a ``fewlabel train`` run (every training option is accepted, per stage) in
``OUT/seed-<s>/<stage>/``; built data goes to ``OUT/seed-<s>/data-<stage>/``. The head is
kept when a stage has its predecessor's class set and swapped otherwise (``head``: auto,
keep, new). ``OUT/summary.json`` and ``OUT/report.html`` compare the stages, and with
``compare="direct"`` a run from the source weights straight to the target with the same
total epochs (see :func:`direct_config`).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import (
    PER_STAGE_KEYS,
    TrainConfig,
    accepted_keys,
    common_keys,
    for_method,
    format_validation_error,
    make_config,
    merge_options,
    method_section,
    read_config_file,
)
from ..data.sources import SOURCE_KINDS, parse_data_spec
from ..errors import FewlabelError
from ..evaluate.metrics import mean_sd_ci
from ..fileio import read_json, write_json
from ..methods import get_method, list_methods
from ..outputs import input_paths, output_folder
from ..rundir import (
    QUANT,
    RECIPE_OUTPUT,
    ROBUSTNESS,
    WEIGHTS,
    built_data_dir,
    has_checkpoint,
    is_recipe_folder,
    read_record,
    read_stage,
    seed_dir,
    write_recipe,
    write_stage,
    write_summary,
)
from . import DESCRIPTORS, INTERMEDIATE_BUILDERS, INTERMEDIATE_METHODS

log = logging.getLogger("fewlabel.recipe")
STAGE_KEYS = ("name", "data", "build")
RECIPE_LEVEL_KEYS = ("seed", "seeds")  # one set of seeds runs the whole chain
COMPARED = ("accuracy", "balanced_accuracy", "macro_f1")
DIRECT = "direct"


class BuildSpec(BaseModel):
    """How a stage's intermediate data is made (see ``fewlabel intermediate build``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal[INTERMEDIATE_METHODS]
    pool: str | None = Field(None, description="clusters: unlabeled images; default the last stage's data")
    pool_size: int | None = Field(None, ge=2, description="clusters: seeded random subset of the pool")
    k: int = Field(20, ge=2)
    descriptor: Literal[DESCRIPTORS] = "handcrafted"
    keep_fraction: float = Field(0.8, gt=0, le=1)
    generator: str | None = Field(None, description="synthetic: module:function")
    per_class: int = Field(100, ge=1)
    options: dict = Field(default_factory=dict, description="synthetic: keyword arguments of the generator")

    @model_validator(mode="after")
    def _generator_for_synthetic(self) -> BuildSpec:
        for key, what in INTERMEDIATE_BUILDERS[self.method].requires.items():
            if not getattr(self, key):
                raise ValueError(f"method {self.method} needs {key}: {what}")
        return self


class Stage(BaseModel):
    """One stage: its data (given, or built) plus any ``fewlabel train`` option."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    data: str | None = None
    build: BuildSpec | None = None

    @field_validator("name")
    @classmethod
    def _usable_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or value == DIRECT:
            raise ValueError(f"use letters, digits, '_', '-' and '.' (not '{DIRECT}', the comparison run's name)")
        return value

    @model_validator(mode="after")
    def _one_data_source(self) -> Stage:
        if (self.data is None) == (self.build is None):
            raise ValueError("give exactly one of data (a DATA spec) or build (an intermediate builder)")
        return self

    @property
    def options(self) -> dict:
        return dict(self.model_extra or {})


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    defaults: dict = Field(default_factory=dict, description="training options shared by every stage")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    stages: list[Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate stage name(s): {', '.join(duplicates)}")
        return stages


def read_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read and validate a recipe YAML; every stage's training options are checked here too,
    so a typo in the last stage fails before the first one trains."""
    values = read_config_file(path)
    try:
        recipe = Recipe(**values)
    except ValidationError as exc:
        raise FewlabelError(format_validation_error(exc, str(path), _accepted_keys)) from None
    check_recipe(recipe, str(path), overrides)
    return recipe


def _accepted_keys(loc: tuple) -> list[str]:
    """The keys accepted where an unknown key was found: recipe top level or a stage's build."""
    if len(loc) == 1:
        return list(Recipe.model_fields)
    if "build" in loc:
        return list(BuildSpec.model_fields)
    return [*STAGE_KEYS, *accepted_keys()]


def check_recipe(recipe: Recipe, origin: str = "recipe", overrides: dict | None = None) -> None:
    trainable = [k for k in accepted_keys() if k not in ("data", *RECIPE_LEVEL_KEYS)]
    for key in recipe.defaults:
        if key not in trainable:
            raise FewlabelError(f"{origin}: defaults.{key}: not a training option; accepted: {', '.join(trainable)}")
    for index, stage in enumerate(recipe.stages):
        where = f"{origin}: stages.{index} ({stage.name})"
        for key in stage.options:
            if key in RECIPE_LEVEL_KEYS:
                raise FewlabelError(f"{where}: {key}: set seeds once, at the recipe's top level.")
            if key == "pretrained" and index > 0 and not _takes_teacher(recipe, stage):
                raise FewlabelError(
                    f"{where}: pretrained: a later stage starts from the previous stage's weights; "
                    "only the first stage (or defaults) names the source weights."
                )
        stage_config(recipe, index, Path("."), recipe.seeds[0], origin, overrides)
        for data in (stage.data, stage.build and stage.build.pool):
            if data:
                _check_data_exists(data, where)
    if recipe.stages[-1].data is None:
        raise FewlabelError(f"{origin}: the last stage is the target and needs data, not build.")
    _check_overrides_are_used(recipe, overrides or {}, origin)


def _takes_teacher(recipe: Recipe, stage: Stage) -> bool:
    """Whether a stage's method learns from a teacher (its network is its own: it may name its
    own pretrained weights)."""
    method = stage_method(merge_options(recipe.defaults, stage.options))
    return method in list_methods() and get_method(method).takes_teacher


def _check_overrides_are_used(recipe: Recipe, overrides: dict, origin: str) -> None:
    """Refuse a flag that no stage's method takes (it would change nothing)."""
    methods = [stage_method(merge_options(merge_options(recipe.defaults, s.options), overrides)) for s in recipe.stages]
    for key in overrides:
        if not any(key in for_method({key: None}, m) for m in methods):
            flag, used = key.replace("_", "-"), ", ".join(methods)
            raise FewlabelError(f"{origin}: --{flag}: no stage's method takes it (the stages use {used}).")


def _check_data_exists(data: str, where: str) -> None:
    """Refuse, before any stage trains, DATA that is missing or a folder without images."""
    try:
        spec = parse_data_spec(data)
    except FewlabelError as exc:
        raise FewlabelError(f"{where}: {exc}") from None
    if not SOURCE_KINDS[spec.kind].holds_images(spec.location):
        raise FewlabelError(f"{where}: data folder '{data}' holds no image files.")


def stage_config(
    recipe: Recipe, index: int, seed_folder: Path, seed: int, origin: str = "recipe", overrides: dict | None = None
) -> TrainConfig:
    """The training config of stage ``index`` for one seed: defaults, then the stage's own
    options, then ``overrides`` (``fewlabel run``'s flags), its data (built data lives in
    ``seed_folder``) and the previous stage's weights. Defaults and flags apply where the
    stage's method takes them."""
    stage = recipe.stages[index]
    data = stage.data or str(built_data(seed_folder, stage))
    values = merge_options(merge_options(recipe.defaults, stage.options), overrides or {})
    method = stage_method(values)
    if method in list_methods():
        shared = for_method(merge_options(recipe.defaults, overrides or {}), method)
        values = {k: v for k, v in values.items() if k in stage.options or k in shared}
    values |= {"seed": seed, "data": data}
    where = f"{origin}: stages.{index} ({stage.name})"
    if method in list_methods() and get_method(method).takes_teacher:
        values = with_teacher(values, recipe, index, seed_folder, where)
    elif index > 0:
        values["pretrained"] = str(seed_folder / recipe.stages[index - 1].name / WEIGHTS)
    return make_config(values, where)


def with_teacher(values: dict, recipe: Recipe, index: int, seed_folder: Path, where: str) -> dict:
    """A stage that learns from a teacher (``method: distill``): ``teacher`` names an earlier
    stage (its run in this seed's folder) or a run directory; default the previous stage. Such
    a stage does not start from the previous stage's weights (the student is another network)."""
    section = method_section(values.get("method"))
    teacher = values.pop("teacher", None) or section.get("teacher")
    earlier = [s.name for s in recipe.stages[:index]]
    later = [s.name for s in recipe.stages[index:]]
    if teacher is None:
        if not earlier:
            raise FewlabelError(f"{where}: teacher: the first stage has no earlier stage to learn from; name a run.")
        teacher = earlier[-1]
    if teacher in later:
        raise FewlabelError(f"{where}: teacher: '{teacher}' is not an earlier stage (earlier: {', '.join(earlier)}).")
    if teacher in earlier:
        teacher = str(seed_folder / teacher)
    return values | {"method": section | {"teacher": teacher}}


def stage_method(values: dict) -> str:
    return str(method_section(values.get("method")).get("name"))


def run_overrides(options: dict) -> dict:
    """``fewlabel run``'s training flags, applied to every stage; refuses those that differ per stage."""
    given = {k: v for k, v in options.items() if v is not None}
    refused = [k for k in given if k in PER_STAGE_KEYS]
    if refused:
        shared = ", ".join(k for k in common_keys() if k not in PER_STAGE_KEYS)
        raise FewlabelError(
            f"fewlabel run: --{refused[0].replace('_', '-')} differs per stage; set it in the recipe "
            f"(stages or defaults). Flags apply to every stage: {shared}."
        )
    return given


def direct_config(recipe: Recipe, seed_dir: Path, seed: int, overrides: dict | None = None) -> TrainConfig:
    """The comparison run: the target stage's config from the first stage's source weights, with
    ``epochs`` the sum of every stage's epochs (the same total budget of whole-network epochs;
    head epochs on cached features stay the target's, as they barely cost anything)."""
    configs = [stage_config(recipe, i, seed_dir, seed, overrides=overrides) for i in range(len(recipe.stages))]
    values = configs[-1].model_dump() | {
        "pretrained": configs[0].pretrained,
        "epochs": sum(c.epochs for c in configs),
        "head": "auto",
    }
    return make_config(values, DIRECT)


def built_data(seed_folder: Path, stage: Stage) -> Path:
    """The DATA spec of a built stage: its ImageFolder (clusters) or its labels.csv (synthetic)."""
    folder = built_data_dir(seed_folder, stage.name)
    data_file = INTERMEDIATE_BUILDERS[stage.build.method].data_file if stage.build else ""
    return folder / data_file if data_file else folder


def run_recipe(
    recipe: Recipe | str | Path,
    out: str | Path,
    *,
    seeds: list[int] | None = None,
    compare: str | None = None,
    overwrite: bool = False,
    options: dict | None = None,
) -> dict:
    """Run every stage for every seed (finished stages are skipped, an interrupted one resumes),
    then write ``summary.json`` and ``report.html`` in ``out``. ``options`` (training options)
    override every stage's."""
    overrides = run_overrides(options or {})
    if isinstance(recipe, Recipe):
        check_recipe(recipe, overrides=overrides)
    else:
        recipe = read_recipe(recipe, overrides)
    if seeds:
        recipe = recipe.model_copy(update={"seeds": list(seeds)})
    if compare not in (None, DIRECT):
        raise FewlabelError(f"--compare '{compare}' is not accepted; use --compare {DIRECT}.")
    last = len(recipe.stages) - 1
    if (
        compare == DIRECT
        and (task := stage_config(recipe, last, Path(out), 0, overrides=overrides).task) != "classification"
    ):
        raise FewlabelError(
            f"--compare {DIRECT}: the paired comparison is of accuracy, for classification recipes; this recipe's "
            f"target stage has task '{task}' (its report compares each stage's own scores)."
        )
    out = Path(out)
    continues = not overwrite and is_recipe_folder(out)
    inputs = input_paths([recipe.model_dump(mode="json")])
    with output_folder(
        out, RECIPE_OUTPUT.name, overwrite=overwrite, resume=continues, inputs=inputs, swap="aside",
        keep_on_error=lambda folder: True,
    ) as folder:  # fmt: skip
        write_recipe(folder, recipe.model_dump(mode="json", exclude_none=True))
        return _run_seeds(recipe, folder, compare, overrides)


def _run_seeds(recipe: Recipe, out: Path, compare: str | None, overrides: dict) -> dict:
    """Every stage of every seed, then the summary and the report."""
    results: dict[int, dict[str, dict]] = {}
    for seed in recipe.seeds:
        folder = seed_dir(out, seed)
        results[seed] = {}
        for index, stage in enumerate(recipe.stages):
            with _stage_errors(stage.name, seed):
                if stage.build is not None:
                    _build_stage_data(recipe, index, folder, seed)
                cfg = stage_config(recipe, index, folder, seed, overrides=overrides)
                results[seed][stage.name] = _run_stage(cfg, folder / stage.name, stage.name)
        if compare == DIRECT:
            with _stage_errors(DIRECT, seed):
                cfg = direct_config(recipe, folder, seed, overrides)
                results[seed][DIRECT] = _run_stage(cfg, folder / DIRECT, DIRECT)
    summary = summarise(recipe, results, compare == DIRECT)
    write_summary(out, summary)
    from ..report.recipe import write_recipe_report

    write_recipe_report(out)
    return summary


@contextmanager
def _stage_errors(name: str, seed: int):
    """Prefix a user error with the stage and seed it happened in."""
    try:
        yield
    except FewlabelError as exc:
        raise FewlabelError(f"stage '{name}' (seed {seed}): {exc}") from None


def _build_stage_data(recipe: Recipe, index: int, seed_dir: Path, seed: int) -> None:
    """Build (or reuse, when its marker shows the same parameters) a stage's intermediate data."""
    from .build import build_intermediate

    stage = recipe.stages[index]
    spec = stage.build
    folder = built_data_dir(seed_dir, stage.name)
    marker = folder / INTERMEDIATE_BUILDERS[spec.method].marker
    cfg = stage_config(recipe, index, seed_dir, seed)
    wanted = spec.model_dump(mode="json") | {"model": cfg.model, "img_size": cfg.img_size}
    recorded = read_json(marker).get("recipe_build") if marker.is_file() else None
    if recorded == wanted:
        return
    if recorded is not None:
        raise FewlabelError(
            f"stage '{stage.name}': its data in '{folder}' was built with other parameters; rerun with --overwrite."
        )
    pretrained = cfg.pretrained if index == 0 else str(seed_dir / recipe.stages[index - 1].name / WEIGHTS)
    pool = spec.pool or recipe.stages[-1].data
    log.info("stage %s: building %s data in %s", stage.name, spec.method, folder)
    summary = build_intermediate(
        pool,
        folder,
        method=spec.method,
        pool_size=spec.pool_size,
        k=spec.k,
        descriptor=spec.descriptor,
        keep_fraction=spec.keep_fraction,
        generator=spec.generator,
        per_class=spec.per_class,
        options=spec.options,
        seed=seed,
        model=cfg.model,
        pretrained=pretrained,
        img_size=cfg.img_size,
        overwrite=True,
        progress=cfg.progress,
    )
    write_json(marker, summary | {"recipe_build": wanted})


def _run_stage(cfg: TrainConfig, run_dir: Path, name: str) -> dict:
    """Train one stage unless ``stage.json`` shows it finished with this config; an interrupted
    stage resumes from its checkpoint, one that never reached a checkpoint starts afresh."""
    from ..runner import config_changes, run_training

    done = read_stage(run_dir)
    if done is not None:
        changes = config_changes(done["config"], cfg)
        if changes:
            raise FewlabelError(f"stage '{name}' finished with another config ({changes}); rerun with --overwrite.")
        log.info("stage %s: finished earlier, skipped", name)
        return done["metrics"]
    resume = has_checkpoint(run_dir)
    log.info("stage %s: %s", name, "resuming" if resume else "training")
    restart = not resume and run_dir.is_dir() and any(run_dir.iterdir())  # interrupted before its first checkpoint
    result = run_training(cfg, run_dir, resume=resume, overwrite=restart)
    metrics = {k: result.metrics.get(k) for k in compared_keys(cfg.task)}
    metrics |= {k: result.metrics.get(k) for k in ("eval_data", "n_samples", "class_names")} | {"task": cfg.task}
    metrics["robustness"] = read_record(run_dir, ROBUSTNESS)
    quant = read_record(run_dir, QUANT)
    metrics["precision"] = f"{quant['precision']} {quant['qat_schedule']}" if quant else "float"
    write_stage(run_dir, cfg.to_yaml_dict(), metrics)
    return metrics


def compared_keys(task: str) -> tuple[str, ...]:
    """The scores a recipe compares its stages by: accuracy, balanced accuracy and macro-F1 for
    classification, the task's own metrics otherwise."""
    from ..tasks import get_task

    return COMPARED if task == "classification" else get_task(task).metric_keys


def summarise(recipe: Recipe, results: dict[int, dict[str, dict]], compared: bool) -> dict:
    """Per-stage figures over seeds and, with a direct run, the paired comparison."""
    seeds = sorted(results)
    stages = []
    for stage in recipe.stages:
        per_seed = {str(s): results[s][stage.name] for s in seeds}
        first = per_seed[str(seeds[0])]
        task = first.get("task", "classification")  # a stage finished before stages recorded their task
        keys = compared_keys(task)
        stages.append(
            {
                "name": stage.name,
                "data": stage.data or f"built: {stage.build.method}",
                "eval_data": first["eval_data"],
                "classes": len(first["class_names"] or []) or "–",
                "precision": first.get("precision", "float"),
                "task": task,
                "per_seed": {s: {k: m[k] for k in keys} for s, m in per_seed.items()},
                "metrics": {k: mean_sd_ci([m[k] for m in per_seed.values()]) for k in keys},
                "robustness": robustness_over_seeds([m.get("robustness") for m in per_seed.values()]),
            }
        )
    target_task = stages[-1]["task"]
    summary = {"recipe": recipe.name, "seeds": seeds, "target": recipe.stages[-1].name, "stages": stages,
               "metric_keys": list(compared_keys(target_task)), "percent": target_task == "classification"}  # fmt: skip
    if compared:
        target = recipe.stages[-1].name
        summary["comparison"] = paired_comparison(
            {s: results[s][target] for s in seeds}, {s: results[s][DIRECT] for s in seeds}
        )
    return summary


def robustness_over_seeds(records: list[dict | None]) -> dict | None:
    """Mean over seeds of each robustness figure (clean, each noise level, each FGSM step)."""
    if not records or any(r is None for r in records):
        return None
    levels = {"clean": [r["clean"] for r in records]}
    for kind, label in (("gaussian", "noise σ"), ("fgsm", "FGSM ε")):
        for level in records[0][kind]:
            levels[f"{label} {level}"] = [r[kind][level] for r in records]
    return {name: sum(values) / len(values) for name, values in levels.items()}


def paired_comparison(stepwise: dict[int, dict], direct: dict[int, dict]) -> dict:
    """Stepwise minus direct, seed by seed (the same seed draws the same labelled images), with
    a Student-t interval of the mean difference; *within noise* when it contains zero (or
    with one seed, where no interval exists)."""
    seeds = sorted(stepwise)
    metrics = {}
    for key in COMPARED:
        differences = [stepwise[s][key] - direct[s][key] for s in seeds]
        diff = mean_sd_ci(differences)
        low, high = diff["ci95"]
        metrics[key] = {
            "stepwise": mean_sd_ci([stepwise[s][key] for s in seeds]),
            "direct": mean_sd_ci([direct[s][key] for s in seeds]),
            "difference": diff,
            "within_noise": len(seeds) < 2 or low <= 0 <= high,
        }
    per_seed = {
        str(s): {"stepwise": {k: stepwise[s][k] for k in COMPARED}, "direct": {k: direct[s][k] for k in COMPARED}}
        for s in seeds
    }
    return {"per_seed": per_seed, "metrics": metrics, "statement": comparison_statement(metrics["accuracy"], seeds)}


def comparison_statement(accuracy: dict, seeds: list[int]) -> str:
    """One plain sentence on the accuracy difference and whether it exceeds the noise."""
    diff = accuracy["difference"]
    head = f"Stepwise minus direct accuracy: {100 * diff['mean']:+.1f} points over {len(seeds)} seed(s)"
    if len(seeds) < 2:
        return head + "; one seed gives no interval, so this cannot be told from noise (run --seeds 0,1,2)."
    low, high = (100 * v for v in diff["ci95"])
    span = f" (95% paired interval {low:+.1f} to {high:+.1f})"
    if accuracy["within_noise"]:
        return head + span + ": within noise, the runs do not show a difference."
    better = "stepwise" if diff["mean"] > 0 else "direct"
    return head + span + f": {better} is better beyond the seed-to-seed noise."

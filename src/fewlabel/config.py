"""Validated training configuration: YAML in, one-line errors naming the bad key out.

A config holds the options every method shares (data, model, optimisation, hardware, output)
and one ``method`` section: the options of the chosen method, ``name`` its discriminator
(``method: trinet`` is short for ``method: {name: trinet}``; default ``finetune``). A method's
option may also be written at the top level (``strategy: full``, ``--rounds 8``): it is moved
into the section, and refused when the chosen method does not take it.

Precedence: command-line flags, then the ``--config`` file, then these defaults. The resolved
config is written to ``runs/<name>/config.yaml`` and re-runs the same training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import FewlabelError, did_you_mean
from .fileio import read_yaml
from .methods import DEFAULT_METHOD, get_method, list_methods, option_owners
from .options import MethodOptions
from .tasks import DEFAULT_TASK, check_task, task_options_model

LOSS_TERMS = ("lgg-target", "kd", "rkd", "lgg")  # what --loss may add to cross-entropy
REG_WEIGHT = 1e-3
PER_STAGE_KEYS = ("data", "pretrained", "eval_data", "seed", "seeds")  # a recipe's flags cannot set these for all
CONFIG_KEYS_FREE_ON_RESUME = {"progress", "workers", "accelerator", "devices", "logger"}  # change no result
RETIRED_KEYS = {
    "semi": "the semi-supervised options moved into the method section, e.g. method: {name: trinet, rounds: 4}",
    "audit_pseudo_labels": "renamed: method option audit",
}


class TrainConfig(BaseModel):
    """Everything that decides a training run (not where it is written)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(description="DATA spec: folder, CSV or built-in name, optional :split")
    eval_data: str | None = Field(
        None, description="data for the final metrics; default DATA's test split, else validation"
    )
    task: str = Field(DEFAULT_TASK, description="what the model predicts (registered tasks)")
    task_options: dict[str, Any] = Field(
        default_factory=dict, description="the task's own options (nuclei: proximity radius, crops, matching, ...)"
    )
    method: SerializeAsAny[MethodOptions] = Field(
        default_factory=lambda: get_method(DEFAULT_METHOD).options(),
        description="how the network is trained: the method's name and its own options",
    )
    model: str = Field("efficientnet_lite0", description="timm architecture")
    pretrained: str = Field("imagenet", description="none | imagenet | hub | path.safetensors")
    head: Literal["auto", "keep", "new"] = Field(
        "auto",
        description="with weights from a fewlabel run: keep its head when the class set is the same (auto), "
        "always (keep; refused if the classes changed) or never (new)",
    )
    epochs: int = Field(10, ge=0, description="epochs of the main phase (of the head for linear-probe)")
    head_epochs: int = Field(30, ge=0, description="epochs of the head on cached features before the whole network")
    img_size: int = Field(224, ge=8, description="image side in pixels")
    labels_per_class: int | None = Field(None, ge=1, description="stratified labelled subset of K per class")
    val_split: float | None = Field(None, ge=0.0, lt=1.0, description="hold out this fraction for validation")
    seed: int = Field(0, description="seed of the labelled draw, the splits and the training")
    seeds: list[int] | None = Field(None, description="repeat over seeds, e.g. 0,1,2")
    batch_size: int = Field(32, ge=1, description="images per step (per process)")
    # 3e-4: on Fashion-MNIST with 10 labels per class (EfficientNet-Lite0, 64 px, seed 0, scored
    # on 1,000 training-set images outside the labelled draw) freeze-unfreeze reached 68.1% at
    # 1e-4, 70.9% at 3e-4 and 47.7% at 1e-3, where whole-network AdamW steps wreck the features.
    lr: float = Field(3e-4, gt=0, description="peak learning rate of the top layers (AdamW)")
    head_lr: float = Field(1e-2, gt=0, description="learning rate of the head on cached features")
    weight_decay: float = Field(1e-2, ge=0, description="weight decay (not on biases and norms)")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="optimiser")
    schedule: Literal["cosine", "onecycle", "constant"] = Field("cosine", description="learning-rate schedule per fit")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up at the start of each fit")
    layer_decay: float = Field(0.7, gt=0, le=1, description="learning-rate factor per layer group, top to bottom")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the classifier")
    augment: Literal["auto", "none", "crop", "light", "standard", "randaugment"] = Field(
        "auto",
        description="training augmentation; auto: crop, with a horizontal or vertical flip only where a mirror test "
        "on the labelled images shows the flip keeps classes",
    )
    vflip: bool = Field(False, description="also flip training images vertically (augment auto decides it)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the training targets")
    imbalance: Literal["none", "class-weights", "balanced-sampler"] = Field(
        "none", description="class imbalance: weight the loss or sample classes evenly"
    )
    freeze_bn: Literal["auto", "yes", "no"] = Field(
        "auto", description="keep BatchNorm statistics fixed; auto = yes for pretrained weights"
    )
    early_stopping: int | None = Field(None, ge=1, description="patience in epochs on validation loss (per fit)")
    keep_best: bool = Field(
        True,
        description="end with the weights of the epoch that scored best on validation over all fits of the run",
    )
    track_infoplane: bool = Field(
        False,
        description="after every validation epoch, place the output on the information plane (infoplane.json; "
        "fewlabel audit infoplane compares runs)",
    )
    infoplane_bins: int = Field(10, ge=2, le=1000, description="bins per class probability of --track-infoplane")
    infoplane_code: Literal["top", "simplex"] = Field(
        "top",
        description="--track-infoplane's discrete code of an output: top (the predicted class and its probability's "
        "bin: at most classes x bins codes) | simplex (every class probability's bin, the paper's; needs many "
        "validation images)",
    )
    infoplane_knn: Literal["every", "last", "never"] = Field(
        "last", description="when --track-infoplane adds the k-NN estimate: every epoch, each fit's last, never"
    )
    loss: str = Field(
        "ce",
        description="training loss: ce (cross-entropy on the labelled images), plus terms joined by '+': lgg-target "
        "(output graph towards the label graph); with method distill also kd, rkd, lgg (e.g. lgg+kd)",
    )
    target_weight: float = Field(1.0, ge=0, description="weight of the lgg-target term")
    regularize: Literal["none", "lgg-smooth"] = Field(
        "none", description="lgg-smooth: label smoothness of each layer's latent graph kept close to the next's"
    )
    reg_weight: float = Field(REG_WEIGHT, ge=0, description="weight of the --regularize term")
    graph_k: int | None = Field(
        None, ge=1, description="LGG distillation's graphs keep each image's k strongest edges (default all)"
    )
    smooth_k: int | None = Field(
        None, ge=1, description="the lgg-smooth regulariser's graphs keep each image's k strongest edges (default all)"
    )
    smooth_power: int = Field(1, ge=1, le=4, description="power of the Laplacian in the lgg-smooth regulariser")
    smooth_layers: str = Field(
        "stages",
        min_length=1,
        description="layers the lgg-smooth regulariser reads: stages (the trunk's stage outputs), blocks (every "
        "block's output, as the authors' code reads every activation) or module names separated by commas",
    )
    robustness_images: int = Field(
        500, ge=0, description="evaluation images scored under Gaussian noise and FGSM after training (0: none)"
    )
    refit: bool | None = Field(
        None,
        description="after choosing on validation held out of the labelled images, retrain the chosen plan on all of "
        "them (default: on below 50 labelled images per class)",
    )
    accelerator: str = Field("auto", description="auto | cpu | gpu")
    devices: str = Field("1", description="devices (processes) per machine")
    num_nodes: int = Field(1, ge=1, description="machines; launch with torchrun or srun")
    distributed: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, ...")
    precision: str = Field("auto", description="auto = 16-mixed on CUDA, else 32-true")
    workers: int | None = Field(
        None, ge=0, description="data-loading worker processes (default: none on CPU, one per 4 cores feeding a GPU)"
    )
    logger: Literal["csv", "tensorboard", "mlflow"] = Field("csv", description="where per-step logs go")
    mlflow_uri: str | None = Field(None, description="MLflow store; default sqlite:///<runs folder>/mlflow.db")
    strict: bool = Field(False, description="refuse unreadable images instead of skipping them")
    feature_cache: Literal["memory", "disk", "off"] = Field("disk", description="where cached features live")
    progress: bool = Field(True, description="progress bars")

    @model_validator(mode="before")
    @classmethod
    def _gather_method_options(cls, values: Any) -> Any:
        """Move a method option written at the top level into the method section."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        section = method_section(values.get("method"))
        name = section.get("name")
        if isinstance(name, str) and name in list_methods():
            accepted = get_method(name).options.model_fields
            for key in [k for k in values if k not in cls.model_fields and k in accepted and k != "name"]:
                section[key] = values.pop(key)
            if "protocol" in accepted and section.get("protocol", "auto") == "auto":
                section["protocol"] = _auto_protocol(values.get("accelerator", "auto"))
        values["method"] = section
        return values

    @field_validator("method", mode="before")
    @classmethod
    def _method_options(cls, value: Any) -> MethodOptions:
        if isinstance(value, MethodOptions):
            return value
        section = method_section(value)
        name = section.get("name")
        if name not in list_methods():
            accepted = list_methods()
            raise ValueError(
                f"unknown method {name!r}; registered: {', '.join(accepted)}.{did_you_mean(str(name), accepted)}"
            )
        return get_method(name).options.model_validate(section)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        try:
            return check_task(value)
        except FewlabelError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _task_options_fit(self) -> TrainConfig:
        """The task's options validated by its own model and stored complete (defaults filled in)."""
        model = task_options_model(self.task)
        if model is None:
            if self.task_options:
                raise ValueError(f"task_options: task '{self.task}' takes none; remove {sorted(self.task_options)}")
            return self
        try:
            options = model(**self.task_options)
        except ValidationError as exc:
            message = format_validation_error(exc, "task_options", accepted=lambda loc: list(model.model_fields))
            raise ValueError(message.replace("\n", "; ")) from None
        object.__setattr__(self, "task_options", options.model_dump())
        return self

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        terms = loss_terms(value)
        unknown = [t for t in terms if t not in LOSS_TERMS]
        if unknown:
            hint = did_you_mean(unknown[0], LOSS_TERMS)
            raise ValueError(
                f"unknown loss term {unknown[0]!r}; accepted: ce, or '+'-joined terms of {', '.join(LOSS_TERMS)}.{hint}"
            )
        return "+".join(terms) or "ce"

    @field_validator("mlflow_uri")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("sqlite:///", "file:", "http://", "https://", "/")):
            return value
        raise ValueError("not accepted: use sqlite:///path/to/mlflow.db, a file: URI or a server URL")

    @model_validator(mode="after")
    def _method_fits(self) -> TrainConfig:
        method = get_method(self.method.name)
        if not method.supports(self.task):
            raise ValueError(
                f"method '{method.name}' does not train task '{self.task}' (it supports: {', '.join(method.tasks)})"
            )
        if method.trains_from_run and not str(self.pretrained).endswith(".safetensors"):
            raise ValueError(
                f"pretrained: method '{method.name}' starts from a trained fewlabel run: give its model.safetensors "
                f"(got '{self.pretrained}'; fewlabel quantize RUN DATA does it for you)"
            )
        if self.refit and method.refit is None:
            raise ValueError(
                f"refit: method '{method.name}' cannot retrain its choice on all labelled images; remove it"
            )
        teacher_terms = [t for t in loss_terms(self.loss) if t not in method.loss_terms]
        if teacher_terms:
            raise ValueError(
                f"loss: term '{teacher_terms[0]}' needs a teacher; use method distill (fewlabel distill --teacher RUN)"
            )
        uses_graphs = self.regularize != "none" or "lgg-target" in loss_terms(self.loss)
        if uses_graphs and self.batch_size < 2:
            raise ValueError(
                "batch_size: --regularize and --loss lgg-target build a graph of each batch's images; "
                "they need at least 2 per batch"
            )
        for key, why in method.ignores.items():
            if getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"{key}: method '{method.name}' does not use it ({why}); remove it")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    def to_yaml_dict(self) -> dict:
        """The resolved config as written to config.yaml (options the method ignores left out)."""
        return self.model_dump(mode="json", exclude=set(get_method(self.method.name).ignores))


def loss_terms(loss: str) -> list[str]:
    """The terms ``--loss`` adds to cross-entropy (``ce`` alone: none), in the order given."""
    terms = [t.strip() for t in loss.split("+") if t.strip()]
    return [t for t in dict.fromkeys(terms) if t != "ce"]


def _auto_protocol(accelerator: Any) -> str:
    """``protocol: auto``: the paper's schedule when training on a GPU, the CPU budget otherwise."""
    if accelerator == "cpu":
        return "cpu"
    if accelerator in ("gpu", "cuda"):
        return "paper"
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def method_section(value: Any) -> dict:
    """The method section as a dict with a name: from a name, a dict, an options object or None."""
    if value is None:
        return {"name": DEFAULT_METHOD}
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, MethodOptions):
        return value.model_dump()
    if isinstance(value, dict):
        return {"name": DEFAULT_METHOD} | value
    return {"name": value}


def _raw_section(value: Any) -> dict:
    """A method section as written: a name becomes ``{"name": ...}``; nothing is added."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, MethodOptions):
        return value.model_dump()
    return dict(value) if isinstance(value, dict) else {}


def common_keys() -> list[str]:
    return list(TrainConfig.model_fields)


def accepted_keys(values: dict | None = None) -> list[str]:
    """Keys a config (or recipe defaults) may hold: the common ones, and every method's options."""
    return [*common_keys(), *option_owners()]


def _method_of(values: Any) -> str:
    section = method_section(values.get("method") if isinstance(values, dict) else None)
    return str(section.get("name"))


def format_validation_error(
    exc: ValidationError,
    origin: str,
    accepted: Callable[[tuple], Iterable[str]] | None = None,
    values: dict | None = None,
) -> str:
    """One line per problem: ``origin: key.path: message (got value)``. An unknown key's line
    says what is accepted there (``accepted(loc)``, by default the config's own rules)."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        key = ".".join(str(p) for p in loc)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = (
                f"unknown key; accepted keys: {', '.join(accepted(loc))}"
                if accepted
                else _unknown_key_message(loc, values or {})
            )
        shows_input = err["type"] not in ("missing", "extra_forbidden") and "input" in err and loc != ("method",)
        got = f" (got {err['input']!r})" if shows_input else ""
        lines.append(f"{origin}: {key}: {message}{got}" if key else f"{origin}: {message}")
    return "\n".join(lines)


def _unknown_key_message(loc: tuple, values: dict) -> str:
    """Why a key is not accepted where it stands, and where it would be."""
    name = _method_of(values)
    key = str(loc[-1])
    owners = option_owners()
    in_section = loc[0] == "method"
    if in_section and key in TrainConfig.model_fields:
        return f"'{key}' is an option every method shares: set it at the top level, not in the method section"
    if key in RETIRED_KEYS:
        return RETIRED_KEYS[key]
    if key in owners:
        return (
            f"method '{name}' does not use it; it is an option of {', '.join(owners[key])} "
            f"(choose one with method: NAME)"
        )
    if in_section and name in list_methods():
        own = [k for k in get_method(name).options.model_fields if k != "name"]
        return f"unknown option of method '{name}'; its options: {', '.join(own) or 'none'}.{did_you_mean(key, own)}"
    hint = did_you_mean(key, accepted_keys())
    return f"unknown key; accepted keys: {', '.join(common_keys())}, and the method's options.{hint}"


def make_config(values: dict, origin: str = "config") -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise FewlabelError(format_validation_error(exc, origin, values=values)) from None


def read_config_file(path: str | Path) -> dict:
    """Read a YAML mapping, with clear errors for a missing file or bad YAML; a run's own
    ``resolved`` record (see config.yaml of a run) is left out."""

    path = Path(path)
    if not path.is_file():
        raise FewlabelError(f"Config file '{path}' not found.")
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise FewlabelError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}.")
    odd = [key for key in values if not isinstance(key, str)]
    if odd:
        raise FewlabelError(f"{path}: key {odd[0]!r} is not an option name; keys are names such as lr or epochs.")
    values.pop("resolved", None)  # what a run decided for itself (augment auto); a rerun decides again
    return values


def merge_options(base: dict, overrides: dict) -> dict:
    """``overrides`` (None values skipped) over ``base``; a section such as ``method`` is merged
    key by key, so ``--rounds 8`` keeps the config file's other method settings. A method
    named by another name replaces the section."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "method" and "method" in merged:
            value, before = _raw_section(value), _raw_section(merged["method"])
            if "name" in value and value["name"] != before.get("name"):
                before = {}
            value = before | value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merged[key] | value
        merged[key] = value
    return merged


def for_method(values: dict, method_name: str) -> dict:
    """``values`` (shared defaults, e.g. a recipe's) without the method options and ignored
    common options that ``method_name`` does not take."""
    method = get_method(method_name)
    owners = option_owners()
    own = method.options.model_fields
    return {
        k: v
        for k, v in values.items()
        if k not in method.ignores and (k not in owners or k in own or k in TrainConfig.model_fields)
    }

"""Command-line options generated from the config models, so every command that trains accepts
the same options with the same help, declared once (in :mod:`fewlabel.config` and the methods'
option sections).

Each field becomes ``--field-name``: a ``Literal`` a choice list, a bool a ``--x/--no-x``
switch, ``seeds`` a comma-separated list, ``method`` the registered method names. A method
option (``--rounds``, ``--strategy``) is offered once whatever the methods that take it; given
to a method that does not, it is refused by the config with one line naming both.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from ..config import TrainConfig
from ..errors import FewlabelError
from ..methods import get_method, list_methods, option_owners

DATA_PANEL, TRAINING_PANEL, MACHINE_PANEL = "Data", "Training", "Hardware and output"
METHOD_PANEL, TASK_PANEL = "Method options", "Task options"
_PANELS = {
    DATA_PANEL: ("eval_data", "task", "labels_per_class", "val_split", "img_size", "strict"),
    MACHINE_PANEL: (
        "accelerator", "devices", "num_nodes", "distributed", "precision", "workers", "logger", "mlflow_uri",
        "feature_cache", "progress",
    ),
}  # fmt: skip
_ENUMS: dict[str, type[Enum]] = {}


def _panel(name: str) -> str:
    return next((panel for panel, names in _PANELS.items() if name in names), TRAINING_PANEL)


def _choices(name: str, values: list[str]) -> type[Enum]:
    """A str Enum of the accepted values: --help lists them, a typo fails before any work."""
    key = f"{name}:{','.join(values)}"
    if key not in _ENUMS:
        _ENUMS[key] = Enum(name.title().replace("_", ""), {v: v for v in values}, type=str)
    return _ENUMS[key]


def _cli_type(name: str, annotation: Any) -> type:
    """The type Typer parses a field as."""
    if name == "method":
        return _choices("method", list_methods())
    if name == "seeds":
        return str
    args = (
        [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (Union, type(int | None))
        else []
    )
    base = args[0] if len(args) == 1 else annotation
    if get_origin(base) is Literal:
        return _choices(name, [str(v) for v in get_args(base)])
    return base if base in (int, float, bool, str) else str


def _help(info: FieldInfo, owners: list[str] | None = None) -> str:
    text = info.description or ""
    if owners is None and info.default is not None and not callable(info.default_factory):
        text += f" (default: {info.default})"
    elif owners is not None:
        text += f" (method: {', '.join(owners)})"
    return text.strip()


def _parameter(name: str, info: FieldInfo, owners: list[str] | None, panel: str | None = None) -> inspect.Parameter:
    kind = _cli_type(name, info.annotation)
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    panel = panel or (METHOD_PANEL if owners is not None else _panel(name))
    option = typer.Option(*decls, help=_help(info, owners), rich_help_panel=panel, show_default=False)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def training_parameters(skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One option per common config field and per method option, except ``skip``."""
    params = [
        _parameter(name, info, None) for name, info in TrainConfig.model_fields.items() if name not in ("data", *skip)
    ]
    for name, owners in option_owners().items():
        if name not in skip:
            info = get_method(owners[0]).options.model_fields[name]
            params.append(_parameter(name, info, owners))
    return params


def parse_seeds(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise FewlabelError(f"--seeds must be comma-separated integers such as 0,1,2; got '{value}'.") from None


def task_parameters(model: type, taken: set[str]) -> list[inspect.Parameter]:
    """One option per field of a task's options model (a name a training option has is refused)."""
    clash = sorted(taken & set(model.model_fields))
    if clash:
        raise ValueError(f"task options {clash} have the names of training options")
    return [_parameter(name, info, None, TASK_PANEL) for name, info in model.model_fields.items()]


def with_training_options(skip: tuple[str, ...] = (), task_options: type | None = None) -> Callable:
    """Give a command every training option (and, with ``task_options``, a pydantic model, the
    task's): the decorated function is called with its own arguments plus ``options``, a dict
    of the options given (enum values as strings, seeds parsed, the task's under
    ``task_options``)."""

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "options"]
        generated = training_parameters(skip)
        names = {p.name for p in generated}
        task_params = task_parameters(task_options, names | {p.name for p in own}) if task_options else []
        task_names = {p.name for p in task_params}
        generated += task_params

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in names | task_names}
            given = {k: (v.value if isinstance(v, Enum) else v) for k, v in given.items() if v is not None}
            options = {k: v for k, v in given.items() if k not in task_names}
            if task_names & set(given):
                options["task_options"] = {k: v for k, v in given.items() if k in task_names}
            if "seeds" in options:
                options["seeds"] = parse_seeds(options["seeds"])
            return func(options=options, **kwargs)

        params = [*own, *generated]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the generated signature, not the function's
        return command

    return decorate

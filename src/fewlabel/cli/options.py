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

DATA_PANEL, TRAINING_PANEL, MACHINE_PANEL, METHOD_PANEL = "Data", "Training", "Hardware and output", "Method options"
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


def _parameter(name: str, info: FieldInfo, owners: list[str] | None) -> inspect.Parameter:
    kind = _cli_type(name, info.annotation)
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    panel = METHOD_PANEL if owners is not None else _panel(name)
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


def with_training_options(skip: tuple[str, ...] = ()) -> Callable:
    """Give a command every training option: the decorated function is called with its own
    arguments plus ``options``, a dict of the options given (enum values as strings, seeds
    parsed)."""

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "options"]
        generated = training_parameters(skip)
        names = {p.name for p in generated}

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            options = {k: kwargs.pop(k) for k in names}
            options = {k: (v.value if isinstance(v, Enum) else v) for k, v in options.items() if v is not None}
            if "seeds" in options:
                options["seeds"] = parse_seeds(options["seeds"])
            return func(options=options, **kwargs)

        params = [*own, *generated]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the generated signature, not the function's
        return command

    return decorate

"""The task registry: what a run predicts (a class per image; nucleus centres from a map per pixel;
depth per pixel).

A task is one implementation of :class:`fewlabel.tasks.base.Task`; classification is the
built-in one. Registered by name with a ``"module:Class"`` reference (imported on first use,
so the command line can validate a task name without importing torch) or with the class
itself (a task defined in user code or a test).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import unknown_choice

if TYPE_CHECKING:  # pragma: no cover
    from .base import Task

DEFAULT_TASK = "classification"
_TASKS: dict[str, Any] = {
    "classification": "fewlabel.tasks.classification:ClassificationTask",
    "nuclei": "fewlabel.nuclei.task:NucleiTask",
    "depth": "fewlabel.depth.task:DepthTask",
}
_OPTIONS: dict[str, Any] = {
    "nuclei": "fewlabel.nuclei.options:NucleiOptions",
    "depth": "fewlabel.depth.options:DepthOptions",
}  # a task's own config section
_INSTANCES: dict[str, Task] = {}


def register_task(name: str, task: str | type, options: str | type | None = None) -> None:
    """Register a task class (or its ``"module:Class"`` reference) under ``name``, with the
    pydantic model of its ``task_options`` section when it has one."""
    _TASKS[name] = task
    _INSTANCES.pop(name, None)
    if options is not None:
        _OPTIONS[name] = options


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)
    _INSTANCES.pop(name, None)
    _OPTIONS.pop(name, None)


def _resolve(reference: Any) -> Any:
    if isinstance(reference, str):
        module_name, _, attribute = reference.partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    return reference


def task_options_model(name: str) -> type | None:
    """The pydantic model of task ``name``'s options (None: it takes none)."""
    return _resolve(_OPTIONS[name]) if name in _OPTIONS else None


def list_tasks() -> list[str]:
    return list(_TASKS)


def check_task(name: str) -> str:
    if name not in _TASKS:
        raise unknown_choice("task", name, _TASKS)
    return name


def get_task(name: str) -> Task:
    """The task registered as ``name`` (one shared instance)."""
    check_task(name)
    if name not in _INSTANCES:
        _INSTANCES[name] = _resolve(_TASKS[name])()
    return _INSTANCES[name]


def config_task_options(cfg: Any) -> Any:
    """The ``task_options`` section of a config, as its task's registered options model reads it."""
    return task_options_model(cfg.task)(**cfg.task_options)


def card_task_options(card: Any) -> Any:
    """A task's options as a trained model's card stored them (its extras; other extras ignored),
    read by the card's task's registered options model."""
    options_model = task_options_model(card.task)
    known = options_model.model_fields
    return options_model(**{k: v for k, v in card.extras.items() if k in known})

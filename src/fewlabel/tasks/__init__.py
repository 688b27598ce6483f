"""The task registry: what a run predicts (a class per image; later, values per pixel).

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
_TASKS: dict[str, Any] = {"classification": "fewlabel.tasks.classification:ClassificationTask"}
_INSTANCES: dict[str, Task] = {}


def register_task(name: str, task: str | type) -> None:
    """Register a task class (or its ``"module:Class"`` reference) under ``name``."""
    _TASKS[name] = task
    _INSTANCES.pop(name, None)


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)
    _INSTANCES.pop(name, None)


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
        task = _TASKS[name]
        if isinstance(task, str):
            module_name, _, attribute = task.partition(":")
            task = getattr(importlib.import_module(module_name), attribute)
        _INSTANCES[name] = task()
    return _INSTANCES[name]

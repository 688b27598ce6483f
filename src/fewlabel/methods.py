"""The method registry: one registration per training method.

A method is what trains the network of a run: fine-tuning by strategy (``finetune``) or a
semi-supervised method. Its registration holds, in one place:

* ``options``: its config section, a pydantic model (the ``method`` section of a config,
  ``name`` the discriminator; unknown keys refused);
* ``train``: the function that trains a run's network through the engine, ``(RunContext) ->
  (model, BackboneInfo)``;
* ``build_model``: the function that rebuilds its network from model.json (default: the task's
  own builder) and ``card_fields``, the options model.json records for it;
* ``report_section``: a function ``(run_dir) -> html or None`` adding its part to report.html;
* ``finish``: a function ``(RunContext, model, ModelCard) -> None`` run after evaluation on
  the process that writes (qat: its ONNX export and deployment figures);
* ``refit``: a function ``(RunContext) -> (model, BackboneInfo)`` that retrains what ``train``
  chose on all labelled images (``--refit``; None: the method cannot);
* metadata: the tasks it supports, whether it needs unlabeled images, the common options it
  does not use (``ignores``: option -> why; refused when set), the ``--loss`` terms it can add
  to cross-entropy (``loss_terms``), and whether it learns from a teacher run (``takes_teacher``:
  a recipe stage's teacher defaults to the previous stage, whose weights it does not start from),
  and whether it starts from a trained run's weights (``trains_from_run``: ``pretrained`` must
  name a model.safetensors; in a recipe, the previous stage's).

``fewlabel train``, ``fewlabel semi``, recipe stages, model.json and model loading all dispatch
through :func:`get_method`. The heavy parts are named as ``"module:function"`` and imported on
first use, so the command line builds its options from here without importing torch. Adding a
method touches its own package and one registration line at the end of this file.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .distill.options import DistillOptions
from .errors import FewlabelError, unknown_choice
from .options import MethodOptions
from .quant.options import QatOptions
from .semi.options import FixMatchOptions, PseudoLabelOptions, SupervisedOptions, TriNetOptions
from .train.strategies import FinetuneOptions

DEFAULT_METHOD = "finetune"


@dataclass(frozen=True)
class Method:
    """One registered method (see the module docstring for each field)."""

    name: str
    options: type[MethodOptions]
    train: str
    summary: str
    build_model: str | None = None
    card_fields: tuple[str, ...] = ()
    report_section: str | None = None
    refit: str | None = None
    finish: str | None = None
    tasks: tuple[str, ...] = ("classification",)
    needs_unlabeled: bool = False
    ignores: dict[str, str] = field(default_factory=dict)
    loss_terms: tuple[str, ...] = ("lgg-target",)
    takes_teacher: bool = False
    trains_from_run: bool = False

    def supports(self, task: str) -> bool:
        return "*" in self.tasks or task in self.tasks

    def trainer(self) -> Callable[..., Any]:
        return load_object(self.train)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a name registered twice is an error)."""
    if method.name in _METHODS:
        raise ValueError(f"method '{method.name}' is already registered")
    if method.options.model_fields["name"].default != method.name:
        raise ValueError(f"method '{method.name}': its options class must default name to '{method.name}'")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method (tests register throw-away ones)."""
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name lists the registered ones."""
    if name not in _METHODS:
        raise unknown_choice("method", name, _METHODS)
    return _METHODS[name]


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a glob, in registration order."""
    return [name for name in _METHODS if fnmatch.fnmatch(name, pattern)]


def option_owners() -> dict[str, list[str]]:
    """Every method option (other than ``name``) and the methods that take it."""
    owners: dict[str, list[str]] = {}
    for method in _METHODS.values():
        for key in method.options.model_fields:
            if key != "name":
                owners.setdefault(key, []).append(method.name)
    return owners


def load_object(reference: str) -> Any:
    """Import ``"package.module:attribute"``."""
    module_name, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise FewlabelError(f"Cannot load '{reference}' ({exc}).") from None


def build_network(card: Any) -> Any:
    """The untrained network a model card describes: the method's own builder when it has one
    (tri-net), else the task's."""
    from .tasks import get_task

    try:
        method = get_method(card.method)
        task = get_task(card.task)
    except FewlabelError as exc:
        raise FewlabelError(f"model.json of this model: {exc} Upgrade fewlabel or register it.") from None
    if method.build_model:
        return load_object(method.build_model)(card)
    return task.rebuild_model(card)


def load_network(folder: Any) -> tuple[Any, Any]:
    """Load (network, ModelCard) from a folder holding model.safetensors and model.json."""
    from .models.files import load_model_files

    return load_model_files(folder, build_network)


register_method(
    Method(
        "finetune",
        FinetuneOptions,
        train="fewlabel.train.finetune:train",
        refit="fewlabel.train.finetune:refit",
        summary="supervised fine-tuning by strategy (linear-probe, freeze-unfreeze, full, layer-decay, partial:N)",
        tasks=("*",),
    )
)
register_method(
    Method(
        "supervised",
        SupervisedOptions,
        train="fewlabel.semi.loop:train_supervised",
        summary="baseline: the labelled images alone, on the semi-supervised methods' budget",
        report_section="fewlabel.semi.report:section",
    )
)
register_method(
    Method(
        "pseudo-label",
        PseudoLabelOptions,
        train="fewlabel.semi.loop:train_pseudo_label",
        summary="baseline: self-training on confident predictions (Lee 2013)",
        report_section="fewlabel.semi.report:section",
        needs_unlabeled=True,
    )
)
register_method(
    Method(
        "fixmatch",
        FixMatchOptions,
        train="fewlabel.semi.loop:train_fixmatch",
        summary="baseline: weak/strong augmentation consistency (Sohn et al. 2020)",
        report_section="fewlabel.semi.report:section",
        needs_unlabeled=True,
    )
)
register_method(
    Method(
        "trinet",
        TriNetOptions,
        train="fewlabel.semi.loop:train_trinet",
        summary="tri-net (Chen et al. 2018): three modules on a shared trunk label for each other",
        build_model="fewlabel.semi.trinet:build_from_card",
        card_fields=("module_stages", "head_hidden", "head_dropout"),
        report_section="fewlabel.semi.report:section",
        needs_unlabeled=True,
        ignores={
            "dropout": "each module's dropout is method.head_dropout",
            "head": "tri-net always trains new modules on the backbone",
        },
    )
)
register_method(
    Method(
        "distill",
        DistillOptions,
        train="fewlabel.distill.method:train",
        summary="a student learns from a teacher run: latent geometry graphs (Lassance et al. 2021), KD, RKD",
        report_section="fewlabel.distill.method:report_section",
        loss_terms=("lgg-target", "kd", "rkd", "lgg"),
        takes_teacher=True,
    )
)
register_method(
    Method(
        "qat",
        QatOptions,
        train="fewlabel.quant.method:train",
        summary="quantization-aware training of a float run at 2-16 bits: direct, progressive or HLHL "
        "(Shin et al. 2020); exported to ONNX",
        build_model="fewlabel.quant.method:build_from_card",
        card_fields=("weight_bits", "act_bits", "first_last_bits", "qat_schedule"),
        report_section="fewlabel.quant.method:report_section",
        finish="fewlabel.quant.method:finish",
        loss_terms=(),
        trains_from_run=True,
    )
)

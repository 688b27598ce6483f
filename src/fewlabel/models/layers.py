"""Intermediate layers of a network: which to read (timm's feature info: the output of each
stage), how to pair a teacher's with a student's of another architecture (by relative depth),
and a tap that records their outputs during an ordinary forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewlabelError, did_you_mean


def trunk_of(network: nn.Module) -> nn.Module:
    """The timm model whose stages are read: the network itself, or the first submodule that
    has timm's feature info (tri-net's shared trunk)."""
    for module in network.modules():
        if getattr(module, "feature_info", None):
            return module
    raise FewlabelError(f"{type(network).__name__} has no stages to read (no timm feature info).")


def module_name(network: nn.Module, module: nn.Module) -> str:
    """The name of ``module`` in ``network.named_modules()`` ("" for the network itself)."""
    return next(name for name, candidate in network.named_modules() if candidate is module)


def stage_names(network: nn.Module) -> list[str]:
    """Names (in ``network.named_modules()``) of the modules that end each stage, shallow to deep."""
    trunk = trunk_of(network)
    prefix = module_name(network, trunk)
    info = trunk.feature_info
    names = info.module_name() if hasattr(info, "module_name") else [f["module"] for f in info]
    return [f"{prefix}.{n}" if prefix else n for n in names]


CONTAINERS = (nn.Sequential, nn.ModuleList)


def block_names(network: nn.Module) -> list[str]:
    """Names of the trunk's blocks, shallow to deep: every module held in a sequential container
    of the trunk (EfficientNet's ``blocks.i.j``, ResNet's ``layerN.j``) that is neither a
    container nor a bare layer (one without weighted layers inside: a conv, a norm with its
    activation); nothing inside a block is searched (a residual block's own
    ``downsample``), except a held module that holds blocks itself (ConvNeXt's stages give
    ``stages.i.blocks.j``, Swin's ``layers.i.blocks.j``: it holds a container of two or more
    modules with layers of their own)."""
    trunk = trunk_of(network)
    prefix = module_name(network, trunk)
    names: list[str] = []

    def visit(module: nn.Module, name: str) -> None:
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, CONTAINERS) or not isinstance(module, CONTAINERS) or _holds_blocks(child):
                visit(child, full)
            elif _has_layers(child):  # a block, not a bare layer (a stem's conv)
                names.append(full)

    visit(trunk, prefix)
    if not names:
        raise FewlabelError(f"{type(trunk).__name__} has no blocks in sequential containers; use its stages.")
    return names


def _has_layers(module: nn.Module) -> bool:
    """Whether a module holds layers with weights: a block, not a bare layer (a norm whose children are
    only its activation and dropout, as timm's BatchNormAct2d, is bare)."""
    return any(next(child.parameters(), None) is not None for child in module.children())


def _holds_blocks(module: nn.Module) -> bool:
    """Whether a module holds a container of two or more modules with layers of their own (a
    stage's blocks), as against a residual block's ``downsample`` of bare layers."""
    return any(
        isinstance(child, CONTAINERS) and sum(_has_layers(member) for member in child.children()) >= 2
        for child in module.children()
    )


def layers_named(network: nn.Module, which: str) -> list[str]:
    """The layers ``which`` names: ``stages`` (:func:`stage_names`), ``blocks``
    (:func:`block_names`) or module names separated by commas (checked)."""
    if which == "stages":
        return stage_names(network)
    if which == "blocks":
        return block_names(network)
    names = [n.strip() for n in which.split(",") if n.strip()]
    check_layer_names(network, names, "the network")
    return names


def check_layer_names(network: nn.Module, names: list[str], role: str) -> None:
    """Refuse layer names the network does not have; the error lists its stages."""
    known = dict(network.named_modules())
    for name in names:
        if name not in known:
            stages = stage_names(network)
            raise FewlabelError(
                f"{role} has no layer '{name}'; its stages: {', '.join(stages)} (any module name of the "
                f"network is accepted).{did_you_mean(name, list(known))}"
            )


def relative_depths(count: int) -> list[float]:
    """Depth of each of ``count`` stages as a fraction of the network: 1/n, 2/n, ..., 1."""
    return [(i + 1) / count for i in range(count)]


def pair_by_depth(teacher: list[str], student: list[str], layers: int) -> list[tuple[str, str]]:
    """(teacher layer, student layer) pairs for the student's last ``layers`` stages, each with
    the teacher stage nearest in relative depth (ties: the deeper)."""
    if layers < 1:
        raise FewlabelError(f"graph layers must be at least 1, got {layers}.")
    layers = min(layers, len(student), len(teacher))
    teacher_depths = relative_depths(len(teacher))
    pairs = []
    for depth, name in list(zip(relative_depths(len(student)), student, strict=True))[-layers:]:
        nearest = min(range(len(teacher)), key=lambda i: (abs(teacher_depths[i] - depth), -i))
        pairs.append((teacher[nearest], name))
    return pairs


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"teacher_layer:student_layer,..."`` as a list of pairs."""
    pairs = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        teacher, sep, student = item.partition(":")
        if not sep or not teacher or not student:
            raise FewlabelError(
                f"layers: '{item}' is not TEACHER_LAYER:STUDENT_LAYER (e.g. blocks.4:blocks.3,blocks.6:blocks.5)."
            )
        pairs.append((teacher.strip(), student.strip()))
    return pairs


class LayerTap:
    """Records the outputs of named modules while the network runs (forward hooks), optionally
    average-pooled to at most ``side`` x ``side`` so a flattened map stays small."""

    def __init__(self, network: nn.Module, names: list[str], side: int | None = None) -> None:
        check_layer_names(network, names, "the network")
        self.network, self.names, self.side = network, list(names), side
        self.outputs: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def record(module: nn.Module, inputs, output) -> None:
            self.outputs[name] = shrink(output, self.side)

        return record

    @contextmanager
    def recording(self) -> Iterator[LayerTap]:
        modules = dict(self.network.named_modules())
        handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.names]
        self.outputs = {}
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def taken(self, required: bool = True, names: list[str] | None = None) -> list[torch.Tensor]:
        """The recorded outputs of ``names`` (default all), in that order (not ``required``: of
        those that ran; tri-net's modules run their own copies of the last stages)."""
        names = self.names if names is None else names
        missing = [n or "the network" for n in names if n not in self.outputs]
        if missing and required:
            raise FewlabelError(f"layer(s) {', '.join(missing)} did not run in the forward pass.")
        return [self.outputs[n] for n in names if n in self.outputs]


def shrink(output: torch.Tensor, side: int | None) -> torch.Tensor:
    """A B x C x H x W map average-pooled to at most ``side`` x ``side`` (others unchanged)."""
    if side is None or output.dim() != 4 or max(output.shape[-2:]) <= side:
        return output
    return F.adaptive_avg_pool2d(output, (min(side, output.shape[-2]), min(side, output.shape[-1])))


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())

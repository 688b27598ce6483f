"""Model files: ``model.safetensors`` (weights, no code) and ``model.json`` (everything to rebuild).

Loading never unpickles: weights come through safetensors, metadata through JSON. Which network
the card describes is decided above this package (the task and method registries build it);
:func:`load_model_files` takes that builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from .._version import __version__
from ..errors import FewlabelError
from ..fileio import read_json, read_tensors, write_json, write_tensors
from ..rundir import CARD, WEIGHTS

REQUIRED = ("arch", "class_names", "img_size", "mean", "std")
# keys of model.json written before the card had a task and method extras
_LEGACY_EXTRAS = ("module_stages", "head_hidden", "head_dropout")


@dataclass
class ModelCard:
    """The contents of model.json. ``extras`` holds what the method and the task need to
    rebuild their network (tri-net: its module options), as written by them."""

    arch: str
    class_names: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    channels: int = 3
    drop_rate: float = 0.0
    pretrained: str = "none"
    task: str = "classification"
    method: str = "finetune"
    extras: dict = field(default_factory=dict)
    fewlabel_version: str = field(default_factory=lambda: __version__)

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        data = read_json(path)
        if not isinstance(data, dict):
            raise FewlabelError(f"'{path}': expected a JSON object of the model's fields, got {type(data).__name__}.")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise FewlabelError(f"{path}: missing key(s) {', '.join(missing)}.")
        _check_card_types(path, data)
        extras = dict(data.get("extras", {})) | {k: data[k] for k in _LEGACY_EXTRAS if data.get(k)}
        known = set(cls.__dataclass_fields__) - {"extras"}
        return cls(**{k: v for k, v in data.items() if k in known}, extras=extras)


def _check_card_types(path: Path, data: dict) -> None:
    """Refuse a model.json whose fields have the wrong type, in one line naming the field."""

    def numbers(v):
        return isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)

    checks = {
        "arch": (lambda v: isinstance(v, str) and v, "a timm architecture name"),
        "class_names": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of names"),
        "img_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive whole number"),
        "mean": (numbers, "a list of numbers"),
        "std": (numbers, "a list of numbers"),
        "channels": (lambda v: v in (1, 3), "1 or 3"),
        "extras": (lambda v: isinstance(v, dict), "a JSON object"),
    }
    for key, (valid, accepted) in checks.items():
        if key in data and not valid(data[key]):
            raise FewlabelError(f"'{path}': {key} {data[key]!r} is not accepted; expected {accepted}.")


def save_model_files(folder: Path, model: nn.Module, card: ModelCard) -> None:
    """Write model.safetensors then model.json, each atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_tensors(Path(folder) / WEIGHTS, state)
    write_json(Path(folder) / CARD, asdict(card))


def read_card(folder: str | Path) -> ModelCard:
    folder = Path(folder)
    for required in (folder / CARD, folder / WEIGHTS):
        if not required.is_file():
            raise FewlabelError(f"'{folder}' is not a model folder: {required.name} is missing.")
    return ModelCard.from_file(folder / CARD)


def load_model_files(folder: str | Path, build: Callable[[ModelCard], nn.Module]) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network ``folder/model.json`` describes with ``build`` and load its
    safetensors weights; any tensor that does not match is an error naming it."""
    folder = Path(folder)
    card = read_card(folder)
    try:
        from .backbones import check_arch

        check_arch(card.arch)
        model = build(card)
    except FewlabelError as exc:
        raise FewlabelError(f"{folder / CARD}: {exc}") from None
    weights = folder / WEIGHTS
    state = read_tensors(weights)
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or len(state) != len(own):
        raise FewlabelError(
            f"{weights} does not match {folder / CARD} (arch '{card.arch}', method '{card.method}', "
            f"{len(card.class_names)} classes): first differing tensor '{(bad or sorted(set(state) - set(own)))[0]}'."
        )
    model.load_state_dict(state)
    return model.eval(), card

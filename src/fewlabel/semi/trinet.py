"""Tri-net (Chen, Wang, Gao and Zhou, IJCAI 2018): the network, and how its steps are chosen.

A shared module feeds three modules. They start diverse by training on three *output-smeared*
copies of the labelled set; then, round after round, an unlabeled example on which two modules
agree with high confidence becomes a pseudo-label for the third, pseudo-labels whose prediction
is unstable under dropout are removed (editing), and every few rounds the modules are
fine-tuned on the labelled data alone to restore diversity. Prediction averages the three.

The paper trains a CNN from scratch on CIFAR-10/SVHN, its three modules being the top
convolutional layers. Here the shared module is the lower part of a pretrained timm backbone
and each module its own copy of the backbone's last ``module_stages`` stages (default 1) under
a small MLP head; ``module_stages=0`` gives MLP heads on one shared backbone, which in a first
Fashion-MNIST run proposed nearly the same pseudo-labels in all three modules (no diversity).
Choices the paper leaves open or that differ for fine-tuning, each a parameter of
``TriNetOptions`` (:mod:`fewlabel.semi.options`); the steps themselves are the pure functions
of :mod:`fewlabel.semi.functional`:

* smearing: ``onehot + relu(z)``, ``z ~ N(0, smear_std²)`` per class, renormalised to sum 1;
  ``smear_std`` 0.05 leaves about 0.85 of the mass on the true class with 10 classes. The
  smeared targets cap what a module learns to predict, so the agreement threshold must sit
  below that cap: with 0.1 (about 0.73 on the true class) and a 0.95 threshold, a
  Fashion-MNIST trial (20 labels per class) found almost no agreeing pseudo-labels.
* the confidence threshold falls linearly per round from ``threshold_start`` (0.8) by
  ``threshold_step`` (0.025) to at least ``threshold_min`` (0.7), so later rounds accept more;
* the number of pool images examined per round grows geometrically, ``sample_first`` times
  ``sample_growth`` to the power of the round (capped by the pool), the paper's 1000 x 2^t;
* editing: ``edit_passes`` forward passes of the two labelling modules with dropout on; a
  pseudo-label is kept when at least ``edit_min_agreement`` of each module's passes predict it
  (2/3 is the paper's rule: unstable when it changes in more than a third of the passes). With
  ``stage_dropout`` the modules' stages take dropout on their input too (training and editing);
  without it, editing runs the MLPs' dropout over features computed once;
* thresholds: ``threshold_mode: validation`` chooses each round the lowest threshold at which
  the modules' agreeing pseudo-labels on the labelled validation split are at least
  ``target_precision`` correct (at least 10 of them; else the schedule's threshold);
* diversity fine-tuning on freshly smeared labelled data at the start of every
  ``diversity_every``-th round after the first (``diversity_start: full-pool``, the paper's: from
  the first round whose sample is the whole pool), before its modules label (:func:`diversity_due`).
* ``protocol: paper`` sets these to the paper's schedule (see :mod:`fewlabel.semi.options`).
  Done at the end of a round instead, it was the last training before evaluation: on
  Fashion-MNIST (100 labels per class, seed 0) one such epoch took the ensemble from 83.4% to
  74.9% and the modules' disagreement from 7% to 21%; the round after repaired it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import FewlabelError
from .functional import MODULES, ensemble_log_probs

# children of a timm model that only forward_head uses: the trunk keeps them (they are idle there)
_HEAD_CHILDREN = ("global_pool", "classifier", "fc", "head", "flatten", "head_drop", "fc_norm")


def _stage_slots(backbone: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of each stage, bottom first: a ``blocks`` or ``stages`` Sequential
    (EfficientNet, MobileNet, ConvNeXt), else ResNet's ``layer1`` to ``layer4``."""
    for name in ("blocks", "stages"):
        container = getattr(backbone, name, None)
        if isinstance(container, nn.Sequential):
            return [(container, str(i)) for i in range(len(container))]
    return [(backbone, f"layer{i}") for i in range(1, 5) if isinstance(getattr(backbone, f"layer{i}", None), nn.Module)]


def _top_child(backbone: nn.Module, slot: tuple[nn.Module, str]) -> str:
    """The name of the backbone's child holding a stage (the container, or the stage itself)."""
    parent, name = slot
    return name if parent is backbone else next(n for n, m in backbone.named_children() if m is parent)


def split_backbone(backbone: nn.Module, module_stages: int, model_name: str = "") -> tuple[nn.Module, nn.Module]:
    """Cut a timm backbone (``num_classes=0``) into a shared trunk and one module tail.

    The trunk is the backbone itself with its last ``module_stages`` stages and everything
    after them in ``forward_features`` (EfficientNet's head convolution, ConvNeXt's final norm)
    replaced by identities: its ``forward_features`` gives the feature map the modules take.
    The tail is a copy with the stem and the lower stages replaced: its ``forward_features``
    then ``forward_head(pre_logits=True)`` turn that map into pooled features. The cut is
    checked on a random input (trunk then tail must reproduce the backbone), so a backbone
    whose forward does more than its children (a ViT's position embedding) is refused.
    """
    slots = _stage_slots(backbone)
    if not 1 <= module_stages <= len(slots):
        raise FewlabelError(
            f"method.module_stages {module_stages}: {model_name or 'this backbone'} has {len(slots)} stages that "
            f"tri-net modules can own (accepted: 0 to {len(slots)}; 0 = MLP modules on shared features)."
        )
    backbone.eval()
    children = [name for name, _ in backbone.named_children()]
    last_top = children.index(_top_child(backbone, slots[-1]))
    tail = copy.deepcopy(backbone)
    for name in children[: children.index(_top_child(backbone, slots[0]))]:
        setattr(tail, name, nn.Identity())
    for parent, name in _stage_slots(tail)[: len(slots) - module_stages]:  # the stages the trunk keeps
        setattr(parent, name, nn.Identity())
    probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = backbone.forward_head(backbone.forward_features(probe), pre_logits=True)
        for parent, name in slots[len(slots) - module_stages :]:
            setattr(parent, name, nn.Identity())
        for name in children[last_top + 1 :]:
            if name not in _HEAD_CHILDREN:
                setattr(backbone, name, nn.Identity())
        with torch.no_grad():
            got = tail.forward_head(tail.forward_features(backbone.forward_features(probe)), pre_logits=True)
        same = got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
    except (RuntimeError, AssertionError, ValueError):  # shapes the cut cannot carry
        same = False
    if not same:
        raise FewlabelError(
            f"method.module_stages {module_stages}: {model_name or 'this backbone'} cannot be cut into a shared "
            "trunk and per-module stages; set method.module_stages 0 (MLP modules on shared features)."
        )
    return backbone, tail


class Module(nn.Sequential):
    """One tri-net module: a tail of backbone stages (or nothing) and an MLP."""

    def __init__(self, tail: nn.Module, width: int, num_classes: int, hidden: int, dropout: float) -> None:
        mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        super().__init__(tail, mlp)

    @property
    def tail(self) -> nn.Module:
        return self[0]

    @property
    def mlp(self) -> nn.Module:
        return self[1]


class _StageTail(nn.Module):
    """Backbone stages of one module: feature map in, pooled features out; ``dropout`` on the
    feature map entering them (no parameters: model files are the same with or without)."""

    def __init__(self, stages: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.stages = stages

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.dropout(features)
        return self.stages.forward_head(self.stages.forward_features(features), pre_logits=True)


class TriNet(nn.Module):
    """A shared trunk and three modules (:class:`Module`: own copy of the backbone's last
    ``module_stages`` stages, then an MLP).

    ``forward`` returns the log of the modules' mean probability, so softmax of the output is
    the averaged prediction (and the Predictor, metrics and reports work unchanged).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        hidden: int = 256,
        dropout: float = 0.3,
        module_stages: int = 1,
        model_name: str = "",
        stage_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.module_stages = module_stages
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # pooled width
        if module_stages:
            self.shared, tail = split_backbone(backbone, module_stages, model_name)
            tails = [_StageTail(copy.deepcopy(tail), stage_dropout) for _ in range(MODULES)]
        else:
            self.shared, tails = backbone, [nn.Identity() for _ in range(MODULES)]
        self.heads = nn.ModuleList(Module(t, width, num_classes, hidden, dropout) for t in tails)

    def shared_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the modules take from images."""
        return self._module_input(self.shared.forward_features(x))

    def _module_input(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map itself when the modules own stages, else its pooled features."""
        return feature_map if self.module_stages else self.shared.forward_head(feature_map, pre_logits=True)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features through module 0's tail: every module's, while the tails are still the
        untouched pretrained copies (the head warm-up trains the MLPs on these)."""
        return self.heads[0].tail(self.shared_features(x))

    def modules_pooled(self, features: torch.Tensor) -> torch.Tensor:
        """3 x B x D: each module's stages applied to the shared features."""
        return torch.stack([module.tail(features) for module in self.heads])

    def output_modules(self) -> list[str]:
        """The modules whose outputs are logits (read by the geometry terms)."""
        return [f"heads.{i}" for i in range(len(self.heads))]

    def module_logits(self, x: torch.Tensor) -> torch.Tensor:
        """3 x B x C logits of the three modules."""
        return self.modules_on_features(self.shared_features(x))

    def modules_on_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([module(features) for module in self.heads])

    def pretrained_parts(self) -> list[nn.Module]:
        """The parts that come from the backbone (their BatchNorm statistics stay frozen)."""
        return [self.shared, *(module.tail for module in self.heads)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map (Grad-CAM reads it, as for a timm classifier)."""
        return self.shared.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return ensemble_log_probs(self.modules_on_features(self._module_input(features)))


def build_from_card(card) -> TriNet:
    """The untrained TriNet a model card describes (method ``trinet``; its extras hold
    module_stages, head_hidden and head_dropout)."""
    import timm

    extras = card.extras
    backbone = timm.create_model(card.arch, pretrained=False, num_classes=0)
    return TriNet(
        backbone,
        len(card.class_names),
        extras.get("head_hidden", 256),
        extras.get("head_dropout", 0.3),
        extras.get("module_stages", 0),
        card.arch,
    )

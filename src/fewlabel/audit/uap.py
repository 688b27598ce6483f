"""Universal adversarial perturbations (UAP) built with FGSM steps, batched, and their random
control — the audit of Minagi, Hirano and Takemoto (J. Imaging 2022), after the UAP algorithm
of Moosavi-Dezfooli et al. (2017) as the Adversarial Robustness Toolbox (ART) implements it.

Everything is in pixel space: images are floats in [0, 1] at the model's input size (N x C x
H x W), and ``forward`` maps such pixels to logits through the model's own preprocessing
(:func:`pixel_forward`), so the perturbation is a picture and ``clamp(x + v, 0, 1)`` a valid
image. The radius is ``zeta`` times the mean Lp norm of the target domain's images, measured
as the paper's code measures it: on the pixel values themselves, not centred (its images are
0-255 values whose norm is divided by 128, the scale of its [-1, 1] model inputs), so the ratio
is the same in any pixel unit; on Fashion-MNIST's black backgrounds the centred norm would be
8% smaller for L2 and half for L-infinity. The FGSM step is given on the paper's [-1, 1] scale
(0.0005 in the paper) and halved to [0, 1] units here, where the perturbation is stored.

The loop differs from ART's in one way. ART walks the building images one at a time: for each
image the current perturbation does not fool, it runs one FGSM attack on that image alone,
adds the step to the perturbation and projects onto the Lp ball. Here a whole batch is
evaluated at once: every not-yet-fooled image of the batch contributes its FGSM step
``step * sign(grad)``, computed at the same perturbation, and the sum of those steps is added
before one projection. To first order in the step this is the per-image loop (ART's later
images see a perturbation that moved by a few steps of size 0.0005, ours see the one before
the batch), and the projection onto a convex ball applied once to the sum never leaves the
ball either. What changes is the cost: one forward-backward pass per batch instead of one per
image, which is why ART is slow. The stopping rule reads the building rate each pass already
saw (each image at the perturbation its batch met) instead of predicting every building image
again after the pass as ART does: that saves one forward pass over the building images per
pass. The perturbation grows during a pass, so the rate seen trails the end-of-pass rate and the
loop stops at ART's pass or later, never earlier; the rate returned is measured on the final
perturbation. ART also folds an image's step in only when that one step
changes the image's label; the paper's loop (and this one) folds in every step of a
not-yet-fooled image — with the paper's small FGSM step a single step rarely flips a label, and
stock ART's perturbation then barely moves (tests/test_uap.py compares both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("l2", "linf")
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class UAP:
    """A universal perturbation and how it was built."""

    perturbation: torch.Tensor  # C x H x W, [0, 1] pixel units
    norm: str
    zeta: float
    radius: float  # in [0, 1] pixel units (on the paper's [-1, 1] input scale: twice this)
    target: int | None
    fooling_rate: float  # on the building images (targeted: success rate)
    passes: int
    images: int
    seconds: float
    history: list[float] = field(default_factory=list)  # per pass: share of images already fooled when seen
    clean: torch.Tensor | None = None  # predicted classes of the building images, clean
    predicted: torch.Tensor | None = None  # and with the final perturbation


def pixel_forward(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> Forward:
    """``forward`` of a classifier trained on images normalised by ``mean`` and ``std``: [0, 1]
    pixels in, logits out (grayscale pixels are repeated to the model's three channels)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1] == 1 and mean_t.shape[1] == 3:
            pixels = pixels.expand(-1, 3, -1, -1)
        return model((pixels - mean_t.to(pixels.device)) / std_t.to(pixels.device))

    return forward


def folded_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm that follows a convolution folded
    into it (the quantizer's :func:`~fewlabel.quant.layers.fold_batchnorm`): the same function up
    to rounding, and on the bench's EfficientNet-Lite0 about 1.5x faster forward and backward on
    a CPU. A network that cannot be traced is returned unfolded (in eval mode)."""
    import copy

    from ..errors import FewlabelError
    from ..quant.layers import fold_batchnorm

    folded = copy.deepcopy(model).eval()
    try:
        fold_batchnorm(folded)
    except FewlabelError:
        return model.eval()
    return folded


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def lp_norms(x: torch.Tensor, norm: str) -> torch.Tensor:
    """The Lp norm of every item of ``x`` (flattened after the first dimension)."""
    _check_norm(norm)
    flat = x.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def radius_for(images: torch.Tensor, norm: str, zeta: float) -> float:
    """The paper's radius: ``zeta`` times the mean Lp norm of ``images`` ([0, 1] pixels, not
    centred, as the paper's code measures it), in the same units."""
    return zeta * float(lp_norms(images, norm).mean())


def project(v: torch.Tensor, norm: str, radius: float) -> torch.Tensor:
    """``v`` moved onto the Lp ball of ``radius`` (unchanged inside it)."""
    _check_norm(norm)
    if norm == "linf":
        return v.clamp(-radius, radius)
    length = float(v.norm())
    return v * (radius / length) if length > radius else v


def random_control(shape: Sequence[int], norm: str, radius: float, generator: torch.Generator) -> torch.Tensor:
    """A random perturbation on the Lp sphere of ``radius`` (the paper's control): a Gaussian
    direction scaled to the radius for L2, a random sign per pixel times the radius (a random
    vertex of the ball) for L-infinity."""
    _check_norm(norm)
    if norm == "linf":
        return radius * (torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1)
    direction = torch.randn(tuple(shape), generator=generator)
    return direction * (radius / float(direction.norm()))


@torch.no_grad()
def predict(forward: Forward, images: torch.Tensor, v: torch.Tensor | None = None, batch_size: int = 256):
    """Predicted classes of ``clamp(images + v, 0, 1)`` (``v`` None: the clean images)."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if v is not None:
            x = (x + v).clamp(0, 1)
        out.append(forward(x).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def fooling_rate(clean: torch.Tensor, perturbed: torch.Tensor, target: int | None = None) -> float:
    """Share of images whose prediction changed (``target`` None), or that are predicted as
    ``target`` (the targeted success rate)."""
    if not len(clean):
        return 0.0
    hits = perturbed != clean if target is None else perturbed == target
    return float(hits.float().mean())


def universal_perturbation(
    forward: Forward,
    images: torch.Tensor,
    *,
    norm: str = "l2",
    zeta: float = 0.04,
    step: float = 0.0005,
    target: int | None = None,
    delta: float = 0.2,
    max_passes: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    radius: float | None = None,
) -> UAP:
    """Build a UAP from ``images`` ([0, 1] pixels): passes over the images in a seeded order,
    each batch's not-yet-fooled images adding their FGSM steps (``step`` on the [-1, 1]
    scale; ascent on the model's own clean prediction, or descent towards ``target``), then a
    projection onto the ball of :func:`radius_for`; stop once the share of building images a
    pass found already fooled reaches ``1 - delta``, or after ``max_passes`` passes (ART's
    ``delta`` and ``max_iter``). The paper
    takes the radius from the *target domain's* images (``radius``: :func:`radius_for` of
    them); without it, from the building images."""
    _check_norm(norm)
    started = time.perf_counter()
    radius = radius_for(images, norm, zeta) if radius is None else radius
    clean = predict(forward, images, batch_size=batch_size)
    v = torch.zeros(images.shape[1:], device=images.device)
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    for _ in range(max_passes):
        fooled = 0
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            step_sum, already_fooled = _batch_step(forward, images[batch], clean[batch], v, step / 2, target)
            v, fooled = project(v + step_sum, norm, radius), fooled + already_fooled
        history.append(fooled / max(len(images), 1))
        if history[-1] >= 1 - delta:
            break
    predicted = predict(forward, images, v, batch_size)
    return UAP(
        v.detach().cpu(), norm, zeta, radius, target, fooling_rate(clean, predicted, target), len(history),
        len(images), time.perf_counter() - started, history, clean, predicted,
    )  # fmt: skip


def _batch_step(forward: Forward, x: torch.Tensor, clean: torch.Tensor, v: torch.Tensor, step: float, target):
    """The sum of the FGSM steps of the batch's images that ``v`` does not fool yet, and how
    many it fools already."""
    adversarial = (x + v).clamp(0, 1).requires_grad_(True)
    with torch.enable_grad():
        logits = forward(adversarial)
        predicted = logits.argmax(1)
        todo = predicted == clean if target is None else predicted != target
        already_fooled = len(x) - int(todo.sum())
        if already_fooled == len(x):
            return torch.zeros_like(v), already_fooled
        wanted = clean if target is None else torch.full_like(clean, target)
        loss = F.cross_entropy(logits[todo], wanted[todo], reduction="sum")
        (gradient,) = torch.autograd.grad(loss, adversarial)
    direction = 1.0 if target is None else -1.0  # away from the clean class, or towards the target
    return direction * step * gradient[todo].sign().sum(0), already_fooled


def sphere_rate(forward: Forward, images: torch.Tensor, v: torch.Tensor, target: int | None = None) -> float:
    """The fooling (or targeted success) rate of ``v`` on ``images``."""
    return fooling_rate(predict(forward, images), predict(forward, images, v.to(images.device)), target)


def check_zeta(zeta: float) -> float:
    """Refuse a radius factor outside (0, 1]: the perturbation's norm as a share of an image's."""
    if not (0 < zeta <= 1) or math.isnan(zeta):
        raise ValueError(
            f"zeta must be in (0, 1] (a share of the mean image norm; the paper uses 0.02-0.08), got {zeta}"
        )
    return zeta

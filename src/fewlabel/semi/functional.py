"""The math of the semi-supervised methods as pure functions over tensors (no Lightning, no I/O).

Shapes: ``M`` modules (3 for tri-net, 1 otherwise), ``N``/``B`` images, ``C`` classes.
Lightning modules (:mod:`fewlabel.semi.modules`) and the round loop (:mod:`fewlabel.semi.loop`)
only wire these together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODULES = 3  # tri-net


def smear_labels(labels: torch.Tensor, num_classes: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """Output smearing (tri-net): N x C soft targets, one-hot plus ReLU'd Gaussian noise
    ``N(0, std²)`` per class, each row renormalised to sum 1."""
    onehot = F.one_hot(labels, num_classes).float()
    noise = torch.randn(onehot.shape, generator=generator).mul(std).clamp_min(0)
    smeared = onehot + noise
    return smeared / smeared.sum(1, keepdim=True)


def threshold_at(round_index: int, start: float, step: float, minimum: float) -> float:
    """Confidence threshold of round ``round_index`` (0-based): linear fall, floored."""
    return max(minimum, start - step * round_index)


def sample_size_at(round_index: int, first: int, growth: float, pool_size: int) -> int:
    """How many pool images round ``round_index`` examines: geometric growth, capped by the pool."""
    return min(pool_size, round(first * growth**round_index))


def diversity_due(round_index: int, every: int, first_full: int | None = None) -> bool:
    """Whether round ``round_index`` (0-based) starts with diversity fine-tuning: every
    ``every``-th round (counted from round 0, the first excluded; 0: never); with ``first_full`` (the first round whose
    sample is the whole pool, the paper's rule) every ``every``-th round from that one on."""
    if not every:
        return False
    if first_full is None:
        return round_index > 0 and round_index % every == 0
    return round_index >= first_full and (round_index - first_full) % every == 0


def first_full_round(first: int, growth: float, pool_size: int, rounds: int) -> int:
    """The first round (0-based) whose sample is the whole pool; ``rounds`` if none is."""
    return next((r for r in range(rounds) if sample_size_at(r, first, growth, pool_size) >= pool_size), rounds)


def threshold_from_validation(
    probs: torch.Tensor, truth: torch.Tensor, target_precision: float, candidates: torch.Tensor, min_support: int
) -> tuple[float | None, dict]:
    """The lowest candidate threshold at which the agreeing pseudo-labels on labelled
    validation images (3 x N x C module probabilities, N true labels), over all three
    modules, are at least ``target_precision`` correct and number at least ``min_support``.
    Returns (threshold or None when no candidate qualifies, a record of what it rests on)."""
    for threshold in sorted(candidates.tolist()):
        labels, mask = agreeing_pseudo_labels(probs, threshold)
        support = int(mask.sum())
        if support < min_support:
            break  # higher thresholds only accept fewer
        precision = float(((labels == truth) & mask).sum()) / support
        if precision >= target_precision:
            return threshold, {"validation_precision": precision, "validation_support": support}
    return None, {"validation_precision": None, "validation_support": 0}


def agreeing_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For 3 x N x C module probabilities: for each module v, the labels on which the two other
    modules agree with both confidences above ``threshold``.

    Returns (labels, mask), each 3 x N: ``mask[v, i]`` says image i is a pseudo-label for v.
    """
    confidence, predicted = probs.max(-1)
    labels = torch.zeros_like(predicted)
    mask = torch.zeros_like(predicted, dtype=torch.bool)
    for v in range(MODULES):
        j, k = (m for m in range(MODULES) if m != v)
        agree = (predicted[j] == predicted[k]) & (confidence[j] > threshold) & (confidence[k] > threshold)
        labels[v] = predicted[j]
        mask[v] = agree
    return labels, mask


def confident_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-training: for M x N x C probabilities, each module's predicted class and whether its
    confidence exceeds ``threshold`` (each M x N)."""
    confidence, predicted = probs.max(-1)
    return predicted, confidence > threshold


def stable_pseudo_labels(passes: torch.Tensor, labels: torch.Tensor, min_agreement: float) -> torch.Tensor:
    """Pseudo-label editing. ``passes`` is P x 3 x N of predicted classes under dropout (P passes),
    ``labels`` 3 x N pseudo-labels for each module; returns a 3 x N mask of labels that both
    labelling modules (the two other than v) predict in at least ``min_agreement`` of passes.
    ``min_agreement`` 2/3 is the paper's rule: a label that changes in more than a third of
    the passes is unstable."""
    stable = torch.zeros_like(labels, dtype=torch.bool)
    for v in range(MODULES):
        j, k = (m for m in range(MODULES) if m != v)
        share_j = (passes[:, j] == labels[v]).float().mean(0)
        share_k = (passes[:, k] == labels[v]).float().mean(0)
        stable[v] = (share_j >= min_agreement - 1e-6) & (share_k >= min_agreement - 1e-6)
    return stable


def hard_targets(labels: torch.Tensor, num_classes: int, modules: int) -> torch.Tensor:
    """N x M x C one-hot targets, the same for every module."""
    return F.one_hot(labels, num_classes).float().unsqueeze(1).expand(-1, modules, -1).clone()


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing of soft targets: ``(1 - smoothing) * targets + smoothing / C``."""
    if not smoothing:
        return targets
    return targets * (1 - smoothing) + smoothing / targets.shape[-1]


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft cross-entropy of M modules (logits M x B x C, targets B x M x C, mask B x M): each
    module's weighted mean over the images it trains on, summed over modules. An image's weight
    is 1, or with ``class_weights`` its target's expected class weight (as torch's weighted
    cross-entropy for hard targets)."""
    per_image = -(targets.transpose(0, 1) * logits.float().log_softmax(-1)).sum(-1)  # M x B
    weights = mask.transpose(0, 1).float()
    if class_weights is not None:
        weights = weights * (targets.transpose(0, 1) * class_weights).sum(-1)
    return ((per_image * weights).sum(1) / weights.sum(1).clamp_min(1e-12)).sum()


def ensemble_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """B x C log of the modules' mean probability, from M x B x C logits."""
    return logits.float().softmax(-1).mean(0).clamp_min(1e-12).log()


def fixmatch_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled loss (Sohn et al. 2020, eq. 4): the class the *weak* view predicts
    with confidence above ``threshold`` is the target of the *strong* view; images below the
    threshold count as zero in the batch mean. Returns (loss, mask of confident images); no
    gradient flows through the weak view."""
    confidence, pseudo = weak_logits.detach().float().softmax(-1).max(-1)
    mask = confidence > threshold
    loss = (F.cross_entropy(strong_logits.float(), pseudo, reduction="none") * mask.float()).mean()
    return loss, mask

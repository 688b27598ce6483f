"""Latent geometry graphs (Lassance, Gripon and Ortega, "Representing Deep Neural Networks Latent
Space Geometries with Graphs", Algorithms 2021) and the losses built on them, as pure functions
over tensors.

A batch's representations at one layer become a graph: nodes are the batch's examples, edge
weights the cosine similarity of their flattened, L2-normalised representations, diagonal zeroed.
Choices the paper leaves open, each a parameter:

* negative similarities (possible before a ReLU) are clamped to 0, so degrees stay positive;
* the k-nearest-neighbour mask keeps each node's ``k`` strongest edges and is made symmetric by
  keeping an edge either end chose (the authors' code does so);
* a node left without edges gets degree 1 in the normalisation (its row stays 0, not NaN).

Used by the ``distill`` method (distillation by graphs, next to Hinton's KD and relational KD)
and by every method's training (the layer-smoothness regulariser and the geometry-targeted
embedding loss of :mod:`fewlabel.train.module`).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F

MIN_BATCH = 2  # a graph of one node has no edge


def check_batch(size: int, what: str = "batch") -> None:
    """Refuse a batch too small to hold a graph."""
    if size < MIN_BATCH:
        raise ValueError(f"a latent geometry graph needs at least {MIN_BATCH} images per {what}, got {size}")


def cosine_similarity_matrix(representations: torch.Tensor) -> torch.Tensor:
    """B x B cosine similarities of the flattened representations, diagonal zeroed, negatives 0."""
    flat = F.normalize(representations.reshape(len(representations), -1).float(), dim=1)
    similarity = (flat @ flat.T).clamp_min(0)
    return similarity - torch.diag_embed(similarity.diagonal())


def knn_mask(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """B x B boolean mask of each node's ``k`` strongest edges, symmetric (kept if either end
    chose it); the diagonal is never kept."""
    size = len(similarity)
    k = min(k, size - 1)
    scores = similarity.detach().clone().fill_diagonal_(float("-inf"))
    chosen = torch.zeros(size, size, dtype=torch.bool, device=similarity.device)
    chosen.scatter_(1, scores.topk(k, dim=1).indices, True)
    return chosen | chosen.T


def normalized_adjacency(weights: torch.Tensor) -> torch.Tensor:
    """D^-1/2 W D^-1/2 of a symmetric weight matrix (a node without edges keeps degree 1)."""
    degree = weights.sum(1)
    inverse_root = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.ones_like(degree))
    return inverse_root[:, None] * weights * inverse_root[None, :]


def latent_graph(
    representations: torch.Tensor, k: int | None = None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(normalised adjacency, the k-NN mask used) of a batch's representations at one layer.
    ``mask`` (a teacher's) is applied instead of computing one; ``k`` None keeps every edge."""
    check_batch(len(representations))
    similarity = cosine_similarity_matrix(representations)
    if mask is None and k is not None:
        mask = knn_mask(similarity, k)
    if mask is not None:
        similarity = similarity * mask
    return normalized_adjacency(similarity), mask


def graph_distillation_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], k: int | None = None
) -> torch.Tensor:
    """LGG distillation: over paired layers, the summed squared differences between the
    student's and the teacher's normalised adjacency matrices (the teacher's k-NN mask applied
    to the student's graph too)."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student layers paired with {len(teacher)} teacher layers")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        target, mask = latent_graph(t.detach(), k)
        graph, _ = latent_graph(s, mask=mask)
        total = total + (graph - target).pow(2).sum()
    return total


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton, Vinyals and Dean (2015): KL(teacher || student) of the softened outputs, times T^2
    so its gradients keep their scale whatever the temperature; mean over the batch."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def normalized_distances(embedding: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances divided by their mean over distinct pairs (Park et al. 2019)."""
    flat = embedding.reshape(len(embedding), -1).float()
    distances = torch.cdist(flat, flat)
    off_diagonal = ~torch.eye(len(flat), dtype=torch.bool, device=flat.device)
    return distances / distances[off_diagonal].mean().clamp_min(1e-12)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational KD, distance-wise (Park, Kim, Lu and Cho, CVPR 2019): Huber loss between the
    student's and the teacher's mean-normalised pairwise distances, mean over distinct pairs."""
    check_batch(len(student))
    off_diagonal = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    s = normalized_distances(student)[off_diagonal]
    t = normalized_distances(teacher.detach())[off_diagonal]
    return F.smooth_l1_loss(s, t)


def laplacian(weights: torch.Tensor) -> torch.Tensor:
    """L = D - W of a weight matrix."""
    return torch.diag_embed(weights.sum(1)) - weights


def label_smoothness(
    representations: torch.Tensor, targets: torch.Tensor, k: int | None = None, power: int = 1
) -> torch.Tensor:
    """sigma = tr(Y^T L^power Y) of the label signal Y (B x C one-hot or soft) on the batch's
    cosine-similarity graph at one layer (unnormalised Laplacian, optional k-NN mask): small when
    examples of different classes are far apart at that layer."""
    check_batch(len(representations))
    similarity = cosine_similarity_matrix(representations)
    if k is not None:
        similarity = similarity * knn_mask(similarity, k)
    operator = torch.linalg.matrix_power(laplacian(similarity), power)
    y = targets.float()
    return torch.trace(y.T @ operator @ y)


def smoothness_regularizer(
    representations: list[torch.Tensor], targets: torch.Tensor, k: int | None = None, power: int = 1
) -> torch.Tensor:
    """Lassance et al.'s robustness regulariser: the mean over consecutive layers of
    |sigma_l - sigma_(l-1)|, so the label smoothness changes little from layer to layer."""
    if len(representations) < 2:
        raise ValueError("the smoothness regulariser needs at least two layers")
    sigmas = [label_smoothness(r, targets, k, power) for r in representations]
    return torch.stack([(b - a).abs() for a, b in pairwise(sigmas)]).mean()


def label_graph(targets: torch.Tensor) -> torch.Tensor:
    """The target geometry of a batch from its B x C label signal Y (one-hot or soft): edge
    weights Y Y^T, so 1 between two distinct examples of the same class and 0 across classes,
    diagonal zeroed, normalised as a latent graph."""
    y = targets.float()
    same = y @ y.T
    return normalized_adjacency(same - torch.diag_embed(same.diagonal()))


def geometry_target_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The geometry-targeted embedding loss: summed squared differences between the graph of the
    batch's outputs and :func:`label_graph` of its label signal (same-class examples close,
    other classes far)."""
    graph, _ = latent_graph(output)
    return (graph - label_graph(targets)).pow(2).sum()

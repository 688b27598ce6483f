"""The ``distill`` method: a student network learns the task from the labelled images
(cross-entropy) and the teacher's behaviour on un-augmented images (the labelled ones and,
with ``unlabeled``, a pool), through the engine:

* ``head`` (a pretrained student only): its new classifier on cached features, ``head_epochs``
  at ``head_lr``, as ``freeze-unfreeze`` does;
* ``distill``: the whole student, ``epochs`` passes over the labelled images, each step a batch
  of augmented labelled images and ``mu`` times as many distillation images. A pretrained
  student trains at ``lr`` on top and ``layer_decay`` per stage below; one from scratch at
  ``lr`` everywhere.

The teacher runs once per image: its logits, pooled embedding and paired layers' outputs on
the un-augmented images come from the engine's feature cache. Choices the papers leave open:
KD is added to cross-entropy (weight ``kd_weight``, times T^2) rather than mixed with it; RKD
reads the pooled embeddings; LGG pairs the student's last ``graph_layers`` stages with the
teacher's stages of nearest relative depth and average-pools maps wider than ``graph_side``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import loss_terms
from ..data.augment import BatchTransform
from ..data.datasets import ImageBatches
from ..data.imageset import ImageSet
from ..data.pool import unlabeled_pool
from ..errors import FewlabelError
from ..graphs import MIN_BATCH
from ..methods import load_network
from ..models.layers import LayerTap, check_layer_names, pair_by_depth, parameter_count, parse_pairs, stage_names
from ..report.sections import record_section
from ..rundir import DISTILL, WEIGHTS, write_record
from ..tasks.classification import class_weights
from ..train.datamodule import datamodule
from ..train.engine import Fit, eval_mode_modules, freezes_batchnorm
from ..train.finetune import run_phase
from ..train.functional import decayed_param_groups
from ..train.strategies import Phase
from .module import DistillModule, DistillTerms, TeacherLayout, embed_and_classify

if TYPE_CHECKING:  # pragma: no cover
    from ..models import BackboneInfo
    from ..tasks.base import RunContext

log = logging.getLogger("fewlabel.distill")
EMBEDDING = "pooled embedding"
OUTPUTS = "outputs"


def train(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """Load the teacher, build the student, pair their layers, then run the fits."""
    cfg, opts = ctx.cfg, ctx.cfg.method
    check_batch_sizes(cfg.batch_size, opts.mu)
    teacher, card = load_teacher(opts.teacher, ctx.data.class_names)
    student, info = ctx.task.build_model(cfg, ctx.data)
    pairs = layer_pairs(teacher, student, opts.layers, opts.graph_layers)
    record = distill_record(opts, card, teacher, student, pairs, cfg)
    for warning in record["warnings"]:
        log.warning("%s", warning)
    ctx.engine.method_state["distill"] = record
    images = distillation_images(ctx)
    rows, layout = teacher_rows(ctx, teacher, card, images, [t for t, _ in pairs], opts.graph_side)
    ctx.engine.start(student)
    if cfg.pretrained != "none" and cfg.head_epochs > 0:
        run_phase(ctx, student, info, Phase("head", True, cfg.head_epochs, cfg.head_lr))
    build = partial(distill_fit, ctx, student, info, images, rows, layout, [s for _, s in pairs])
    ctx.engine.fit("distill", cfg.epochs, build)
    write_record(ctx.run_dir, DISTILL, record)
    return student, info


def check_batch_sizes(batch_size: int, mu: int) -> None:
    """A graph needs two images: refuse a distillation batch of one."""
    if batch_size * mu < MIN_BATCH:
        raise FewlabelError(
            f"--batch-size {batch_size} x --mu {mu} gives distillation batches of {batch_size * mu} image(s); "
            f"relational and graph distillation need at least {MIN_BATCH}."
        )


def load_teacher(folder: str | None, class_names: list[str]):
    """(network, ModelCard) of the teacher run; refused without one, or with another class set."""
    if not folder:
        raise FewlabelError("method distill needs a teacher: --teacher RUN (a fewlabel run directory).")
    path = Path(folder)
    if not (path / WEIGHTS).is_file():
        seeds = sorted(p.name for p in path.glob("seed-*") if (p / WEIGHTS).is_file())
        hint = f"; it holds one run per seed: name one, e.g. {path / seeds[0]}" if seeds else ""
        raise FewlabelError(f"--teacher '{folder}': no {WEIGHTS} there{hint}.")
    teacher, card = load_network(path)
    if list(card.class_names) != list(class_names):
        raise FewlabelError(
            f"--teacher '{folder}' predicts classes {', '.join(card.class_names)}; the data has "
            f"{', '.join(class_names)}. Distil on data with the teacher's class set."
        )
    for p in teacher.parameters():
        p.requires_grad = False
    return teacher.eval(), card


def layer_pairs(teacher: nn.Module, student: nn.Module, layers: str | None, count: int) -> list[tuple[str, str]]:
    """The (teacher layer, student layer) pairs of LGG distillation: ``layers`` when given
    (names checked on each network), else by relative depth of their stages."""
    if layers:
        pairs = parse_pairs(layers)
        check_layer_names(teacher, [t for t, _ in pairs], "the teacher")
        check_layer_names(student, [s for _, s in pairs], "the student")
        return pairs
    return pair_by_depth(stage_names(teacher), stage_names(student), count)


def distill_record(opts, card, teacher: nn.Module, student: nn.Module, pairs, cfg) -> dict:
    """distill.json: the teacher, the terms and their weights, the layer pairs, both sizes, and
    a warning when the student is not smaller."""
    sizes = {"teacher_parameters": parameter_count(teacher), "student_parameters": parameter_count(student)}
    warnings = []
    if sizes["student_parameters"] > sizes["teacher_parameters"]:
        warnings.append(
            f"the student ({cfg.model}, {sizes['student_parameters']:,} parameters) is larger than the teacher "
            f"({card.arch}, {sizes['teacher_parameters']:,}): distillation usually compresses"
        )
    terms = loss_terms(cfg.loss)
    extra = [name for name, used in ((EMBEDDING, opts.graph_embedding), (OUTPUTS, opts.graph_logits)) if used]
    return {
        "teacher": str(opts.teacher),
        "teacher_arch": card.arch,
        "student_arch": cfg.model,
        "loss": cfg.loss,
        "weights": {"ce": 1.0, "lgg": opts.graph_weight, "kd": opts.kd_weight, "rkd": opts.rkd_weight},
        "terms": ["ce", *terms],
        "temperature": opts.temperature,
        "graph_k": cfg.graph_k,
        "graph_side": opts.graph_side,
        "layer_pairs": [{"teacher": t, "student": s} for t, s in [*pairs, *zip(extra, extra, strict=True)]],
        "layers_given": bool(opts.layers),
        "unlabeled": opts.unlabeled,
        "mu": opts.mu,
        **sizes,
        "warnings": warnings,
    }


def distillation_images(ctx: RunContext) -> ImageSet:
    """The un-augmented images the student learns from the teacher on: the labelled images,
    then the pool (``unlabeled``) when given (labels -1: the teacher's outputs are the targets)."""
    labelled = ctx.data.train
    spec = ctx.cfg.method.unlabeled
    parts, ids = [labelled.images], list(labelled.ids)
    if spec:
        pool = unlabeled_pool(ctx.cfg, ctx.data, ctx.seed, spec)
        parts.append(pool.images)
        ids += list(pool.ids)
    channels = max(p.shape[1] for p in parts)
    pixels = torch.cat([p.expand(-1, channels, -1, -1) for p in parts])
    unknown = torch.full((len(pixels),), -1, dtype=torch.long)
    return ImageSet(pixels, unknown, labelled.class_names, ids, "distillation images")


def teacher_rows(ctx: RunContext, teacher, card, images: ImageSet, layers: list[str], side: int | None):
    """(N x D rows, their layout): the teacher's logits, pooled embedding and each paired layer
    flattened, on every distillation image, un-augmented, from the engine's feature cache."""
    tap = LayerTap(teacher, layers, side)

    def outputs(x: torch.Tensor) -> torch.Tensor:
        with tap.recording():
            embedding, logits = embed_and_classify(teacher, x)
        maps = [t.flatten(1) for t in tap.taken()]
        return torch.cat([logits, embedding, *maps], dim=1)

    outputs.__name__ = f"teacher|{','.join(layers)}|{side}"
    transform = BatchTransform("none", card.img_size, card.mean, card.std, train=False)
    teacher.to(ctx.engine.device)
    try:
        rows = ctx.engine.cache.features(teacher, images, transform, ctx.engine.device, ctx.cfg.progress, outputs)
        with torch.no_grad():
            sample = transform(images.images[:MIN_BATCH].to(ctx.engine.device))
            with tap.recording():
                embedding, logits = embed_and_classify(teacher, sample)
            widths = tuple(t.flatten(1).shape[1] for t in tap.taken())
    finally:
        teacher.to("cpu")
    return rows, TeacherLayout(logits.shape[1], embedding.shape[1], widths)


def distill_fit(ctx: RunContext, student, info, images: ImageSet, rows, layout, student_layers) -> Fit:
    """The ``distill`` fit: labelled batches (augmented) and distillation batches (un-augmented
    images with their teacher rows)."""
    cfg, opts, task = ctx.cfg, ctx.cfg.method, ctx.task
    for p in student.parameters():
        p.requires_grad = True
    decay = cfg.layer_decay if cfg.pretrained != "none" else 1.0
    groups = decayed_param_groups(student, cfg.lr, decay, True, cfg.weight_decay)
    train_set = task.dataset(ctx.data.train, info, cfg, True, ctx.seed)
    val_set = task.dataset(ctx.data.val, info, cfg, False, ctx.seed) if ctx.data.val is not None else None
    fixed = BatchTransform("none", cfg.img_size, info.mean, info.std, train=False)
    distill_set = ImageBatches(images.images, (rows,), fixed, ctx.seed)
    data = datamodule(
        cfg,
        ctx.seed,
        train_set,
        val_set,
        task.sampler_labels(ctx.data.train),
        unlabeled=distill_set,
        unlabeled_batch=cfg.batch_size * opts.mu,
    )
    terms = loss_terms(cfg.loss)
    weights = DistillTerms(
        lgg=opts.graph_weight if "lgg" in terms else 0.0,
        kd=opts.kd_weight if "kd" in terms else 0.0,
        rkd=opts.rkd_weight if "rkd" in terms else 0.0,
        temperature=opts.temperature,
        k=cfg.graph_k,
        graph_embedding=opts.graph_embedding,
        graph_logits=opts.graph_logits,
    )
    module = DistillModule(
        student,
        groups,
        cfg.optimizer,
        cfg.schedule,
        cfg.warmup_epochs,
        cfg.label_smoothing,
        class_weights(ctx.data.train, cfg.imbalance),
        terms=weights,
        layout=layout,
        student_layers=student_layers,
        graph_side=opts.graph_side,
    )
    return Fit(module, data, eval_mode_modules(student, freezes_batchnorm(cfg)))


def report_section(run_dir: Path) -> str | None:
    """The distillation part of report.html, from distill.json."""
    return record_section(run_dir, DISTILL, "fewlabel.distill", "distill.html", "d")

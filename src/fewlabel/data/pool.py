"""The unlabeled pool a method learns from: a folder, CSV or DATA of its own, or the unlabeled
rest of DATA's training split (``--labels-per-class``), checked against the evaluation images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FewlabelError
from .duplicates import cross_duplicates
from .imageset import ImageSet
from .sources import has_labels, load_pool
from .splits import random_subset

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..tasks.base import DataBundle

REST = "rest"  # the pool spec naming the unlabeled rest of DATA's training split


def unlabeled_pool(cfg: TrainConfig, data: DataBundle, seed: int, spec: str | None) -> ImageSet:
    """The pool ``spec`` names, or (None or ``rest``) the unlabeled rest of DATA's training split;
    a seeded ``method.pool_size`` draw of it when set; checked: not empty, and holding no
    evaluation image (exact pixel duplicates) unless ``method.allow_overlap``."""
    opts = cfg.method
    if spec and spec != REST:
        pool = load_pool(spec, cfg.img_size, cfg.strict, cfg.progress)
    elif data.unlabeled is not None and len(data.unlabeled):
        pool = data.unlabeled
    else:
        raise FewlabelError(
            "The unlabeled pool is empty: pass --unlabeled POOL, or --labels-per-class so that the rest of "
            "DATA's training split is the pool."
        )
    pool = random_subset(pool, opts.pool_size, seed)
    overlap = cross_duplicates(data.eval, pool)
    if overlap["count"] and not opts.allow_overlap:
        first = overlap["examples"][0]
        raise FewlabelError(
            f"The unlabeled pool holds {overlap['count']} image(s) identical to evaluation images "
            f"(e.g. pool '{first[1]}' = evaluation '{first[0]}'); remove them or pass --allow-overlap."
        )
    if getattr(opts, "audit", False) and not (has_labels(pool) and pool.class_names == data.class_names):
        raise FewlabelError("--audit needs a pool with the labelled data's classes (hidden labels).")
    return pool

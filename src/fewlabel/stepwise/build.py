"""Build an intermediate dataset for stepwise fine-tuning (``fewlabel intermediate build``, and a
recipe stage's ``build``): pseudo-classes of unlabeled images, or generated images."""

from __future__ import annotations

from pathlib import Path

from ..errors import FewlabelError, unknown_choice
from ..methods import load_object
from ..outputs import input_paths, output_folder, register_output_kind
from ..rundir import BUILT_LABELS, CLUSTERS_MARKER, RENDER_RECORD, SYNTHETIC_MARKER
from . import INTERMEDIATE_BUILDERS

BUILT_OUTPUT = register_output_kind(
    "built data",
    entries=("cluster-*", CLUSTERS_MARKER, "images", BUILT_LABELS, SYNTHETIC_MARKER, "train", "test", RENDER_RECORD),
    records=(CLUSTERS_MARKER, SYNTHETIC_MARKER, RENDER_RECORD),
)


def build_intermediate(
    data: str | None,
    out: str | Path,
    *,
    method: str = "clusters",
    unlabeled: str | None = None,
    pool_size: int | None = None,
    k: int = 20,
    descriptor: str = "handcrafted",
    keep_fraction: float = 0.8,
    generator: str | None = None,
    per_class: int = 100,
    options: dict | None = None,
    seed: int = 0,
    model: str = "efficientnet_lite0",
    pretrained: str = "imagenet",
    img_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build an intermediate dataset and write it to ``out``.

    ``clusters``: K pseudo-classes from the unlabeled pool (``unlabeled`` if given, else DATA's
    training split, labels unused; ``pool_size`` draws a seeded random subset), written as an
    ImageFolder plus ``clusters.json``. ``synthetic``: ``per_class`` images per class from
    ``generator`` (``module:function``), written as ``labels.csv`` plus ``synthetic.json``.
    """
    if method not in INTERMEDIATE_BUILDERS:
        raise unknown_choice("intermediate method", method, INTERMEDIATE_BUILDERS)
    builder = INTERMEDIATE_BUILDERS[method]
    options_given = {"generator": generator}
    for key, what in builder.requires.items():
        if not options_given.get(key):
            raise FewlabelError(f"--method {method} needs --{key} {what}.")
    settings = dict(
        unlabeled=unlabeled, pool_size=pool_size, k=k, descriptor=descriptor, keep_fraction=keep_fraction,
        generator=generator, per_class=per_class, options=options, seed=seed, model=model, pretrained=pretrained,
        img_size=img_size, progress=progress,
    )  # fmt: skip
    inputs = input_paths([data, unlabeled, pretrained])
    with output_folder(out, BUILT_OUTPUT.name, overwrite=overwrite, inputs=inputs) as folder:
        return load_object(builder.build)(data, folder, **settings)


def build_generated(data: str | None, out: Path, *, generator: str, per_class: int, options, seed: int, **_) -> dict:
    """``synthetic``: ``per_class`` images per class from ``generator``; DATA is not used."""
    from .synthetic import build_synthetic

    return build_synthetic(generator, out, per_class, seed, options)


def build_clusters(
    data: str | None,
    out: Path,
    *,
    unlabeled: str | None,
    pool_size: int | None,
    k: int,
    descriptor: str,
    keep_fraction: float,
    seed: int,
    model: str,
    pretrained: str,
    img_size: int,
    progress: bool,
    **_,
) -> dict:
    """``clusters``: K pseudo-classes of the unlabeled pool, written as an ImageFolder."""
    from ..data.sources import load_pool
    from ..data.splits import random_subset
    from .intermediate import cluster_pseudo_classes, describe, write_cluster_folder

    if unlabeled is None and data is None:
        raise FewlabelError("--method clusters needs DATA or --unlabeled POOL: the images to group.")
    pool = random_subset(load_pool(unlabeled or data, img_size, progress=progress), pool_size, seed)

    def embed(images):
        from ..data.augment import BatchTransform
        from ..models import create_backbone
        from ..train.inference import batched_outputs, pre_logits

        backbone, info = create_backbone(model, pretrained, num_classes=2)
        transform = BatchTransform("none", img_size, info.mean, info.std, train=False)
        return batched_outputs(
            pre_logits(backbone.eval()), images, transform, desc="embedding the pool", progress=progress
        )

    groups = cluster_pseudo_classes(describe(pool, descriptor, embed), k, seed, keep_fraction)
    params = {
        "method": "clusters",
        "k": k,
        "descriptor": descriptor,
        "keep_fraction": keep_fraction,
        "pool_size": pool_size,
        "seed": seed,
        "model": model if descriptor != "handcrafted" else None,
        "img_size": img_size,
    }
    return write_cluster_folder(pool, groups, out, params)

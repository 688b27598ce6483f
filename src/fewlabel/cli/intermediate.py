"""``fewlabel intermediate``: intermediate datasets for stepwise fine-tuning."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..stepwise import DESCRIPTORS, INTERMEDIATE_METHODS
from .app import app
from .commands import console

intermediate_app = typer.Typer(no_args_is_help=True, help="Intermediate datasets for stepwise fine-tuning.")
app.add_typer(intermediate_app, name="intermediate")
Descriptor = Enum("Descriptor", {d: d for d in DESCRIPTORS}, type=str)
BuildMethod = Enum("BuildMethod", {m: m for m in INTERMEDIATE_METHODS}, type=str)


@intermediate_app.command("build")
def build(
    data: Annotated[str | None, typer.Argument(help="target DATA (clusters: its training split is the pool)")] = None,
    out: Annotated[Path, typer.Option(help="folder to write")] = Path("data/intermediate"),
    method: Annotated[BuildMethod, typer.Option()] = BuildMethod.clusters,
    unlabeled: Annotated[str | None, typer.Option(help="clusters: pool of target-domain images")] = None,
    pool_size: Annotated[int | None, typer.Option(help="clusters: random subset of the pool")] = None,
    k: Annotated[int, typer.Option(help="clusters: number of pseudo-classes")] = 20,
    descriptor: Annotated[Descriptor, typer.Option()] = Descriptor.handcrafted,
    keep_fraction: Annotated[float, typer.Option(help="clusters: share of each cluster kept, nearest first")] = 0.8,
    generator: Annotated[str | None, typer.Option(help="synthetic: module:function making the images")] = None,
    per_class: Annotated[int, typer.Option(help="synthetic: images per class")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    model: Annotated[str, typer.Option(help="backbone for the embedding descriptor")] = "efficientnet_lite0",
    img_size: Annotated[int, typer.Option()] = 64,
    overwrite: Annotated[bool, typer.Option(help="replace data this command built before")] = False,
) -> None:
    """Build an intermediate dataset: pseudo-classes of unlabeled images, or generated images."""
    from ..stepwise.build import build_intermediate

    summary = build_intermediate(
        data,
        out,
        method=method.value,
        unlabeled=unlabeled,
        pool_size=pool_size,
        k=k,
        descriptor=descriptor.value,
        keep_fraction=keep_fraction,
        generator=generator,
        per_class=per_class,
        seed=seed,
        model=model,
        img_size=img_size,
        overwrite=overwrite,
    )
    sizes = summary["sizes"]
    console().print(f"{sum(sizes.values())} images in {len(sizes)} classes: {out}")

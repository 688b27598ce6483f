"""``make demo``: the main job on built-in data, offline.

Fine-tunes the offline ImageNet EfficientNet-Lite0 on fashion-mnist-small with 50 labels per
class three ways: a linear probe, freeze-then-unfreeze, and the defaults (``auto``: the
augmentation a mirror test allows, the strategy chosen on validation within a time budget),
and prints them side by side with what ``auto`` chose.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import fewlabel

RUNS = {
    "linear-probe": dict(strategy="linear-probe", epochs=40),
    "freeze-unfreeze": dict(strategy="freeze-unfreeze", head_epochs=40, epochs=10),
    "auto (defaults)": dict(head_epochs=40, epochs=10),
}
COMMON = dict(model="efficientnet_lite0", pretrained="imagenet", img_size=64, labels_per_class=50, seed=0)


def main(out: Path = Path("runs/demo")) -> None:
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    table = Table(title="fashion-mnist-small, 50 labels per class, EfficientNet-Lite0 (ImageNet, offline), 64 px")
    for column in ("strategy", "accuracy", "balanced acc.", "macro F1", "ECE", "seconds"):
        table.add_column(column, no_wrap=True)
    reports, choices = [], []
    for name, options in RUNS.items():
        console.print(f"[bold]training {name}[/bold]")
        started = time.perf_counter()
        result = fewlabel.train("fashion-mnist-small", out / name.split()[0], overwrite=True, **COMMON, **options)
        m = result.metrics
        table.add_row(
            name,
            f"{m['accuracy']:.3f}",
            f"{m['balanced_accuracy']:.3f}",
            f"{m['macro_f1']:.3f}",
            f"{m['ece']:.3f}",
            f"{time.perf_counter() - started:.0f}",
        )
        reports.append(result.run_dir / "report.html")
        choices.append(f"{name} chose: {chosen(m)}")
    console.print(table)
    console.print(f"Evaluated on the {m['n_samples']} test images of fashion-mnist-small (one seed).")
    for line in choices:
        console.print(line, soft_wrap=True)
    for report in reports:
        console.print(f"report: {report}", soft_wrap=True)


def chosen(metrics: dict) -> str:
    """What the automatic choices of a run decided (empty for fixed settings)."""
    search, augment = metrics.get("strategy_search"), metrics.get("augment_decision")
    parts = []
    if search and search["winner"]:
        winner = next(c for c in search["candidates"] if c["fit"] == search["winner"])
        parts.append(f"{winner['strategy']} at lr {winner['lr']:.3g}")
    if augment:
        parts.append(f"augment {augment['augment']}" + (" + vflip" if augment["vflip"] else ""))
    return ", ".join(parts)


if __name__ == "__main__":
    main()

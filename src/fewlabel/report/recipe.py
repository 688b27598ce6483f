"""report.html of a recipe: the stages side by side, the direct comparison, and example images
of every built (clusters or synthetic) stage. Built only from the recipe folder's files."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from ..data.images import ImageDecodeError, decode_image, is_image_file
from ..fileio import write_text
from ..rundir import REPORT, built_data_dir, read_recipe_file, read_summary, seed_dir
from ..stepwise.synthetic import LABELS_FILE
from .figures import image_strip_png
from .html import _environment

EXAMPLES_PER_CLASS = 8


def write_recipe_report(out: str | Path) -> Path:
    """Write ``out/report.html`` from ``out/summary.json`` and ``out/recipe.yaml``."""
    out = Path(out)
    summary = read_summary(out)
    recipe = read_recipe_file(out)
    first_seed = seed_dir(out, summary["seeds"][0])
    for stage in summary["stages"]:
        report = first_seed / stage["name"] / REPORT
        stage["report"] = report.relative_to(out).as_posix() if report.is_file() else None
    built = [
        {"name": s["name"], "build": s["build"], "examples": stage_examples(built_data_dir(first_seed, s["name"]))}
        for s in recipe["stages"]
        if s.get("build")
    ]
    html = (
        _environment()
        .get_template("recipe.html")
        .render(
            title=summary.get("recipe") or out.name,
            summary=summary,
            built=built,
            recipe=yaml.safe_dump(recipe, sort_keys=False),
        )
    )
    return write_text(out / REPORT, html)


def stage_examples(folder: Path, per_class: int = EXAMPLES_PER_CLASS) -> list[dict]:
    """The first ``per_class`` images of each class of built data (ImageFolder or labels.csv),
    as ``{"class", "count", "png"}``; unreadable files are left out."""
    if (folder / LABELS_FILE).is_file():
        with open(folder / LABELS_FILE, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        files: dict[str, list[Path]] = {}
        for row in rows:
            files.setdefault(row["label"], []).append(folder / row["path"])
    elif folder.is_dir():
        files = {
            d.name: sorted(p for p in d.iterdir() if is_image_file(p)) for d in sorted(folder.iterdir()) if d.is_dir()
        }
    else:
        return []
    examples = []
    for name, paths in files.items():
        images = []
        for path in paths[:per_class]:
            try:
                images.append(decode_image(path))
            except (ImageDecodeError, OSError):
                continue
        if images:
            examples.append({"class": name, "count": len(paths), "png": image_strip_png(images)})
    return examples

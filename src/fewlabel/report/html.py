"""Render report.html from a run directory's files (metrics.json, history.csv, config.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from ..fileio import read_json, write_text
from ..train.callbacks import read_history
from .figures import confusion_figure, learning_curves_figure

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "ece", "nll")


def _environment() -> Environment:
    return Environment(loader=PackageLoader("fewlabel.report", "templates"), autoescape=select_autoescape())


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html``; every image is embedded, so the file stands alone."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    history = read_history(run_dir / "history.csv")
    splits_path = run_dir / "splits.json"
    data_summary = read_json(splits_path)["summary"] if splits_path.is_file() else None
    rows = [
        {"name": key, "value": metrics.get(key), "sd": metrics.get(f"{key}_sd"), "ci": metrics.get(f"{key}_ci95")}
        for key in HEADLINE
        if key in metrics
    ]
    html = (
        _environment()
        .get_template("run.html")
        .render(
            title=run_dir.name,
            metrics=metrics,
            rows=rows,
            per_class=metrics.get("per_class", {}),
            confusion_counts=confusion_figure(metrics["confusion_matrix"], metrics["class_names"], False),
            confusion_norm=confusion_figure(metrics["confusion_matrix"], metrics["class_names"], True),
            curves=learning_curves_figure(history),
            config=yaml.safe_dump(config, sort_keys=False),
            data_summary=data_summary,
        )
    )
    return write_text(run_dir / "report.html", html)

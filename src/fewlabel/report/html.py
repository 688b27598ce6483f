"""Render report.html from a run directory's files alone: metrics.json, history.csv, config.yaml,
model.json, and what the task and the method add (predictions.csv, rounds.json, ...). Nothing
comes from a training process's memory, and nothing here imports Lightning."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from ..evaluate.notices import run_sentences
from ..fileio import read_json, write_text
from ..methods import get_method, list_methods, load_object
from ..rundir import CARD, REPORT, read_config, read_history, read_metrics
from ..tasks import DEFAULT_TASK, get_task
from .figures import learning_curves_figure

log = logging.getLogger("fewlabel.report")


def _environment() -> Environment:
    return Environment(loader=PackageLoader("fewlabel.report", "templates"), autoescape=select_autoescape())


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html``; every image is embedded, so the file stands alone."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    config = read_config(run_dir)
    task = get_task(metrics.get("task") or _card_value(run_dir, "task") or DEFAULT_TASK)
    context = {
        "title": run_dir.name,
        "metrics": metrics,
        "headline": headline(metrics, task.headline),
        "rows": [
            {"name": k, "value": metrics.get(k), "sd": metrics.get(f"{k}_sd"), "ci": metrics.get(f"{k}_ci95")}
            for k in task.metric_keys
            if isinstance(metrics.get(k), (int, float))
        ],
        "per_seed": metrics.get("per_seed"),
        "warnings": metrics.get("warnings", []),
        "notices": run_sentences(metrics),
        "search": metrics.get("strategy_search"),
        "task_sections": task.report_sections(run_dir, metrics),
        "method_sections": method_sections(run_dir, metrics.get("method")),
        "curves": learning_curves_figure(read_history(run_dir)),
        "config": yaml.safe_dump(config, sort_keys=False),
    }
    html = _environment().get_template("run.html").render(**context)
    return write_text(run_dir / REPORT, html)


def headline(metrics: dict, name: str) -> dict:
    """The leading figure: a fraction as a percentage, with its interval over seeds."""
    value, ci = metrics.get(name), metrics.get(f"{name}_ci95")
    percent = name in ("accuracy", "balanced_accuracy", "macro_f1")
    show = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.4g}")
    return {
        "name": name,
        "text": show(value) if isinstance(value, (int, float)) else "–",
        "ci": f"{show(ci[0])}–{show(ci[1])}" if ci else None,
    }


def method_sections(run_dir: Path, method: str | None) -> list[str]:
    """The method's own section of the report, if it registered one."""
    if not method or method not in list_methods():
        return []
    reference = get_method(method).report_section
    section = load_object(reference)(run_dir) if reference else None
    return [section] if section else []


def _card_value(run_dir: Path, key: str):
    path = run_dir / CARD
    return read_json(path).get(key) if path.is_file() else None

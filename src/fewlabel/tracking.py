"""Experiment tracking: record a finished run directory in a local MLflow store.

One MLflow run per fewlabel run directory (per seed, and the aggregate of several seeds):
the config as params, every scalar of metrics.json as a metric, history.csv as per-epoch
metrics, and report.html, metrics.json, config.yaml, history.csv and predictions.csv as
artifacts. The store is an SQLite file (default ``<runs folder>/mlflow.db``, artifacts beside
it in ``mlartifacts/``) that ``mlflow ui --backend-store-uri sqlite:///<path>`` opens.
Choice: the record is written when the run ends, from its files, rather than streamed from
the Trainer, so it always matches the run directory.
"""

from __future__ import annotations

import math
from pathlib import Path

from .rundir import CONFIG, HISTORY, METRICS, PREDICTIONS, REPORT, read_config, read_history, read_metrics

EXPERIMENT = "fewlabel"
ARTIFACTS = (REPORT, METRICS, CONFIG, HISTORY, PREDICTIONS)


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir).resolve().parent / 'mlflow.db')}"


def log_run_to_mlflow(run_dir: str | Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Record ``run_dir`` as one MLflow run; returns the MLflow run id."""
    import mlflow
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir)
    uri = tracking_uri or default_tracking_uri(run_dir)
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, _artifact_location(uri))
    run = client.create_run(experiment_id, run_name=run_dir.name, tags={"fewlabel.run_dir": str(run_dir.resolve())})
    run_id = run.info.run_id
    config = read_config(run_dir)
    params = [Param(k, str(v)[:500]) for k, v in _flatten(config).items()]
    metrics = [Metric(k, float(v), 0, 0) for k, v in _scalars(read_metrics(run_dir)).items()]
    epoch_keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    for step, row in enumerate(read_history(run_dir)):
        metrics += [Metric(f"epoch/{k}", float(row[k]), 0, step) for k in epoch_keys if row.get(k)]
    client.log_batch(run_id, metrics=metrics, params=params)
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id)
    return run_id


def _flatten(config: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys (``method.name``, ``method.rounds``)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _scalars(metrics: dict) -> dict[str, float]:
    return {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _artifact_location(uri: str) -> str | None:
    """Artifacts of an SQLite store go beside the database, not into the working directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None

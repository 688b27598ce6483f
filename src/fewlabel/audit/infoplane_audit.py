"""``fewlabel audit infoplane``: several runs on one information plane (Cheng et al., Entropy
2019), from the points ``--track-infoplane`` recorded while they trained; ranks them
(model selection), per-class information against the class's training images (unbalanced
data), and epochs to a share of H(Y) for runs that differ only in pretraining (transfer).

A run trained without ``--track-infoplane`` is refused with how to record it (decision: its
saved model could be scored on its validation split afresh, but after keep-best or a refit
that model is not the one the tracked epochs describe, and a refit trained on those images).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from ..errors import FewlabelError
from ..fileio import atomic_write, write_json
from ..outputs import audit_folder, register_output_kind
from ..rundir import (
    REPORT,
    model_dir,
    read_config,
    read_history,
    read_infoplane,
    read_metrics,
    read_splits,
    write_infoplane_audit,
)
from .infoplane import ESTIMATORS, epochs_to_reach, small_split_warning

log = logging.getLogger("fewlabel.audit")
INFOPLANE_FILE, FIGURE_FILE = "infoplane.json", "infoplane.png"
INFOPLANE_OUTPUT = register_output_kind("information-plane audit", (INFOPLANE_FILE, FIGURE_FILE), (INFOPLANE_FILE,))
# transfer: epochs until I(T;Y) reaches this share of H(Y). Half: with ten classes a symmetric
# channel carries half of H(Y) at about 74% accuracy and 90% only at about 97%, out of reach
# with few labels (no run of bench/infoplane.py reached 90%).
REACH_FRACTION = 0.5
TRANSFER_IGNORES = ("pretrained", "seed", "seeds", "progress", "feature_cache", "workers")


def audit_infoplane(
    runs: list[str | Path],
    *,
    out: str | Path,
    rank: bool = False,
    per_class: bool = False,
    reach: float = REACH_FRACTION,
) -> dict:
    """Place ``runs`` on one plane; write ``out/infoplane.json`` and ``out/infoplane.png``
    (``reach``: the share of H(Y) whose epochs-to-reach compare runs differing in pretraining)."""
    if not runs:
        raise FewlabelError("Give at least one run directory.")
    if not 0 < reach <= 1:
        raise FewlabelError(f"reach must be a share of H(Y) in (0, 1], got {reach}")
    records = {str(run): run_record(Path(run)) for run in runs}
    _check_classes(records)
    result = {"runs": records, "reach_fraction": reach}
    if rank:
        result["rank"] = rank_runs(records)
    if per_class:
        result["per_class"] = {name: _per_class(record) for name, record in records.items()}
    result["transfer"] = transfer_groups(records, reach)
    png = base64.b64decode(_figure(result, per_class))
    with audit_folder(out, INFOPLANE_OUTPUT.name) as target:
        write_json(target / INFOPLANE_FILE, result)
        atomic_write(target / FIGURE_FILE, lambda tmp: Path(tmp).write_bytes(png))
    folder = Path(out)
    for name in records:
        _leave_comparison(Path(name), folder, result)
    return result


def _leave_comparison(run: Path, out: Path, result: dict) -> None:
    """Write the run's place in this comparison into it and re-render its report, which then
    shows the comparison in its information-plane section."""
    from ..report import write_report

    name = str(run)
    comparison: dict = {"out": str(out), "runs": len(result["runs"]), "rho": None, "p_value": None, "val_rho": None}
    if "rank" in result:
        rank = result["rank"]
        comparison["position"] = [row["run"] for row in rank["order"]].index(name) + 1
        comparison["rho"] = rank["I_TY_vs_test_accuracy"]["rho"]
        comparison["p_value"] = rank["I_TY_vs_test_accuracy"]["p_value"]
        comparison["val_rho"] = rank["val_accuracy_vs_test_accuracy"]["rho"]
    comparison["transfer"] = [
        {
            "fraction": group["reach_fraction"],
            "epochs_to_reach": group["runs"][name]["epochs_to_reach"],
            "others": ", ".join(
                f"{other}: {row['epochs_to_reach']}" for other, row in group["runs"].items() if other != name
            ),
        }
        for group in result["transfer"]
        if name in group["runs"]
    ]
    write_infoplane_audit(run, comparison)
    if (run / REPORT).is_file():
        write_report(run)


def run_record(run: Path) -> dict:
    """A run's trajectory (its tracked points, in the order they were recorded), its final point
    per estimator, its accuracies, classes and training counts."""
    from ..methods import load_network

    try:
        _, card = load_network(model_dir(run))
        metrics, config = read_metrics(run), read_config(run)
    except FewlabelError as exc:
        raise FewlabelError(f"'{run}' is not a finished run: {exc}") from None
    if card.task != "classification":
        raise FewlabelError(f"'{run}' is a {card.task} run; the information plane takes classifiers.")
    tracked = read_infoplane(run)
    if not tracked or not tracked["points"]:
        raise FewlabelError(
            f"'{run}' was trained without --track-infoplane (no infoplane.json with points): retrain it with "
            "--track-infoplane, which estimates the plane on the validation split after every epoch."
        )
    points = tracked["points"]
    record = {
        "class_names": card.class_names,
        "config": {k: v for k, v in config.items() if not isinstance(v, dict)} | {"method": config.get("method")},
        "tracking_seconds": tracked["seconds"],
        "train_seconds": metrics.get("train_seconds"),
        "test_accuracy": metrics.get("accuracy"),
        "val_accuracy": _last_val_accuracy(run),
        "train_counts": _train_counts(run, card.class_names),
        "points": points,
        "final": {e: p for e in ESTIMATORS if (p := next((q for q in reversed(points) if q["estimator"] == e), None))},
    }
    _warn_small(run, record)
    return record


def _last_val_accuracy(run: Path) -> float | None:
    """The validation accuracy of the run's last validated epoch (history.csv)."""
    scored = [row["val_acc"] for row in read_history(run) if row.get("val_acc")]
    return float(scored[-1]) if scored else None


def _train_counts(run: Path, class_names: list[str]) -> list[int] | None:
    """Training images per class (splits.json), in the model's class order."""
    summary = ((read_splits(run) or {}).get("summary") or {}).get("train") or {}
    counts = summary.get("class_counts")
    return [int(counts.get(name, 0)) for name in class_names] if counts else None


def _warn_small(run: Path, record: dict) -> None:
    """Warn, naming both numbers, when the validation split is small for the bins."""
    final = record["final"].get("binning")
    if final:
        warning = small_split_warning(final["images"], len(record["class_names"]), final["bins"], f" of '{run}'")
        if warning:
            record["warning"] = warning


def _check_classes(records: dict) -> None:
    """Refuse runs with different class sets, or binned with different codes, on one plane,
    naming them."""
    first_name, first = next(iter(records.items()))
    for name, record in records.items():
        if record["class_names"] != first["class_names"]:
            raise FewlabelError(
                f"Runs '{first_name}' and '{name}' have different classes ({', '.join(first['class_names'])} against "
                f"{', '.join(record['class_names'])}): one plane holds runs of one class set."
            )
        if _binning(record) != _binning(first):
            raise FewlabelError(
                f"Runs '{first_name}' and '{name}' were binned differently ({_binning(first)} against "
                f"{_binning(record)}): their binned estimates are not comparable; track them with the same "
                "--infoplane-code and --infoplane-bins."
            )


def _binning(record: dict) -> str:
    """How a run's binned points were coded (records before the ``top`` code were ``simplex``)."""
    final = record["final"].get("binning") or {}
    return f"{final.get('bins')} bins, {final.get('code', 'simplex')} code"


def _spearman(x: list, y: list) -> dict:
    """Spearman's rank correlation and its p-value (None when it is undefined)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return {"rho": None, "p_value": None, "runs": len(pairs)}
    rho, p_value = spearmanr(*zip(*pairs, strict=True))
    return {"rho": float(rho), "p_value": float(p_value), "runs": len(pairs)}


def rank_runs(records: dict) -> dict:
    """Runs ranked by final validation I(T;Y) (binning), and the rank correlation of that with
    test accuracy, next to validation accuracy's; and how the two estimators agree."""
    names = list(records)
    information = [records[n]["final"]["binning"]["I_TY"] for n in names]
    knn = [(records[n]["final"].get("knn") or {}).get("I_TY") for n in names]
    test = [records[n]["test_accuracy"] for n in names]
    val = [records[n]["val_accuracy"] for n in names]
    order = sorted(range(len(names)), key=lambda i: -information[i])
    return {
        "order": [
            {"run": names[i], "I_TY": information[i], "test_accuracy": test[i], "val_accuracy": val[i]} for i in order
        ],
        "I_TY_vs_test_accuracy": _spearman(information, test),
        "val_accuracy_vs_test_accuracy": _spearman(val, test),
        "knn_I_TY_vs_test_accuracy": _spearman(knn, test),
        "binning_vs_knn": _spearman(information, knn),
    }


def _per_class(record: dict) -> dict:
    """Per class: I(T;Y_c) after every tracked epoch (binning), the final value and the class's
    training images."""
    points = [p for p in record["points"] if p["estimator"] == "binning"]
    counts = record["train_counts"] or [None] * len(record["class_names"])
    return {
        name: {
            "trajectory": [p["per_class"][c] for p in points],
            "final": points[-1]["per_class"][c],
            "train_images": counts[c],
        }
        for c, name in enumerate(record["class_names"])
    }


def transfer_groups(records: dict, reach: float) -> list[dict]:
    """Runs whose configs differ only in pretraining (and seed): the epochs each needed for
    its validation I(T;Y) to reach ``reach`` x H(Y), counting every tracked epoch of every fit."""
    groups: dict[str, list[str]] = {}
    for name, record in records.items():
        key = repr(sorted((k, str(v)) for k, v in record["config"].items() if k not in TRANSFER_IGNORES))
        groups.setdefault(key, []).append(name)
    found = []
    for members in groups.values():
        if len({str(records[n]["config"].get("pretrained")) for n in members}) < 2:
            continue
        rows = {}
        for name in members:
            points = [p for p in records[name]["points"] if p["estimator"] == "binning"]
            rows[name] = {
                "pretrained": records[name]["config"].get("pretrained"),
                "epochs_to_reach": epochs_to_reach([p["I_TY"] for p in points], points[-1]["H_Y"], reach),
                "epochs": len(points),
            }
        found.append({"reach_fraction": reach, "runs": rows})
    return found


def _figure(result: dict, per_class: bool) -> str:
    from ..report.figures import infoplane_figure

    return infoplane_figure(result["runs"], result.get("per_class") if per_class else None)

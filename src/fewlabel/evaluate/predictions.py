"""predictions.csv: one row per evaluated image (id, true and predicted class, probabilities).

The report and later audits read it instead of re-running the model.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import write_text

FILE = "predictions.csv"


@dataclass
class Predictions:
    ids: list[str]
    probs: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.max(1).values

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(1)


def write_predictions(path: str | Path, predictions: Predictions) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "true", "predicted", "confidence", *[f"p:{c}" for c in predictions.class_names]])
    names = predictions.class_names
    for image_id, label, pred, conf, row in zip(
        predictions.ids,
        predictions.labels.tolist(),
        predictions.predicted.tolist(),
        predictions.confidence.tolist(),
        predictions.probs.tolist(),
        strict=True,
    ):
        writer.writerow([image_id, names[label], names[pred], f"{conf:.6f}", *[f"{p:.6f}" for p in row]])
    return write_text(path, buffer.getvalue())


def read_predictions(path: str | Path) -> Predictions:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    class_names = [h.removeprefix("p:") for h in header[4:]]
    index = {c: i for i, c in enumerate(class_names)}
    probs = torch.tensor([[float(v) for v in r[4:]] for r in body], dtype=torch.float64).reshape(-1, len(class_names))
    labels = torch.tensor([index[r[1]] for r in body], dtype=torch.long)
    return Predictions([r[0] for r in body], probs, labels, class_names)

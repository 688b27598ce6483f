"""Matplotlib figures of a run, returned as base64 PNG strings to embed in HTML."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _encode(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def confusion_figure(matrix: list[list[int]], class_names: list[str], normalise: bool) -> str:
    cm = np.asarray(matrix, dtype=float)
    shown = cm / np.clip(cm.sum(1, keepdims=True), 1, None) if normalise else cm
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shown, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalise else " (counts)"))
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{shown[i, j]:.2f}" if normalise else f"{int(cm[i, j])}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shown[i, j] > 0.6 * shown.max() else "black",
            )
    return _encode(fig)


def learning_curves_figure(rows: list[dict]) -> str | None:
    if not rows:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    step = np.arange(1, len(rows) + 1)
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        for split in ("train", "val"):
            values = [float(r[f"{split}_{key}"]) if r.get(f"{split}_{key}") else np.nan for r in rows]
            if not np.all(np.isnan(values)):
                ax.plot(step, values, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel(key)
        ax.legend()
    boundaries = [i + 0.5 for i in range(1, len(rows)) if rows[i]["phase"] != rows[i - 1]["phase"]]
    for ax in (ax_loss, ax_acc):
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":")
    fig.suptitle("learning curves (dotted line: next phase)")
    return _encode(fig)

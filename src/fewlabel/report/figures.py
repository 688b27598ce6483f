"""Matplotlib figures of a run, returned as base64 PNG strings to embed in HTML."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _encode(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def read_example_arrays(path: Path, names: tuple[str, ...]) -> list[dict]:
    """The examples a dense task stored in ``path`` (an .npz of ``<name>_<k>`` arrays), one dict
    per example with the ``names`` it holds; empty when the file is absent."""
    if not Path(path).is_file():
        return []
    with np.load(path, allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    count = sum(k.startswith(f"{names[0]}_") for k in arrays)
    return [{n: arrays[f"{n}_{k}"] for n in names if f"{n}_{k}" in arrays} for k in range(count)]


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
        if ax.lines:  # semi-supervised runs log no per-epoch accuracy
            ax.legend()
    boundaries = [i + 0.5 for i in range(1, len(rows)) if rows[i]["phase"] != rows[i - 1]["phase"]]
    for ax in (ax_loss, ax_acc):
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":")
    fig.suptitle("learning curves (dotted line: next phase)")
    return _encode(fig)


def reliability_figure(bins, ece: float) -> str:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.5, 5), height_ratios=[3, 1], sharex=True)
    centres = ((bins.edges[:-1] + bins.edges[1:]) / 2).numpy()
    width = float(bins.edges[1] - bins.edges[0])
    accuracy = np.nan_to_num(bins.accuracy.numpy())
    ax.bar(centres, accuracy, width=width * 0.95, color="#4c72b0", edgecolor="black", label="accuracy")
    gap = np.nan_to_num(bins.confidence.numpy()) - accuracy
    ax.bar(centres, gap, bottom=accuracy, width=width * 0.95, color="#dd8452", alpha=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(centres, bins.count.numpy(), width=width * 0.95, color="grey")
    ax_count.set_xlabel("confidence of the predicted class")
    ax_count.set_ylabel("images")
    return _encode(fig)


def roc_figure(probs, labels, class_names: list[str]) -> str:
    """One-vs-rest ROC curve per class present in ``labels``, with its AUROC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 4.5))
    y = labels.numpy()
    for c, name in enumerate(class_names):
        positives = y == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, c].numpy())
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} ({roc_auc_score(positives, probs[:, c].numpy()):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one vs rest (AUROC)")
    ax.legend(fontsize=7, loc="lower right")
    return _encode(fig)


def image_grid_figure(images: list, titles: list[str], overlays: list | None = None, columns: int = 4) -> str:
    """A grid of uint8 C x H x W images with titles; optional [0, 1] maps drawn over them."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        ax = axes.flat[i]
        array = image.permute(1, 2, 0).numpy()
        ax.imshow(array[..., 0] if array.shape[2] == 1 else array, cmap="gray" if array.shape[2] == 1 else None)
        if overlays is not None:
            ax.imshow(overlays[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _encode(fig)


def overlay_png(image, saliency) -> bytes:
    """A PNG of a uint8 C x H x W image with a [0, 1] map blended over it in the jet colormap."""
    from PIL import Image

    base = image.expand(3, -1, -1).permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    heat = matplotlib.colormaps["jet"](saliency.numpy())[..., :3].astype(np.float32)
    blended = (0.55 * base + 0.45 * heat).clip(0, 1)
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_strip_png(images: list, size: int = 56) -> str:
    """Base64 PNG of uint8 C x H x W images side by side, each resized to ``size`` pixels."""
    from PIL import Image

    strip = Image.new("RGB", (size * len(images), size), "white")
    for i, image in enumerate(images):
        array = image.expand(3, -1, -1).permute(1, 2, 0).numpy()
        strip.paste(Image.fromarray(array).resize((size, size), Image.Resampling.NEAREST), (i * size, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def uap_figure(perturbation: np.ndarray, examples: list[tuple], per_class: dict[str, float | None]) -> str:
    """A universal perturbation (C x H x W, stretched to the full grey range to be seen), evaluation
    images clean and perturbed with both predictions (``examples``: (clean, perturbed, clean
    class, perturbed class), images H x W x C in [0, 1]), and the fooling rate per class."""
    columns = max(2, len(examples))
    fig, axes = plt.subplots(3, columns, figsize=(2.2 * columns, 7.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    v = perturbation.transpose(1, 2, 0)
    spread = float(v.max() - v.min()) or 1.0
    axes[0, 0].imshow(((v - v.min()) / spread).squeeze(), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("perturbation (stretched)", fontsize=8)
    bars = axes[0, 1]
    bars.axis("on")
    names = [n for n, rate in per_class.items() if rate is not None]
    bars.barh(names, [per_class[n] for n in names], color="#c62828")
    bars.set_xlim(0, 1)
    bars.set_title("fooling rate per class", fontsize=8)
    bars.tick_params(labelsize=7)
    for i, (clean, perturbed, before, after) in enumerate(examples):
        for row, image, label in ((1, clean, f"clean: {before}"), (2, perturbed, f"perturbed: {after}")):
            axes[row, i].imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            axes[row, i].set_title(label, fontsize=8, color="#c62828" if row == 2 and before != after else "black")
    return _encode(fig)


def infoplane_figure(runs: dict[str, dict], per_class: dict[str, dict] | None = None) -> str:
    """The information plane: each run's binned trajectory, I(X;T) against I(T;Y), a dot per
    tracked epoch and a larger one at the end, H(Y) drawn as lines. With ``per_class``: the
    final per-class I(T;Y_c) against the class's training images across runs, and each run's
    per-class trajectories."""
    rows = 2 if per_class else 1
    columns = max(2, len(runs)) if per_class else 1
    fig = plt.figure(figsize=(4.2 * max(2, columns if per_class else 1), 4.0 * rows))
    grid = fig.add_gridspec(rows, columns)
    plane_ax = fig.add_subplot(grid[0, : columns // 2 if per_class else 1])
    h_y = 0.0
    for name, record in runs.items():
        points = [p for p in record["points"] if p["estimator"] == "binning"]
        x, y = [p["I_XT"] for p in points], [p["I_TY"] for p in points]
        (line,) = plane_ax.plot(x, y, "-o", markersize=3, linewidth=1, label=Path(name).name)
        plane_ax.plot(x[-1:], y[-1:], "o", markersize=8, color=line.get_color())
        h_y = max(h_y, points[-1]["H_Y"])
    plane_ax.axhline(h_y, color="gray", linestyle="--", linewidth=0.8)
    plane_ax.axvline(h_y, color="gray", linestyle="--", linewidth=0.8)
    plane_ax.set_xlabel("I(X;T) = H(T), bits")
    plane_ax.set_ylabel("I(T;Y), bits")
    plane_ax.set_title(f"information plane of the output (H(Y) = {h_y:.2f} bits)", fontsize=9)
    plane_ax.legend(fontsize=7)
    if per_class:
        _per_class_panels(fig, grid, columns, per_class)
    return _encode(fig)


def _per_class_panels(fig, grid, columns: int, per_class: dict[str, dict]) -> None:
    counts_ax = fig.add_subplot(grid[0, columns // 2 :])
    for name, classes in per_class.items():
        shown = [(c["train_images"], c["final"], label) for label, c in classes.items() if c["train_images"]]
        if shown:
            counts, values, labels = zip(*shown, strict=True)
            counts_ax.scatter(counts, values, s=14, label=Path(name).name)
            low = int(np.argmin(values))
            counts_ax.annotate(labels[low], (counts[low], values[low]), fontsize=7)
    counts_ax.set_xlabel("training images of the class")
    counts_ax.set_ylabel("final I(T;Y_c), bits")
    counts_ax.set_title("per-class information against labels", fontsize=9)
    for i, (name, classes) in enumerate(per_class.items()):
        ax = fig.add_subplot(grid[1, i])
        for label, c in classes.items():
            ax.plot(c["trajectory"], linewidth=1, label=label)
        ax.set_title(f"{Path(name).name}: I(T;Y_c) per epoch", fontsize=8)
        ax.set_xlabel("tracked epoch", fontsize=7)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6, ncol=2)

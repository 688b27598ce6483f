"""The nuclei part of report.html: scores, detections overlaid on evaluation images (true,
detected, matched), the proximity map next to its target, and F1 against the threshold.
Read from the run directory only (metrics.json, model.json, nuclei-examples.npz)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..report.figures import _encode, plt, read_example_arrays
from ..rundir import CARD, NUCLEI_EXAMPLES
from .matching import match_points

COLOURS = {"true": "#00c853", "matched": "#2962ff", "false positive": "#d50000", "missed": "#ff9100"}


def read_examples(run_dir: Path) -> list[dict]:
    """The examples of nuclei-examples.npz as one dict per image (empty when absent)."""
    return read_example_arrays(Path(run_dir) / NUCLEI_EXAMPLES, ("image", "map", "target", "true", "detected"))


def draw_detections(ax, image: np.ndarray, true: np.ndarray, detected: np.ndarray, radius: float) -> None:
    """An image with true centres (circles), matched detections (+), false positives (x) and
    missed true centres (orange circles)."""
    pairs, _ = match_points(detected, true, radius)
    matched, found = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
    ax.imshow(image)
    hit = np.array([i in found for i in range(len(true))], dtype=bool)
    good = np.array([i in matched for i in range(len(detected))], dtype=bool)
    style = {"s": 36, "linewidths": 1.2}
    ax.scatter(*true[hit].T, facecolors="none", edgecolors=COLOURS["true"], label="true", **style)
    ax.scatter(*true[~hit].T, facecolors="none", edgecolors=COLOURS["missed"], label="missed", **style)
    ax.scatter(*detected[good].T, marker="+", c=COLOURS["matched"], label="matched", **style)
    ax.scatter(*detected[~good].T, marker="x", c=COLOURS["false positive"], label="false positive", **style)
    ax.set_axis_off()


def overlays_figure(examples: list[dict], radius: float) -> str:
    fig, axes = plt.subplots(1, len(examples), figsize=(4 * len(examples), 4.3), squeeze=False)
    for ax, example in zip(axes[0], examples, strict=True):
        draw_detections(ax, example["image"], example["true"], example["detected"], radius)
    axes[0][0].legend(loc="upper left", fontsize=7, framealpha=0.8)
    return _encode(fig)


def maps_figure(example: dict) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].imshow(example["image"])
    axes[0].set_title("image")
    for ax, key, title in ((axes[1], "map", "predicted proximity"), (axes[2], "target", "target proximity")):
        ax.imshow(example[key].astype(np.float32), cmap="magma", vmin=0, vmax=1)
        ax.set_title(title)
    for ax in axes:
        ax.set_axis_off()
    return _encode(fig)


def threshold_figure(evaluation: list[dict], validation: list[dict] | None, chosen: float) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    thresholds = [r["threshold"] for r in evaluation]
    for key, colour in (("f1", "black"), ("precision", COLOURS["matched"]), ("recall", COLOURS["missed"])):
        ax.plot(thresholds, [r[key] for r in evaluation], color=colour, label=f"{key} (evaluation)")
    if validation:
        ax.plot([r["threshold"] for r in validation], [r["f1"] for r in validation], "k--", label="f1 (validation)")
    ax.axvline(chosen, color="grey", linewidth=0.8)
    ax.set_xlabel("threshold on the proximity map")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    return _encode(fig)


def _img(data: str, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def nuclei_section(run_dir: Path, metrics: dict) -> str:
    """The HTML section of a nuclei run."""
    from ..models.files import ModelCard

    card_path = Path(run_dir) / CARD
    extras = ModelCard.from_file(card_path).extras if card_path.is_file() else {}
    radius = float(metrics.get("match_radius", extras.get("match_radius", 6.0)))
    error = metrics.get("localization_error")
    rows = [
        ("F1", f"{metrics.get('f1', float('nan')):.3f}"),
        ("precision / recall", f"{metrics.get('precision', 0):.3f} / {metrics.get('recall', 0):.3f}"),
        ("mean localisation error of matches", f"{error:.2f} px" if isinstance(error, (int, float)) else "–"),
        (
            "true positives / false positives / missed",
            f"{metrics.get('tp')} / {metrics.get('fp')} / {metrics.get('fn')}",
        ),
        ("matching radius", f"{radius:g} px (one-to-one, Hungarian)"),
        ("threshold", f"{metrics.get('threshold')} (chosen on {extras.get('threshold_chosen_on', 'validation')})"),
    ]
    if metrics.get("megapixels_per_second"):
        rows.append(("detection throughput", f"{metrics['megapixels_per_second']:.2f} megapixels/s"))
    parts = ["<h2>Nucleus detection</h2><table>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table>")
    examples = read_examples(run_dir)
    if examples:
        parts.append("<h3>Detections on evaluation images</h3>")
        parts.append(
            "<p>Circles: true centres (green found, orange missed); +: matched detections; x: false positives.</p>"
        )
        parts.append(_img(overlays_figure(examples, radius), "detections"))
        parts.append("<h3>Proximity map and its target</h3>" + _img(maps_figure(examples[0]), "proximity maps"))
    if metrics.get("f1_by_threshold"):
        figure = threshold_figure(
            metrics["f1_by_threshold"], extras.get("threshold_curve"), metrics.get("threshold", 0.5)
        )
        parts.append("<h3>F1 against the threshold</h3>" + _img(figure, "F1 by threshold"))
    return "\n".join(parts)


def transfer_matrix_figure(record: dict) -> str:
    matrix = np.asarray(record["f1_matrix"]["f1"], dtype=float)
    names = record["f1_matrix"]["trained_on"]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 1.2 * len(names) + 1.5))
    ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="white" if matrix[i, j] < 0.6 else "black"
            )
    ax.set_title("F1 at the matching radius")
    return _encode(fig)


def transfer_bars_figure(record: dict) -> str:
    """Per target and source: the source's model as is, fine-tuned on the few target images,
    trained on a mix; the target's few images alone and its own full model as lines."""
    bars = [(y, x, r) for y, t in record["targets"].items() for x, r in t["from"].items()]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(bars)), 3.8))
    width = 0.27
    for k, (key, colour) in enumerate((("as_is", "#9e9e9e"), ("fine_tuned", "#2962ff"), ("mixed", "#ff9100"))):
        ax.bar(np.arange(len(bars)) + (k - 1) * width, [r[key] for _, _, r in bars], width, color=colour,
               label=key.replace("_", " "))  # fmt: skip
    for i, (y, _, _) in enumerate(bars):
        target = record["targets"][y]
        ax.hlines(
            target["alone"], i - 0.45, i + 0.45, colors="black", linestyles="--", label="few alone" if i == 0 else None
        )
        ax.hlines(
            target["same_style"], i - 0.45, i + 0.45, colors="#00c853", label="same style, full" if i == 0 else None
        )
    ax.set_xticks(range(len(bars)), [f"{x} → {y}" for y, x, _ in bars], rotation=20, ha="right")
    ax.set_ylabel("F1 on the target's test images")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2)
    return _encode(fig)


def transfer_report(record: dict) -> str:
    """A self-contained HTML page of a transfer experiment."""
    a = record["answers"]
    rows = [
        ("same style best (targets)", ", ".join(a["same_style_best_for"]) or "none"),
        ("same style minus other styles, mean F1", f"{a['same_style_minus_other_mean']:+.3f}"),
        (f"fine-tuned on {record['few']} target images minus those alone", f"{a['fine_tuned_minus_alone_mean']:+.3f}"),
        ("fine-tuned minus the other style's model as is", f"{a['fine_tuned_minus_as_is_mean']:+.3f}"),
        ("mixed minus target images alone", f"{a['mixed_minus_alone_mean']:+.3f}"),
        ("mixed minus fine-tuned", f"{a['mixed_minus_fine_tuned_mean']:+.3f}"),
        ("pairs where mixing beats the few images alone", f"{a['mixing_helps_over_alone']} of {a['pairs']}"),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    data = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in record["datasets"].items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>nuclei transfer</title></head><body>"
        "<h1>Nucleus detection across styles</h1>"
        f"<ul>{data}</ul><p>Few-shot fits: {record['few']} target training images and {record['few_val']} for the "
        f"threshold (seed {record['seed']}), {record['few_crops_per_image']} crops per image per epoch.</p>"
        f"<table>{table}</table>"
        f"<h2>Train on X, test on Y</h2>{_img(transfer_matrix_figure(record), 'F1 matrix')}"
        f"<h2>A few target images</h2>{_img(transfer_bars_figure(record), 'fine-tuning and mixing')}"
        "</body></html>"
    )

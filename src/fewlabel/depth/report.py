"""The depth part of report.html: the errors (absolute and median-scaled, against the parent
run when fine-tuned) and, for a few evaluation images, the image, true depth, predicted depth
(and the parent's) and the relative error map. Read from the run directory only
(metrics.json, depth-examples.npz)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..report.figures import _encode, plt, read_example_arrays
from ..rundir import DEPTH_EXAMPLES
from .metrics import ERROR_KEYS, SCALE_KEYS

LABELS = {"abs_rel": "abs. relative error", "rmse": "RMSE", "log_rmse": "log RMSE",
          "delta_1": "δ < 1.25", "delta_2": "δ < 1.25²", "delta_3": "δ < 1.25³",
          "scale_median": "scaling factor, median", "scale_spread": "scaling factor, sd / median"}  # fmt: skip


def read_examples(run_dir: Path) -> list[dict]:
    return read_example_arrays(Path(run_dir) / DEPTH_EXAMPLES, ("image", "true", "predicted", "parent"))


def examples_figure(examples: list[dict], units: str) -> str:
    """One row per image: image, true depth, predicted depth, (parent's,) relative error."""
    with_parent = "parent" in examples[0]
    columns = ["image", "true", "predicted"] + (["parent"] if with_parent else []) + ["error"]
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(3 * len(columns), 3 * len(examples)), squeeze=False)
    for row, example in zip(axes, examples, strict=True):
        true = example["true"]
        low, high = np.nanpercentile(true, [1, 99])
        for ax, column in zip(row, columns, strict=True):
            if column == "image":
                ax.imshow(example["image"])
            elif column == "error":
                shown = ax.imshow(np.abs(example["predicted"] - true) / true, cmap="inferno", vmin=0, vmax=0.5)
                fig.colorbar(shown, ax=ax, fraction=0.046, label="|pred - true| / true")
            else:
                shown = ax.imshow(example[column], cmap="viridis_r", vmin=low, vmax=high)
                fig.colorbar(shown, ax=ax, fraction=0.046, label=units)
            ax.set_title({"true": "true depth", "predicted": "predicted", "parent": "parent run"}.get(column, column))
            ax.set_axis_off()
    return _encode(fig)


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def scores_table(metrics: dict) -> str:
    """This run's errors, both variants, beside its parent's; the median-scaled part ends with
    the scaling factors (how far off the absolute scale is)."""
    parent = metrics.get("parent")
    head = "<tr><th></th><th>this model</th>" + ("<th>parent run</th>" if parent else "") + "</tr>"
    rows = [head]
    for variant, title, keys in (
        ("absolute", "absolute", ERROR_KEYS),
        ("median_scaled", "after median scaling", ERROR_KEYS + SCALE_KEYS),
    ):
        rows.append(f'<tr><th colspan="3">{title}</th></tr>')
        for key in keys:
            cells = "".join(f"<td>{_cell(_figure(m, variant, key))}</td>" for m in (metrics, parent) if m)
            rows.append(f"<tr><th>{html.escape(LABELS[key])}</th>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _figure(metrics: dict, variant: str, key: str):
    return metrics.get(key) if variant == "absolute" else metrics.get("median_scaled", {}).get(key)


def depth_section(run_dir: Path, metrics: dict) -> str:
    """The HTML section of a depth run."""
    units = html.escape(str(metrics.get("units", "mm")))
    parts = ["<h2>Depth</h2>", f"<p>Errors over {metrics.get('images_scored', '?')} evaluation images "
             f"(mean of per-image errors; depth in {units}; median scaling multiplies each prediction by "
             "median(true) / median(predicted)).</p>", scores_table(metrics)]  # fmt: skip
    if metrics.get("parent"):
        parts.append(f"<p>Parent run: {html.escape(str(metrics['parent'].get('run')))}</p>")
    examples = read_examples(run_dir)
    if examples:
        parts.append("<h3>Evaluation images</h3>")
        parts.append(f'<img alt="depth examples" src="data:image/png;base64,{examples_figure(examples, units)}">')
    return "\n".join(parts)

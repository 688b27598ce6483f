"""Nucleus detection (issue 17): synthetic microscopy in the three styles, one detector per
style, the transfer experiment, detection throughput, and the immunohistochemistry photo
scikit-image ships.

* held-out F1 at radius 6 on each style's test tiles (goal >= 0.9), from the transfer's
  train-on-X runs (defaults of ``fewlabel nuclei train``: EfficientNet-Lite0 with offline
  ImageNet weights, full fine-tuning of 128-pixel crops, lr 1e-3);
* the 3x3 train-on-X / test-on-Y F1 matrix; ``--few`` target images fine-tuning each other
  style's detector vs training on them alone vs the other style's detector as is; training on
  a mix (see :mod:`fewlabel.nuclei.transfer`);
* throughput in megapixels per second of ``detect`` (map, tiles, peaks) on a 1024 x 1024 tile;
* ``skimage.data.immunohistochemistry()`` with the ihc-dab detector (trained on synthetic
  tiles only): the count, an overlay (docs/nuclei-ihc.png), and agreement with a classical
  detector (haematoxylin channel by colour deconvolution, smoothed, local maxima), which is a
  sanity check, not ground truth.

    python bench/nuclei.py [--n 100] [--epochs 10] [--few 5] [--seed 0] [--out runs/bench-nuclei]

Seed s draws its own tiles (seed 100 s + style), few target images and training seeds; a seed
other than 0 writes results/nuclei_seed<s>.json and leaves the README's overlay alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _common import command_line, save
from fewlabel import api
from fewlabel.nuclei.matching import detection_scores
from fewlabel.nuclei.options import STYLE_NAMES
from fewlabel.nuclei.synth import STYLES, render_tile, write_synthetic
from fewlabel.nuclei.workflows import overlay
from fewlabel.rundir import read_metrics

TRANSFER_KEYS = ("f1_matrix", "targets", "answers", "few", "few_val", "few_crops_per_image")
DOCS = Path(__file__).resolve().parents[1] / "docs"


def classical_centres(image: np.ndarray, min_distance: int = 5) -> np.ndarray:
    """Haematoxylin by colour deconvolution, Gaussian-smoothed, local maxima above Otsu."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu

    haematoxylin = gaussian_filter(rgb2hed(image)[..., 0], 2.5)
    peaks = peak_local_max(haematoxylin, min_distance=min_distance, threshold_abs=threshold_otsu(haematoxylin))
    return peaks[:, ::-1].astype(np.float32)


def throughput(detector, side: int = 1024, tiles=(256, 384, 512), overlap: int = 64, repeats: int = 3) -> dict:
    """Megapixels per second of the proximity map and the peaks on one ``side`` square tile, whole
    and cut into tiles of each size (one per forward pass, the CPU default), and how far the tiled
    map and its detections are from the whole image's (seams)."""
    from fewlabel.nuclei.inference import predict_proximity
    from fewlabel.nuclei.peaks import find_peaks

    image, _ = render_tile(STYLES["breast-he"], side, np.random.default_rng(7))
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    settings = detector.settings
    model, mean, std = detector.model, detector.card.mean, detector.card.std

    def timed(tile: int, shared: int) -> tuple[float, np.ndarray, np.ndarray]:
        predict_proximity(model, tensor[:, :256, :256], mean, std, tile, shared)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            proximity = predict_proximity(model, tensor, mean, std, tile, shared)
            points, _ = find_peaks(proximity, settings.threshold, settings.min_distance)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds), proximity, points

    whole_seconds, whole_map, whole_points = timed(side, 0)
    whole = {"seconds_median": whole_seconds, "megapixels_per_second": side * side / 1e6 / whole_seconds}
    result = {"image": f"{side}x{side}", "threads": torch.get_num_threads(), "overlap": overlap, "whole": whole}
    for tile in tiles:
        seconds, proximity, points = timed(tile, overlap)
        agreement, _ = detection_scores([points], [whole_points], 1.5)
        result[f"tile_{tile}"] = {
            "seconds_median": seconds, "megapixels_per_second": side * side / 1e6 / seconds,
            "max_map_difference_to_whole": float(np.abs(proximity - whole_map).max()),
            "detections_f1_to_whole_at_1.5px": agreement["f1"],
        }  # fmt: skip
    return result


def ihc_photo(detector, other_detectors: dict, write_overlay: bool = True) -> dict:
    from skimage.data import immunohistochemistry

    image = immunohistochemistry()
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    points, _ = detector.detect(tensor)
    if write_overlay:
        DOCS.mkdir(exist_ok=True)
        overlay(image, points, 4.0).save(DOCS / "nuclei-ihc.png")
    classical = classical_centres(image)
    agreement, _ = detection_scores([points], [classical], 6.0)
    counts = {name: len(d.detect(tensor)[0]) for name, d in other_detectors.items()}
    return {"detections": len(points), "classical_detections": len(classical), "overlay": "docs/nuclei-ihc.png",
            "agreement_with_classical_at_radius_6": {k: agreement[k] for k in ("precision", "recall", "f1")},
            "detections_by_each_style_model": counts}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="tiles per style (a quarter for testing)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--few", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-nuclei"))
    args = parser.parse_args()
    folders = []
    for index, style in enumerate(STYLE_NAMES):
        folder = args.out / "data" / style
        if not (folder / "style.json").is_file():
            write_synthetic(folder, style, args.n, seed=100 * args.seed + index, size=args.size)
        folders.append(str(folder))
    started = time.perf_counter()
    options = {"epochs": args.epochs, "batch_size": 16, "progress": False}
    record = api.nuclei_transfer(folders, args.out / "transfer", few=args.few, few_val=1, seed=args.seed, **options)
    per_style = {}
    for style in STYLE_NAMES:
        metrics = read_metrics(args.out / "transfer" / f"on-{style}")
        keys = ("f1", "precision", "recall", "localization_error", "threshold", "n_nuclei", "train_seconds")
        per_style[style] = {k: metrics.get(k) for k in keys}
    detectors = {style: api.load(args.out / "transfer" / f"on-{style}") for style in STYLE_NAMES}
    result = {
        "command": command_line("nuclei.py", args),
        "data": {"tiles_per_style": args.n, "tile": args.size, "test_share": 0.25, "seed": args.seed},
        "options": options | {"defaults": "fewlabel nuclei train (efficientnet_lite0 imagenet, full, 128 px, lr 1e-3)"},
        "held_out_f1_radius_6": per_style,
        "goal_f1_at_least_0.9": all(v["f1"] >= 0.9 for v in per_style.values()),
        "transfer": {k: record[k] for k in TRANSFER_KEYS},
        "throughput": throughput(detectors["breast-he"]),
        "ihc_photo": ihc_photo(detectors["ihc-dab"], detectors, write_overlay=args.seed == 0),
        "seconds": time.perf_counter() - started,
    }
    save("nuclei" if args.seed == 0 else f"nuclei_seed{args.seed}", result)


if __name__ == "__main__":
    main()

"""Linear probe with the feature cache vs recomputing backbone features every epoch.

Both go through ``fewlabel.train``: ``linear-probe`` (features computed once, head trained on
the cache) against ``partial:0`` with no augmentation, which trains the same head over the
frozen backbone but runs every image through it each epoch. Same model, data, epochs, seeds.
Writes bench/results/feature_cache.json: wall-time ratio (goal >= 5) and accuracy difference
(goal <= 0.5 points).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import fewlabel
from _common import save


def run(strategy: str, seed: int, args, out: str) -> tuple[float, float, float]:
    started = time.perf_counter()
    result = fewlabel.train(
        args.data,
        out,
        strategy=strategy,
        model=args.model,
        pretrained="imagenet",
        img_size=args.img_size,
        labels_per_class=args.labels_per_class,
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.lr,
        seed=seed,
        augment="none",
        feature_cache="memory",
        progress=False,
        overwrite=True,
    )
    return result.metrics["train_seconds"], result.metrics["accuracy"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist-small")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--labels-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            cached = run("linear-probe", seed, args, f"{tmp}/cached")
            recomputed = run("partial:0", seed, args, f"{tmp}/recomputed")
            rows.append(
                {
                    "seed": seed,
                    "cached_train_s": cached[0],
                    "cached_acc": cached[1],
                    "recomputed_train_s": recomputed[0],
                    "recomputed_acc": recomputed[1],
                    "time_ratio": recomputed[0] / cached[0],
                }
            )
            print(rows[-1])
    ratios = [r["time_ratio"] for r in rows]
    diffs = [100 * (r["cached_acc"] - r["recomputed_acc"]) for r in rows]
    save(
        "feature_cache",
        {
            "config": vars(args),
            "per_seed": rows,
            "time_ratio_mean": statistics.mean(ratios),
            "time_ratio_min": min(ratios),
            "accuracy_diff_points_mean": statistics.mean(diffs),
            "accuracy_diff_points_max_abs": max(abs(d) for d in diffs),
            "goals": {"time_ratio": ">= 5", "accuracy_diff_points": "<= 0.5"},
        },
    )


if __name__ == "__main__":
    main()

"""The CUDA path, checked on a GPU machine against the CPU on the same machine.

Runs on ``fashion-mnist-small`` (shipped): freeze-unfreeze and linear-probe with
``accelerator auto`` (CUDA, 16-mixed) and ``cpu`` (32-true), a two-stage recipe on CUDA,
reloaded-model predictions on CUDA against the run's own metrics, and the training
throughput of ``full`` at 224 px on CUDA. Writes <out>/cuda_check.json (default
bench/results/). Exits non-zero when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import fewlabel
from _common import machine
from fewlabel.data.sources import load_data
from fewlabel.stepwise.recipe import Recipe, run_recipe

COMMON = dict(model="efficientnet_lite0", img_size=64, labels_per_class=50, seed=0, progress=False)


def timed_train(data: str, out: Path, **options) -> dict:
    started = time.perf_counter()
    result = fewlabel.train(data, out, **(COMMON | options))
    metrics = {k: result.metrics[k] for k in ("accuracy", "macro_f1", "nll", "train_images_per_second")}
    return metrics | {"wall_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    results: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for accelerator in ("auto", "cpu"):
            for strategy, extra in (("freeze-unfreeze", dict(head_epochs=20, epochs=3)), ("linear-probe", {})):
                key = f"{strategy}-{accelerator}"
                results[key] = timed_train(
                    "fashion-mnist-small", tmp / key, strategy=strategy, accelerator=accelerator, **extra
                )
                print(key, results[key], flush=True)
        run = tmp / "freeze-unfreeze-auto"
        predictor = fewlabel.load(run)
        test = load_data("fashion-mnist-small:test", 64)
        reloaded = predictor.metrics(test)
        results["reloaded_on"] = str(predictor.device)
        results["reloaded_accuracy"] = reloaded["accuracy"]
        results["run_accuracy"] = json.loads((run / "metrics.json").read_text())["accuracy"]
        recipe = Recipe(
            name="cuda",
            defaults=dict(model="efficientnet_lite0", img_size=64, head_epochs=10, epochs=2, progress=False),
            stages=[
                {
                    "name": "render",
                    "build": {"method": "synthetic", "generator": "fewlabel.stepwise.synthetic:fashion_silhouettes"},
                },
                {"name": "target", "data": "fashion-mnist-small", "labels_per_class": 20},
            ],
        )
        results["recipe"] = run_recipe(recipe, tmp / "recipe", compare="direct")["comparison"]["metrics"]["accuracy"]
        results["full-224-cuda"] = timed_train(
            "fashion-mnist-small", tmp / "full224", strategy="full", img_size=224, labels_per_class=100, epochs=2
        )
        print("full-224", results["full-224-cuda"], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "cuda_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

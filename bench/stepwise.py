"""Stepwise fine-tuning on Fashion-MNIST: ImageNet -> target directly against ImageNet ->
intermediate -> target, with the same total epoch budget, over seeds.

Protocol: K labels per class drawn (seeded) from the 60,000 training images are the target;
test accuracy on the 10,000 test images. EfficientNet-Lite0 (offline ImageNet weights), 64 px,
freeze-unfreeze. Direct: head on cached features, then ``--epochs`` whole-network epochs on
the target. Stepwise: an intermediate stage of ``--intermediate-epochs`` epochs, then the
target with the remaining epochs, so both fine-tune the network for the same number of epochs
(the comparison run of ``fewlabel run --compare direct``). Intermediate setups:
``clusters-<descriptor>-k<K>`` (pseudo-classes of a seeded ``--pool-size`` draw from the
training images, labels unused) and ``synthetic`` (the shipped garment silhouettes); the
control ``direct-target-epochs`` fine-tunes directly for only the target stage's epochs.
Needs the full dataset (``apt-get install dataset-fashion-mnist``). Writes
bench/results/<name>.json: per-seed accuracy of every setup and the paired difference
(stepwise minus direct) with its 95% interval.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import save
from fewlabel.stepwise.recipe import Recipe, paired_comparison, run_recipe


def intermediate_stage(setup: str, pool_size: int, epochs: int) -> dict:
    if setup == "synthetic":
        build = {"method": "synthetic", "generator": "fewlabel.stepwise.synthetic:fashion_silhouettes"}
        return {"name": "intermediate", "build": build | {"per_class": 300}, "epochs": epochs}
    _, descriptor, k = setup.split("-")
    build = {"method": "clusters", "pool_size": pool_size, "k": int(k.removeprefix("k")), "descriptor": descriptor}
    return {"name": "intermediate", "build": build, "epochs": epochs}


def run_setup(setup: str, labels: int, args, out: str) -> dict[int, dict]:
    defaults = {
        "model": "efficientnet_lite0",
        "img_size": args.img_size,
        "strategy": "freeze-unfreeze",
        "head_epochs": args.head_epochs,
        "progress": False,
    }
    target = {"name": "target", "data": args.data, "labels_per_class": labels}
    if setup == "direct":
        stages = [target | {"epochs": args.epochs}]
    elif setup == "direct-target-epochs":  # control: is a gain only the target's shorter fine-tuning?
        stages = [target | {"epochs": args.epochs - args.intermediate_epochs}]
    else:
        stages = [
            intermediate_stage(setup, args.pool_size, args.intermediate_epochs),
            target | {"epochs": args.epochs - args.intermediate_epochs},
        ]
    recipe = Recipe(name=f"{setup}-{labels}", defaults=defaults, seeds=args.seeds, stages=stages)
    started = time.perf_counter()
    summary = run_recipe(recipe, f"{out}/{setup}-{labels}")
    seconds = time.perf_counter() - started
    print(f"{setup} {labels}/class: {summary['stages'][-1]['per_seed']} ({seconds:.0f} s)", flush=True)
    return {int(s): m for s, m in summary["stages"][-1]["per_seed"].items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--labels", default="10,50", help="labels per class, comma-separated")
    parser.add_argument(
        "--setups",
        default="direct-target-epochs,clusters-handcrafted-k10,clusters-handcrafted-k20,clusters-embedding-k20,synthetic",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=6, help="whole-network epochs in total")
    parser.add_argument("--intermediate-epochs", type=int, default=3)
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--name", default="stepwise")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for labels in [int(x) for x in args.labels.split(",")]:
            direct, direct_seconds = run_setup("direct", labels, args, tmp)
            rows = {"direct": {"per_seed": direct, "seconds": direct_seconds}}
            for setup in args.setups.split(","):
                stepwise, seconds = run_setup(setup, labels, args, tmp)
                comparison = paired_comparison(stepwise, direct)
                rows[setup] = {
                    "per_seed": stepwise,
                    "seconds": seconds,
                    "vs_direct": comparison["metrics"],
                    "statement": comparison["statement"],
                }
                print(comparison["statement"], flush=True)
            results[f"{labels}_per_class"] = rows
    protocol = {k: v for k, v in vars(args).items() if k != "name"}
    save(args.name, {"protocol": protocol, "results": results})


if __name__ == "__main__":
    main()

"""Semi-supervised methods on Fashion-MNIST: supervised, pseudo-label, FixMatch and tri-net,
same backbone and budget, over seeds.

``--protocol cpu`` (default: the grid a 2-core CPU runs) or ``paper`` (Chen et al.'s schedule
for every method's budget; 20% of the labelled images held out, on which tri-net chooses its
thresholds). Protocol: K labels per class drawn (seeded) from the 60,000 training images; the pool is the
rest of the training images (``--pool-size``: a seeded random subset of it); test accuracy on
the 10,000 test images. EfficientNet-Lite0 (offline ImageNet weights) at ``--img-size``. Every
method first trains ``--epochs`` epochs on the labelled images, then ``--rounds`` x
``--round-epochs`` epochs (see fewlabel.semi.methods for what an epoch is for each method).
Pseudo-labels are audited against the hidden training labels (``audit``); each method gets the
options above that it takes (supervised has no pool). Writes bench/results/<name>.json
after every run (a cut-short benchmark keeps what finished): per-seed accuracy, wall time,
per-round pseudo-label counts and accuracy, mean, sd and 95% interval per method.
Reference measured outside this project on this machine: a 5-layer CNN trained on 100 labels
per class alone reaches about 84%.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import yaml

import fewlabel
from _common import save
from fewlabel.evaluate.metrics import mean_sd_ci
from fewlabel.methods import get_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--labels", default="10,100", help="labels per class, comma-separated")
    parser.add_argument("--methods", default="supervised,pseudo-label,fixmatch,trinet")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool-size", type=int, default=None, help="random subset of the pool (default all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--protocol", choices=["cpu", "paper"], default="cpu", help="method defaults (see fewlabel.semi.options)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--round-epochs", type=int, default=None)
    parser.add_argument("--sample-first", type=int, default=None)
    parser.add_argument("--sample-growth", type=float, default=None)
    parser.add_argument(
        "--val-split", type=float, default=None, help="labelled share held out (default 0.2 with paper: thresholds)"
    )
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--semi", action="append", default=[], metavar="KEY=VALUE", help="any other method option, e.g. smear_std=0.1"
    )
    parser.add_argument("--name", default="semi")
    parser.add_argument("--out", default=None, help="folder of the JSON (default bench/results)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    given = {
        "pool_size": args.pool_size,
        "rounds": args.rounds,
        "round_epochs": args.round_epochs,
        "sample_first": args.sample_first,
        "sample_growth": args.sample_growth,
    }
    semi = {"protocol": args.protocol} | {k: v for k, v in given.items() if v is not None}
    semi |= dict(_option(text) for text in args.semi)
    val_split = args.val_split if args.val_split is not None else (0.2 if args.protocol == "paper" else None)
    protocol = {k: v for k, v in vars(args).items() if k not in ("name", "out")}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for labels in [int(x) for x in args.labels.split(",")]:
            for method in args.methods.split(","):
                rows = []
                for seed in seeds:
                    started = time.perf_counter()
                    own = get_method(method).options.model_fields
                    section = {"name": method, "audit": True} | {k: v for k, v in semi.items() if k in own}
                    run = fewlabel.train(
                        args.data,
                        f"{tmp}/{method}-{labels}-{seed}",
                        method=section,
                        model="efficientnet_lite0",
                        img_size=args.img_size,
                        labels_per_class=labels,
                        val_split=val_split,
                        epochs=args.epochs,
                        seed=seed,
                        workers=args.workers,
                        progress=False,
                    )
                    logged = json.loads((run.run_dir / "rounds.json").read_text())
                    rows.append(
                        {
                            "seed": seed,
                            "accuracy": run.metrics["accuracy"],
                            "macro_f1": run.metrics["macro_f1"],
                            "wall_seconds": time.perf_counter() - started,
                            "train_images_per_second": run.metrics["train_images_per_second"],
                            "rounds": logged["rounds"],
                            "evaluations": logged["evaluations"],
                        }
                    )
                    print(f"{method} {labels}/class seed {seed}: {rows[-1]['accuracy']:.4f}", flush=True)
                    summary = mean_sd_ci([r["accuracy"] for r in rows])
                    results.setdefault(f"{labels}_per_class", {})[method] = {"accuracy": summary, "runs": rows}
                    _save(args, protocol, results)


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def _save(args, protocol: dict, results: dict) -> None:
    if args.out:
        path = Path(args.out) / f"{args.name}.json"
        path.write_text(json.dumps({"benchmark": args.name, "protocol": protocol, "results": results}, indent=2))
    else:
        save(args.name, {"protocol": protocol, "results": results})


if __name__ == "__main__":
    main()

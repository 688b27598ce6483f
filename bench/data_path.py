"""The data path of a training step on this machine, and training speed against another tree.

1. Share of a step: for each augmentation preset, ``--steps`` training steps of
   ``--model`` at ``--img-size`` on ``--data``, timing apart the loader (gathering a uint8
   batch), the transform (augmenting it where the step runs) and the step itself
   (forward, backward, optimiser). Goal: the loader and transform together at most 10% of
   the step on the CPU.
2. With ``--compare-src DIR`` (e.g. ``src`` of a checkout of the commit before the device data
   path), ``fewlabel.train`` runs of a supervised fit and a FixMatch fit from both trees,
   interleaved ``--repeats`` times, and the ratio of their training images per second.

Writes bench/results/data_path.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from _common import save
from fewlabel.data.augment import BatchTransform
from fewlabel.data.datasets import EpochSampler, ImageBatches
from fewlabel.data.sources import load_data
from fewlabel.models import create_backbone

RUNS = {
    "supervised full, standard augmentation": {"strategy": "full", "augment": "standard"},
    "fixmatch (weak + RandAugment views)": {
        "method": "fixmatch",
        "labels_per_class": 20,
        "rounds": 1,
        "round_epochs": 1,
        "pool_size": 600,
        "head_epochs": 0,
        "augment": "light",
    },
}


def endless(loader: DataLoader, sampler: EpochSampler):
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def step_shares(args, preset: str) -> dict:
    images = load_data(args.data, args.img_size, progress=False)
    torch.manual_seed(0)
    model, info = create_backbone(args.model, "imagenet", images.num_classes, drop_rate=0.2)
    transform = BatchTransform(preset, args.img_size, info.mean, info.std)
    dataset = ImageBatches(images.images, (images.labels,), transform, seed=0)
    sampler = EpochSampler(images.labels, 0, keyed=True)
    loader = DataLoader(dataset, args.batch_size, sampler=sampler, drop_last=True, collate_fn=ImageBatches.collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = {"loader": 0.0, "transform": 0.0, "step": 0.0}
    batches = endless(loader, sampler)
    for step in range(args.steps + 2):  # the first two warm up
        started = time.perf_counter()
        raw, labels = next(batches)
        fetched = time.perf_counter()
        x = raw.apply()
        transformed = time.perf_counter()
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        if step >= 2:
            times["loader"] += fetched - started
            times["transform"] += transformed - fetched
            times["step"] += done - transformed
    total = sum(times.values())
    return {
        "ms_per_batch": {k: 1000 * v / args.steps for k, v in times.items()},
        "data_share": (times["loader"] + times["transform"]) / total,
    }


RUN_SNIPPET = """
import json, sys, fewlabel
result = fewlabel.train(sys.argv[1], sys.argv[2], progress=False, overwrite=True, **json.loads(sys.argv[3]))
print(json.dumps(result.metrics["train_images_per_second"]))
"""


def images_per_second(args, options: dict, src: str | None, out: str) -> float:
    env = os.environ | ({"PYTHONPATH": src} if src else {})
    options = {"model": args.model, "img_size": args.img_size, "epochs": args.epochs, "batch_size": args.batch_size} | (
        options
    )
    command = [sys.executable, "-c", RUN_SNIPPET, args.data, out, json.dumps(options)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in RUNS.items():
            values = {"this tree": [], "compared tree": []}
            for repeat in range(args.repeats):
                order = ("this tree", "compared tree") if repeat % 2 == 0 else ("compared tree", "this tree")
                for tree in order:
                    src = here if tree == "this tree" else args.compare_src
                    values[tree].append(images_per_second(args, options, src, f"{tmp}/{tree}-{repeat}"))
                    print(f"{name} [{tree}]: {values[tree][-1]:.1f} img/s", flush=True)
            ratio = statistics.median(values["this tree"]) / statistics.median(values["compared tree"])
            results[name] = {"images_per_second": values, "ratio_of_medians": ratio, "options": options}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist-small")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-src", default=None, help="src/ of another tree to compare training speed with")
    args = parser.parse_args()
    shares = {preset: step_shares(args, preset) for preset in ("light", "standard", "randaugment")}
    for preset, share in shares.items():
        print(f"{preset}: data path {100 * share['data_share']:.1f}% of a step {share['ms_per_batch']}")
    result = {"config": vars(args), "step_shares": shares, "goal": "data share <= 10% on CPU; ratio >= 1 (not slower)"}
    if args.compare_src:
        result["against_compared_tree"] = compare(args)
    save("data_path", result)


if __name__ == "__main__":
    main()

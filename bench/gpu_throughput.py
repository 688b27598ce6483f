"""Training and feature-extraction speed on whatever accelerator is present.

Training images per second (``train_images_per_second`` of ``fewlabel.train``: images over the
seconds of the training batches of the fits on images) for efficientnet_lite0 at 64 and 224 px
and resnet50 at 224 px, each with the ``full`` and ``freeze-unfreeze`` strategies, on a folder
of ``--images`` generated 64 px PNG images (10 classes; decoded once and resized to the run's
size, as any folder is). Then feature extraction (the feature cache's path: batched inference
under autocast on CUDA) in images per second over ``--extract-images`` images.

Weights: ``pretrained none`` for every model (resnet50 has no offline weights; speed does not
depend on the values). Precision and workers are the defaults (16-bit mixed and one worker per
four cores on CUDA). Writes bench/results/gpu_throughput[-NAME].json with the device name.
Goals on one H100/H200: training at 64 px at least 5,000 images/s, extraction 20,000 images/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fewlabel
from _common import save
from fewlabel.data.augment import BatchTransform
from fewlabel.data.imageset import ImageSet
from fewlabel.models import create_backbone
from fewlabel.train.inference import batched_outputs, pre_logits

CONFIGS = {
    "efficientnet_lite0@64": ("efficientnet_lite0", 64),
    "efficientnet_lite0@224": ("efficientnet_lite0", 224),
    "resnet50@224": ("resnet50", 224),
}


def write_folder(root: Path, images: int, seed: int = 0) -> Path:
    """``images`` PNGs in 10 class folders: a class-dependent stripe pattern plus noise."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        label = i % 10
        pixels = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
        pixels[:, label * 6 : label * 6 + 6] += 150
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def training_speed(data: Path, out: Path, model: str, img_size: int, strategy: str, args) -> dict:
    options = {"model": model, "pretrained": "none", "img_size": img_size, "batch_size": args.batch_size}
    if strategy == "freeze-unfreeze":
        options |= {"head_epochs": 1, "epochs": args.epochs}
    else:
        options |= {"epochs": args.epochs}
    started = time.perf_counter()
    result = fewlabel.train(
        str(data), out, strategy=strategy, augment="light", progress=False, overwrite=True, **options
    )
    return {
        "train_images_per_second": result.metrics["train_images_per_second"],
        "train_images": result.metrics.get("train_images"),
        "wall_seconds": time.perf_counter() - started,
    }


def extraction_speed(model: str, img_size: int, images: int, repeats: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, info = create_backbone(model, "none", num_classes=0)
    net.eval().to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (images, 3, img_size, img_size), dtype=torch.uint8)
    image_set = ImageSet(pixels, torch.zeros(images, dtype=torch.long), ["x"], [str(i) for i in range(images)])
    transform = BatchTransform("none", img_size, info.mean, info.std, train=False)
    batched_outputs(
        pre_logits(net), image_set.subset(range(min(images, 512))), transform, device=device, progress=False
    )
    speeds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        batched_outputs(pre_logits(net), image_set, transform, device=device, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        speeds.append(images / (time.perf_counter() - started))
    return {"images_per_second": statistics.median(speeds), "runs": speeds, "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20000, help="training images in the generated folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--extract-images", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated from {', '.join(CONFIGS)}")
    parser.add_argument("--strategies", default="full,freeze-unfreeze")
    parser.add_argument("--name", default="", help="suffix of the result file")
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results: dict = {"training": {}, "feature_extraction": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "data", args.images)
        for name in args.configs.split(","):
            model, img_size = CONFIGS[name]
            for strategy in args.strategies.split(","):
                key = f"{name} {strategy}"
                results["training"][key] = training_speed(
                    data, Path(tmp) / "runs" / key, model, img_size, strategy, args
                )
                print(key, results["training"][key], flush=True)
            results["feature_extraction"][name] = extraction_speed(model, img_size, args.extract_images, args.repeats)
            print(name, "extraction", results["feature_extraction"][name], flush=True)
    goals = "on one H100/H200: training at 64 px >= 5000 images/s; feature extraction >= 20000 images/s"
    save(
        "gpu_throughput" + (f"-{args.name}" if args.name else ""),
        {"device": device, "config": vars(args), **results, "goals": goals},
    )


if __name__ == "__main__":
    main()

"""Images/s of ``fewlabel.train --strategy full`` against a minimal hand-written PyTorch loop.

Same model (ImageNet EfficientNet-Lite0), same in-memory data and transform, same batch size
and optimiser; the runs alternate (hand, fewlabel, hand, fewlabel, ...) so machine noise hits
both. Throughput counts training batches only, from the start to the end of each epoch.
Writes bench/results/engine_overhead.json with the ratio fewlabel / hand (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from fewlabel.data.datamodule import TransformedImages
from torch.utils.data import DataLoader

import fewlabel
from _common import save
from fewlabel.data.sources import load_data
from fewlabel.data.transforms import build_transform
from fewlabel.models import create_backbone


def hand_loop(args) -> float:
    torch.manual_seed(0)
    images = load_data(args.data, args.img_size)
    model, info = create_backbone(args.model, "imagenet", images.num_classes, drop_rate=0.2)
    for module in model.modules():  # the same frozen BatchNorm statistics as fewlabel's default
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    dataset = TransformedImages(images, build_transform("light", args.img_size, info.mean, info.std, True))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    seconds, seen = 0.0, 0
    for _ in range(args.epochs):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        start = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
        seconds += time.perf_counter() - start
    return seen / seconds


def fewlabel_run(args, out: str) -> float:
    result = fewlabel.train(
        args.data,
        out,
        strategy="full",
        model=args.model,
        pretrained="imagenet",
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-4,
        augment="light",
        progress=False,
        overwrite=True,
    )
    return result.metrics["train_images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist-small")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    hand, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # alternate which goes first, so warm-up hits both
            for name in ("hand", "fewlabel") if repeat % 2 == 0 else ("fewlabel", "hand"):
                if name == "hand":
                    hand.append(hand_loop(args))
                else:
                    ours.append(fewlabel_run(args, f"{tmp}/run"))
                print(f"{name}: {(hand if name == 'hand' else ours)[-1]:.1f} img/s", flush=True)
    save(
        "engine_overhead",
        {
            "config": vars(args),
            "hand_images_per_second": hand,
            "fewlabel_images_per_second": ours,
            "ratio_of_medians": statistics.median(ours) / statistics.median(hand),
            "goal": "ratio >= 0.9",
        },
    )


if __name__ == "__main__":
    main()

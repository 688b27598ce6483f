"""Images/s of the engine against minimal hand-written PyTorch loops, side by side in one run.

1. ``fewlabel.train --strategy full`` against a plain supervised loop: same model (ImageNet
   EfficientNet-Lite0), in-memory data, transform, batch size and optimiser.
2. One semi-supervised round through the engine (``Engine.fit`` with the soft-target module, as
   every pseudo-label or tri-net round runs) against the plain loop it replaced (the former
   ``SemiRun.train_epochs``: AdamW, warm-up and cosine, per-batch seeding, frozen BatchNorm,
   per-image seeded augmentation, the same soft-target loss), on the same labelled and
   pseudo-labelled images.

The runs alternate (hand, fewlabel, hand, fewlabel, ...) so machine noise hits both.
Throughput counts training batches only. Writes bench/results/engine_overhead.json with each
ratio fewlabel / hand (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import fewlabel
from _common import save
from fewlabel.config import make_config
from fewlabel.data.augment import BatchTransform
from fewlabel.data.datasets import EpochSampler, ImageBatches
from fewlabel.data.sources import load_data
from fewlabel.models import create_backbone
from fewlabel.semi.functional import hard_targets, soft_cross_entropy
from fewlabel.semi.loop import network_groups, trained_heads
from fewlabel.semi.modules import SoftTargetModule
from fewlabel.train.callbacks import seed_batch
from fewlabel.train.datamodule import datamodule
from fewlabel.train.engine import Engine, Fit, eval_mode_modules
from fewlabel.train.functional import warmup_cosine


def frozen_norms(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def hand_loop(args) -> float:
    torch.manual_seed(0)
    images = load_data(args.data, args.img_size)
    model, info = create_backbone(args.model, "imagenet", images.num_classes, drop_rate=0.2)
    dataset = ImageBatches(images.images, (images.labels,), BatchTransform("light", args.img_size, info.mean, info.std))
    sampler = EpochSampler(images.labels, 0, keyed=True)
    loader = DataLoader(dataset, args.batch_size, sampler=sampler, drop_last=True, collate_fn=ImageBatches.collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    seconds, seen = 0.0, 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        frozen_norms(model)  # the same frozen BatchNorm statistics as fewlabel's default
        start = time.perf_counter()
        for raw, y in loader:
            x = raw.apply()
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


def round_setup(args):
    """A round's training set (the data's images with one-hot targets, as labelled plus accepted
    pseudo-labels are), a pretrained classifier and the method's config."""
    cfg = make_config(
        {"data": args.data, "method": "pseudo-label", "model": args.model, "img_size": args.img_size,
         "batch_size": args.batch_size, "progress": False}
    )  # fmt: skip
    images = load_data(args.data, args.img_size, progress=False)
    torch.manual_seed(0)
    net, info = create_backbone(args.model, "imagenet", images.num_classes, cfg.dropout)
    targets = hard_targets(images.labels, images.num_classes, 1)
    mask = torch.ones(len(images), 1, dtype=torch.bool)
    transform = BatchTransform(cfg.augment, cfg.img_size, info.mean, info.std)
    return cfg, net, images, ImageBatches(images.images, (targets, mask), transform, seed=0)


def hand_round(args) -> float:
    """The loop the engine replaced (semi/methods.py's SemiRun.train_epochs before the engine)."""
    cfg, net, images, dataset = round_setup(args)
    optimizer = torch.optim.AdamW(network_groups(net, cfg), weight_decay=cfg.weight_decay)
    sampler = EpochSampler(images.labels, 7919, keyed=True)
    loader = DataLoader(
        dataset,
        cfg.batch_size,
        sampler=sampler,
        drop_last=len(dataset) % cfg.batch_size == 1,
        collate_fn=ImageBatches.collate,
    )
    total, warmup = args.epochs * len(loader), round(cfg.warmup_epochs * len(loader))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup, cfg.schedule))
    seconds, seen = 0.0, 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        frozen_norms(net)
        started = time.perf_counter()
        for index, (raw, targets, mask) in enumerate(loader):
            x = raw.apply()
            seed_batch(0, 1, epoch, index, torch.device("cpu"))
            loss = soft_cross_entropy(net(x).unsqueeze(0), targets, mask)
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(x)
        seconds += time.perf_counter() - started
    return seen / seconds


def engine_round(args, out: str) -> float:
    cfg, net, images, dataset = round_setup(args)
    engine = Engine(cfg, 0, Path(out))
    engine.start(net)

    def build() -> Fit:
        module = SoftTargetModule(net, network_groups(net, cfg), cfg.optimizer, cfg.schedule, cfg.warmup_epochs)
        return Fit(
            module,
            datamodule(cfg, 7919, dataset, None, images.labels),
            eval_mode_modules(net, True, trained_heads(net)),
        )

    engine.fit("round-1", args.epochs, build)
    return engine.timing()["train_images_per_second"]


def alternate(args, hand, ours, label: str) -> tuple[list[float], list[float]]:
    hand_values, our_values = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # alternate which goes first, so warm-up hits both
            for name in ("hand", "fewlabel") if repeat % 2 == 0 else ("fewlabel", "hand"):
                if name == "hand":
                    hand_values.append(hand(args))
                else:
                    our_values.append(ours(args, f"{tmp}/run-{repeat}"))
                print(f"{label} {name}: {(hand_values if name == 'hand' else our_values)[-1]:.1f} img/s", flush=True)
    return hand_values, our_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist-small")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    hand, ours = alternate(args, hand_loop, fewlabel_run, "supervised")
    hand_semi, ours_semi = alternate(args, hand_round, engine_round, "semi round")
    save(
        "engine_overhead",
        {
            "config": vars(args),
            "hand_images_per_second": hand,
            "fewlabel_images_per_second": ours,
            "ratio_of_medians": statistics.median(ours) / statistics.median(hand),
            "semi_round": {
                "hand_images_per_second": hand_semi,
                "engine_images_per_second": ours_semi,
                "ratio_of_medians": statistics.median(ours_semi) / statistics.median(hand_semi),
            },
            "goal": "each ratio >= 0.9",
        },
    )


if __name__ == "__main__":
    main()

"""Which part of a 2-bit network fails to learn (issue 16): a float parent of bench/quant.py
(``--parent``, a fewlabel run), folded and quantized at several precisions, then trained a few
steps the way qat trains (AdamW, the quantizers' scales learned), accuracy before and after.

Precisions: W2A2, W2A2 with the depthwise convolutions at 8 bits, W8A2, W2A8, W4A4 (the first
and last layers at 8 bits in each). Data: the first 100 images per class of the Fashion-MNIST
training split, un-augmented, at the parent's size; accuracy on the first 1,000 test images.
Not the bench protocol (no augmentation, ``--steps`` steps at a constant rate): a quick probe of
whether a precision can be learned at all from this parent.

    python bench/quant_two_bits.py --parent runs/bench-quant-e12/seed-0/float [--steps 40] [--name N]
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from _common import save
from fewlabel.data.augment import BatchTransform
from fewlabel.data.builtin import load_builtin
from fewlabel.methods import load_network
from fewlabel.quant.layers import (
    BitSpec,
    calibrate,
    fold_batchnorm,
    quantizable_layers,
    quantize_layers,
    quantized_layer,
    set_module,
    signed_inputs,
)

# (label, weight bits, activation bits, bits of the depthwise convolutions or None)
PRECISIONS = (
    ("W2A2", 2, 2, None),
    ("W2A2, depthwise W8A8", 2, 2, 8),
    ("W8A2", 8, 2, None),
    ("W2A8", 2, 8, None),
    ("W4A4", 4, 4, None),
)


def fashion(card, split: str, per_class: int | None, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images and labels: ``per_class`` first images of each class, or the first ``count``."""
    data = load_builtin("fashion-mnist", split)
    if per_class:
        index = torch.cat([torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(10)])
    else:
        index = torch.arange(count)
    fixed = BatchTransform("none", card.img_size, card.mean, card.std, train=False)  # grayscale to 3 channels too
    return fixed(data.images[index]), data.labels[index]


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    predicted = torch.cat([net(images[i : i + 250]).argmax(1) for i in range(0, len(images), 250)])
    return float((predicted == labels).float().mean())


def at_precision(parent: nn.Module, signed: list[str], weight: int, act: int, depthwise: int | None) -> nn.Module:
    net = quantize_layers(copy.deepcopy(parent), BitSpec(weight, act), signed)
    for name in quantizable_layers(net) if depthwise else []:
        layer = net.get_submodule(name)
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:
            set_module(net, name, quantized_layer(layer, depthwise, depthwise, name in signed))
    return net


def train_steps(net: nn.Module, images, labels, steps: int, lr: float, batch: int = 32) -> list[float]:
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    net.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(images), (batch,), generator=generator)
        loss = F.cross_entropy(net(images[pick]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parent", required=True, help="a float fewlabel run (bench/quant.py's seed-N/float)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--name", default="quant_two_bits")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    parent, card = load_network(args.parent)
    fold_batchnorm(parent.eval())
    train_images, train_labels = fashion(card, "train", 100, None)
    test_images, test_labels = fashion(card, "test", None, 1000)
    signed = signed_inputs(parent, train_images[:64])
    results = {"float": accuracy(parent, test_images, test_labels)}
    for label, weight, act, depthwise in PRECISIONS:
        started = time.perf_counter()
        net = at_precision(parent, signed, weight, act, depthwise)
        calibrate(net, train_images[:256], 64)
        before = accuracy(net, test_images, test_labels)
        losses = train_steps(net, train_images, train_labels, args.steps, args.lr)
        results[label] = {
            "accuracy_calibrated": before,
            "accuracy_after_steps": accuracy(net, test_images, test_labels),
            "loss_first_5": sum(losses[:5]) / 5,
            "loss_last_5": sum(losses[-5:]) / 5,
            "seconds": time.perf_counter() - started,
        }
        logging.info("%s: %s", label, results[label])
    save(
        args.name,
        {
            "protocol": {
                "parent": args.parent,
                "arch": card.arch,
                "img_size": card.img_size,
                "train": "first 100 images per class of the Fashion-MNIST training split, un-augmented",
                "test": "first 1,000 Fashion-MNIST test images",
                "steps": args.steps,
                "batch": 32,
                "lr": args.lr,
                "first_last_bits": 8,
            },
            "accuracy": results,
        },
    )


if __name__ == "__main__":
    main()

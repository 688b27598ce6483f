"""A tiny per-pixel regression task, written outside the package against the task interface:
every pixel's target is computed from the image by a known rule, ``(red - blue) / 255``.

It proves that a dense task keeps its images uncropped and aligned with their targets (joint
transforms), trains through the same engine and method as classification, saves, reloads and
trains under two-process DDP (``python -m torch.distributed.run ... tests/dense_task.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from fewlabel.data.datasets import image_rng
from fewlabel.data.sources import decode_files
from fewlabel.data.splits import random_subset
from fewlabel.data.transforms import build_dense_transform
from fewlabel.fileio import write_json
from fewlabel.models import BackboneInfo, create_encoder
from fewlabel.tasks import register_task
from fewlabel.tasks.base import DataBundle, Task
from fewlabel.train.module import EngineModule

NAME = "test-pixels"


def rule(image: torch.Tensor) -> torch.Tensor:
    """The target map of a uint8 RGB image: (red - blue) / 255, 1 x H x W."""
    return (image[0:1].float() - image[2:3].float()) / 255


def write_pixel_images(folder: Path, n: int, seed: int, size: tuple[int, int] = (40, 56)) -> Path:
    """``n`` smooth random RGB images of a non-square ``size`` as PNG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR).save(folder / f"{i:03d}.png")
    return folder


@dataclass
class PixelSet:
    """Images at their own size and their target maps."""

    images: list[torch.Tensor]
    targets: list[torch.Tensor]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> PixelSet:
        indices = [int(i) for i in indices]
        return PixelSet(
            [self.images[i] for i in indices], [self.targets[i] for i in indices], [self.ids[i] for i in indices]
        )


def load_pixels(folder: str | Path, strict: bool = False) -> PixelSet:
    paths = sorted(Path(folder).glob("*.png"))
    decoded = decode_files(paths, None, strict, progress=False)  # no resize, no crop
    images = [image for _, image, _ in decoded]
    return PixelSet(images, [rule(im) for im in images], [str(paths[i]) for i, _, _ in decoded])


class PixelImages(Dataset):
    """(image, target) pairs through one joint transform, seeded per (epoch, index)."""

    keyed = True

    def __init__(self, split: PixelSet, transform, seed: int) -> None:
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        with image_rng(self.seed, epoch, index):
            return self.transform(self.split.images[index], self.split.targets[index])


class PixelNet(nn.Module):
    """A timm encoder's stride-4 feature map, a 1x1 convolution, upsampled to the input size."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Conv2d(encoder.channels[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return F.interpolate(self.decoder(features), size=x.shape[-2:], mode="bilinear", align_corners=False)


class PixelModule(EngineModule):
    def training_loss(self, batch):
        x, y = batch
        return F.mse_loss(self(x), y), {}, len(x)

    def validation_loss(self, batch):
        x, y = batch
        return F.mse_loss(self(x), y), {}, len(x)


class PixelPredictor:
    def __init__(self, model: nn.Module, card, device=None) -> None:
        self.model, self.card = model.eval(), card
        self.transform = build_dense_transform(card.img_size, card.mean, card.std, train=False)

    @torch.no_grad()
    def predict(self, split: PixelSet) -> list[torch.Tensor]:
        return [
            self.model(self.transform(im, t)[0][None])[0] for im, t in zip(split.images, split.targets, strict=True)
        ]


class PixelTask(Task):
    """Per-pixel regression of ``rule`` on a folder holding ``train/`` and ``test/`` PNG files."""

    name = NAME
    headline = "mse"
    metric_keys = ("mse", "mae")
    higher_is_better = False

    def prepare_data(self, cfg, seed: int) -> DataBundle:
        train = load_pixels(Path(cfg.data) / "train", cfg.strict)
        val = random_subset(train, max(1, len(train) // 4), seed)
        held = set(val.ids)
        train = train.subset([i for i, image_id in enumerate(train.ids) if image_id not in held])
        return DataBundle(train, val, load_pixels(Path(cfg.data) / "test", cfg.strict), "test")

    def build_model(self, cfg, data) -> tuple[nn.Module, BackboneInfo]:
        encoder, info = create_encoder(cfg.model, cfg.pretrained, indices=(1,))
        return PixelNet(encoder), info

    def rebuild_model(self, card) -> nn.Module:
        encoder, _ = create_encoder(card.arch, "none", indices=tuple(card.extras["indices"]))
        return PixelNet(encoder)

    def dataset(self, split, info, cfg, train: bool, seed: int) -> PixelImages:
        return PixelImages(split, build_dense_transform(cfg.img_size, info.mean, info.std, train), seed)

    def module(self, net, param_groups, cfg, data) -> PixelModule:
        return PixelModule(net, param_groups, cfg.optimizer, cfg.schedule, cfg.warmup_epochs)

    def card_fields(self, cfg, data, info) -> dict:
        return {
            "class_names": ["red minus blue"],
            "img_size": cfg.img_size,
            "mean": list(info.mean),
            "std": list(info.std),
            "extras": {"indices": [1]},
        }

    def evaluate(self, model, card, split: PixelSet, progress: bool = False):
        maps = PixelPredictor(model, card).predict(split)
        errors = [(m - t) for m, t in zip(maps, split.targets, strict=True)]
        per_image = [float(e.pow(2).mean()) for e in errors]
        metrics = {
            "mse": float(np.mean(per_image)),
            "mae": float(np.mean([float(e.abs().mean()) for e in errors])),
            "n_samples": len(split),
        }
        return metrics, dict(zip(split.ids, per_image, strict=True))

    def load_split(self, spec: str, card, strict: bool = False) -> PixelSet:
        return load_pixels(spec, strict)

    def write_predictions(self, run_dir: Path, predictions: dict) -> None:
        write_json(Path(run_dir) / "pixel_errors.json", predictions)

    def predictor(self, model, card, device=None) -> PixelPredictor:
        return PixelPredictor(model, card, device)

    def report_sections(self, run_dir: Path, metrics: dict) -> list[str]:
        return [f"<h2>Per-pixel regression</h2><p>mean squared error {metrics['mse']:.5f}</p>"]


register_task(NAME, PixelTask)

if __name__ == "__main__":  # torchrun ... tests/dense_task.py DATA OUT '{"option": value, ...}'
    import json

    import fewlabel

    fewlabel.train(sys.argv[1], sys.argv[2], **({"task": NAME} | json.loads(sys.argv[3])))

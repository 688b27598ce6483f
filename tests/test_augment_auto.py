"""``augment: auto``: a flip only where a mirror test on the labelled images shows it keeps
classes; the decision is recorded in metrics.json, config.yaml and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fewlabel
from fewlabel.data.augment import mirror_test


def _class_features(labels: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    means = torch.eye(int(labels.max()) + 1, 16) * 3
    return means[labels] + noise * torch.randn(len(labels), 16, generator=generator)


def test_mirror_test_by_construction():
    labels = torch.arange(4).repeat_interleave(20)
    original = _class_features(labels, 0.5, 0)
    kept = mirror_test(original, _class_features(labels, 0.5, 1), labels)  # a mirror looks like its class
    assert kept["allowed"] and kept["conclusive"] and kept["accuracy"] > 0.9
    swapped = mirror_test(original, _class_features(labels ^ 1, 0.5, 1), labels)  # 0<->1, 2<->3: b and d
    assert not swapped["allowed"] and swapped["mirrored_accuracy"] < 0.2
    noise = torch.randn(80, 16, generator=torch.Generator().manual_seed(2))
    blind = mirror_test(noise, noise.clone(), labels)  # features that separate nothing
    assert not blind["conclusive"] and not blind["allowed"]


def _folder(root, kind: str, per_class: int = 40):
    """Arrows pointing right or left (a horizontal flip turns one class into the other, a
    vertical one keeps it), or shapes that mirroring keeps (disc, square, cross, ring); 64 px,
    random position and size."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for c, name in enumerate(["a", "b"] if kind == "arrows" else ["a", "b", "c", "d"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cx, cy = rng.integers(26, 38, 2)
            r = int(rng.integers(10, 18))
            if kind == "arrows":
                right = (xx - cx >= 0) & (xx - cx < r) & (abs(yy - cy) <= (r - (xx - cx)) // 2)
                shaft = (xx - cx < 0) & (xx - cx > -r) & (abs(yy - cy) <= 2)
                mask = right | shaft
                mask = mask if c == 0 else mask[:, ::-1]
            else:
                disc, box = np.hypot(xx - cx, yy - cy), np.maximum(abs(xx - cx), abs(yy - cy))
                mask = [disc < r, box < r, (abs(xx - cx) < 3) | (abs(yy - cy) < 3), (disc < r) & (disc > r - 5)][c]
            pixels = np.clip(mask * 255 + rng.integers(0, 40, mask.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(("kind", "augment", "vflip"), [("arrows", "crop", True), ("shapes", "light", True)])
def test_auto_augment_flips_only_where_mirrors_keep_classes(tmp_path, kind, augment, vflip):
    data = _folder(tmp_path / kind, kind)
    options = {"model": "efficientnet_lite0", "img_size": 64, "head_epochs": 1, "epochs": 0, "batch_size": 16}
    result = fewlabel.train(str(data), tmp_path / "run", progress=False, feature_cache="memory", **options)
    decision = result.metrics["augment_decision"]
    assert (decision["augment"], decision["vflip"]) == (augment, vflip), decision
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["augment"] == "auto" and config["resolved"] == {"augment": augment, "vflip": vflip}
    assert "Augmentation (auto)" in (result.run_dir / "report.html").read_text()
    rerun = fewlabel.train(out=tmp_path / "again", config=result.run_dir / "config.yaml")  # resolved is not an option
    assert rerun.metrics["augment_decision"]["augment"] == augment
    explicit = fewlabel.train(str(data), tmp_path / "light", augment="light", progress=False, **options)
    assert "augment_decision" not in json.loads((explicit.run_dir / "metrics.json").read_text())

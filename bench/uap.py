"""Universal adversarial perturbations from natural photos (issue 13): speed against ART, and
the paper's experiment at this machine's scale.

Photos: the ten colour photographs that scikit-image and scikit-learn ship offline (astronaut,
coffee, chelsea, rocket, immunohistochemistry, retina, hubble_deep_field, cat; china, flower;
listed in the JSON), written once to bench/.data/photos; the building images are random crops
of them at the model's input size, converted to grayscale for the Fashion-MNIST models.

Models (Fashion-MNIST, the 1,000 training images of fashion-mnist-small = 100 labels per class,
64 px, EfficientNet-Lite0): fine-tuned from ImageNet (freeze-unfreeze) and trained from scratch
(`full`, 30 epochs, lr 1e-3). Evaluation: the 1,000 test images of fashion-mnist-small.

1. Speed: ours vs ART's UniversalPerturbation (FGSM attacker) on the fine-tuned model, the same
   building crops, radius, FGSM step, passes and stopping rule: seconds and fooling rates.
2. Fooling rates of a natural-photo UAP, a training-image UAP and the random control at
   zeta = 2%, 4%, 8% (L2) and of a targeted natural-photo UAP (zeta 4%), for both models, over
   seeds of the building draw. Every pass runs (delta 0): with the default stop at 80% of the
   building images fooled, 300 photo crops were fooled within one pass by a perturbation still
   inside the ball, the same at every zeta, which did not transfer.

    python bench/uap.py [--seeds 0,1,2] [--building 300] [--passes 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fewlabel
from _common import save
from fewlabel.audit.uap import pixel_forward, sphere_rate, universal_perturbation
from fewlabel.data.natural import natural_crops
from fewlabel.methods import load_network

PHOTOS = Path(__file__).parent / ".data" / "photos"
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "cat",
)  # fmt: skip
MODELS = {
    "fine-tuned": dict(pretrained="imagenet", strategy="freeze-unfreeze"),
    "from-scratch": dict(pretrained="none", strategy="full", epochs=30, lr=1e-3),
}


def photos() -> list[str]:
    """Write the offline sample photographs once; return their names."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    PHOTOS.mkdir(parents=True, exist_ok=True)
    named = {n: getattr(data, n)() for n in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    named |= {Path(f).stem: image for f, image in zip(sample.filenames, sample.images, strict=True)}
    for name, image in named.items():
        if not (PHOTOS / f"{name}.png").is_file():
            Image.fromarray(image).save(PHOTOS / f"{name}.png")
    return sorted(named)


def train_models(out: Path) -> dict[str, Path]:
    runs = {}
    for name, options in MODELS.items():
        run = out / name
        if not (run / "model.json").is_file():
            fewlabel.train("fashion-mnist-small", run, overwrite=True, img_size=64, progress=False, **options)
        runs[name] = run
    return runs


def speed(run: Path, building: torch.Tensor, passes: int) -> dict:
    """Ours against ART on the same budget (one seed; ART's loop is the slow part)."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    model, card = load_network(run)
    forward = pixel_forward(model.eval(), card.mean, card.std)
    started = time.perf_counter()
    ours = universal_perturbation(forward, building, zeta=0.04, max_passes=passes, delta=0.0)
    ours_seconds = time.perf_counter() - started

    class Pixels(torch.nn.Module):  # ART sees the same pixels-in, logits-out model
        def forward(self, x):
            return forward(x)

    classifier = PyTorchClassifier(
        Pixels(), torch.nn.CrossEntropyLoss(), input_shape=tuple(building.shape[1:]),
        nb_classes=len(card.class_names), clip_values=(0.0, 1.0),
    )  # fmt: skip
    attack = UniversalPerturbation(
        classifier, attacker="fgsm", attacker_params={"eps": 0.0005 / 2, "norm": np.inf}, delta=0.0,
        max_iter=passes, eps=ours.radius, norm=2, verbose=False,
    )  # fmt: skip
    np.random.seed(0)
    started = time.perf_counter()
    attack.generate(building.numpy())
    art_seconds = time.perf_counter() - started
    art_v = torch.from_numpy(attack.noise[0]).float()
    return {
        "building_images": len(building),
        "passes": passes,
        "ours_seconds": ours_seconds,
        "art_seconds": art_seconds,
        "speedup": art_seconds / ours_seconds,
        "ours_fooling_rate_building": sphere_rate(forward, building, ours.perturbation),
        "art_fooling_rate_building": sphere_rate(forward, building, art_v),
    }


def experiment(runs: dict[str, Path], seeds: list[int], building: int, passes: int) -> dict:
    """Per model: rates of natural, training-image and random perturbations at each zeta."""
    result = {}
    for model_name, run in runs.items():
        rows = {}
        for seed in seeds:
            for zeta in (0.02, 0.04, 0.08):
                natural = fewlabel.audit_uap(
                    run, natural=PHOTOS, images=building, zeta=zeta, max_passes=passes, seed=seed, delta=0.0,
                    out=run / "audit" / f"natural-{zeta}-{seed}",
                )  # fmt: skip
                own = fewlabel.audit_uap(
                    run, source="fashion-mnist-small:train", images=building, zeta=zeta, max_passes=passes,
                    seed=seed, delta=0.0, out=run / "audit" / f"train-{zeta}-{seed}",
                )  # fmt: skip
                rows.setdefault(f"zeta {zeta}", []).append({
                    "natural": natural["evaluation"]["fooling_rate"],
                    "training_images": own["evaluation"]["fooling_rate"],
                    "random_control": natural["evaluation"]["random_control_fooling_rate"],
                })  # fmt: skip
            targeted = fewlabel.audit_uap(
                run, natural=PHOTOS, images=building, zeta=0.04, target="Bag", max_passes=passes, seed=seed,
                delta=0.0, out=run / "audit" / f"targeted-{seed}",
            )  # fmt: skip
            rows.setdefault("targeted Bag, zeta 0.04", []).append({
                "natural": targeted["evaluation"]["targeted_success_rate"],
                "random_control": targeted["evaluation"]["random_control_targeted_success_rate"],
            })  # fmt: skip
            print(model_name, seed, {k: v[-1] for k, v in rows.items()}, flush=True)
        result[model_name] = {"per_seed": rows, "mean_sd": _mean_sd(rows)}
    return result


def _mean_sd(rows: dict) -> dict:
    out = {}
    for setting, seeds in rows.items():
        out[setting] = {
            key: {"mean": statistics.mean(r[key] for r in seeds), "sd": statistics.stdev(r[key] for r in seeds)}
            if len(seeds) > 1 else {"mean": seeds[0][key], "sd": 0.0}
            for key in seeds[0]
        }  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--building", type=int, default=300)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--speed-images", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-uap"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = photos()
    runs = train_models(args.out)
    metrics = {name: fewlabel.evaluate(run, "fashion-mnist-small:test")["accuracy"] for name, run in runs.items()}
    card = load_network(runs["fine-tuned"])[1]
    building = natural_crops(PHOTOS, card.img_size, 1, args.speed_images, seed=0)
    result = {
        "photos": names,
        "models": {name: MODELS[name] | {"test_accuracy": metrics[name]} for name in runs},
        "data": "fashion-mnist-small (1,000 training images = 100 per class; 1,000 test images), 64 px",
        "speed": speed(runs["fine-tuned"], building, args.passes),
    }
    print(result["speed"], flush=True)
    save("uap", result)
    result["rates"] = experiment(runs, [int(s) for s in args.seeds.split(",")], args.building, args.passes)
    save("uap", result)


if __name__ == "__main__":
    main()

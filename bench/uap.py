"""Universal adversarial perturbations from natural photos (issue 13): speed against ART, and
the paper's experiment at this machine's scale.

Photos: the ten colour photographs that scikit-image and scikit-learn ship offline (astronaut,
coffee, chelsea, rocket, immunohistochemistry, retina, hubble_deep_field, cat; china, flower)
and the 24 photographs (not the drawings) among the wallpapers of the Debian packages
plasma-workspace-wallpapers and mate-backgrounds (`apt-get install -y --no-install-recommends
plasma-workspace-wallpapers mate-backgrounds`; without them the bench goes on with the ten and
says so in the JSON), written once to bench/.data/photos at most 1024 px on a side; the
building images are random crops of them at the model's input size, converted to grayscale for
the Fashion-MNIST models.

Models (Fashion-MNIST, the 1,000 training images of fashion-mnist-small = 100 labels per class,
64 px, EfficientNet-Lite0): fine-tuned from ImageNet (freeze-unfreeze), a linear probe on the
frozen ImageNet features (the limit of "fine-tuning changes the features little"), and trained
from scratch (`full`, 30 epochs, lr 1e-3). Evaluation: the 1,000 test images of
fashion-mnist-small.

1. Speed: ours vs ART's UniversalPerturbation (FGSM attacker) on the fine-tuned model, the same
   building crops, radius, FGSM step, passes and stopping rule: seconds and fooling rates.
2. Fooling rates of a natural-photo UAP, a training-image UAP and the random control at
   zeta = 2%, 4%, 8% (L2) and of a targeted natural-photo UAP (zeta 4%), for both models, over
   seeds of the building draw. Every pass runs (delta 0, the audit's default): with a stop at
   80% of the building images fooled, 300 photo crops were fooled within one pass by a
   perturbation still inside the ball, the same at every zeta, which did not transfer.

    python bench/uap.py [--seeds 0,1,2] [--other-seeds 0] [--building 500] [--passes 10]

Audits already on disk with the same settings (runs/bench-uap/MODEL/audit/*) are read back,
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fewlabel
from _common import save
from fewlabel.audit.uap import folded_for_inference, pixel_forward, sphere_rate, universal_perturbation
from fewlabel.data.natural import natural_crops
from fewlabel.methods import load_network

PHOTOS = Path(__file__).parent / ".data" / "photos"
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "cat",
)  # fmt: skip
DEBIAN_PHOTOS = {  # package: (folder, photographs among its wallpapers)
    "plasma-workspace-wallpapers": ("/usr/share/wallpapers", (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
        "OneStandsOut", "Path", "Volna", "summer_1am",
    )),
    "mate-backgrounds": ("/usr/share/backgrounds/mate/nature", (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower",
    )),
}  # fmt: skip
LARGEST_SIDE = 1024
MODELS = {
    "fine-tuned": dict(pretrained="imagenet", strategy="freeze-unfreeze"),
    "linear-probe": dict(pretrained="imagenet", strategy="linear-probe"),
    "from-scratch": dict(pretrained="none", strategy="full", epochs=30, lr=1e-3),
}


def photos() -> dict[str, list[str]]:
    """Write the offline photographs once; return their names by source."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    PHOTOS.mkdir(parents=True, exist_ok=True)
    named = {n: getattr(data, n)() for n in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    named |= {Path(f).stem: image for f, image in zip(sample.filenames, sample.images, strict=True)}
    for name, image in named.items():
        if not (PHOTOS / f"{name}.png").is_file():
            Image.fromarray(image).save(PHOTOS / f"{name}.png")
    used = {"scikit-image, scikit-learn": sorted(named)}
    for package, (folder, names) in DEBIAN_PHOTOS.items():
        files = {name: _debian_photo(Path(folder), name) for name in names}
        if None in files.values():
            used[package] = "not installed: apt-get install -y --no-install-recommends " + package
            continue
        for name, file in files.items():
            if not (PHOTOS / f"{name}.jpg").is_file():
                image = Image.open(file).convert("RGB")
                image.thumbnail((LARGEST_SIDE, LARGEST_SIDE))
                image.save(PHOTOS / f"{name}.jpg", quality=92)
        used[package] = list(names)
    return used


def _debian_photo(folder: Path, name: str) -> Path | None:
    """A wallpaper's file: ``NAME.jpg`` in ``folder``, or Plasma's largest ``NAME/contents/images/WxH.*``."""
    if (folder / f"{name}.jpg").is_file():
        return folder / f"{name}.jpg"
    sizes = sorted((folder / name / "contents" / "images").glob("*x*.*"), key=lambda f: int(f.stem.split("x")[0]))
    return sizes[-1] if sizes else None


def train_models(out: Path) -> dict[str, Path]:
    runs = {}
    for name, options in MODELS.items():
        run = out / name
        if not (run / "model.json").is_file():
            fewlabel.train("fashion-mnist-small", run, overwrite=True, img_size=64, progress=False, **options)
        runs[name] = run
    return runs


def speed(run: Path, building: torch.Tensor, passes: int) -> dict:
    """Ours (on the BatchNorm-folded copy the audit runs) against ART on the same budget, ART
    given the model as trained and the folded copy (one seed; ART's loop is the slow part)."""

    model, card = load_network(run)
    forward = pixel_forward(model.eval(), card.mean, card.std)
    folded = pixel_forward(folded_for_inference(model), card.mean, card.std)  # what the audit runs
    started = time.perf_counter()
    ours = universal_perturbation(folded, building, zeta=0.04, max_passes=passes, delta=0.0)
    ours_seconds = time.perf_counter() - started
    art_seconds, art_v = _art(forward, building, len(card.class_names), ours.radius, passes)
    art_folded_seconds, _ = _art(folded, building, len(card.class_names), ours.radius, passes)
    return {
        "building_images": len(building),
        "passes": passes,
        "ours_seconds": ours_seconds,
        "art_seconds": art_seconds,
        "speedup": art_seconds / ours_seconds,
        "art_on_the_folded_model_seconds": art_folded_seconds,
        "speedup_against_art_on_the_folded_model": art_folded_seconds / ours_seconds,
        "ours_fooling_rate_building": sphere_rate(forward, building, ours.perturbation),
        "art_fooling_rate_building": sphere_rate(forward, building, art_v),
    }


def _art(forward, building: torch.Tensor, classes: int, radius: float, passes: int) -> tuple[float, torch.Tensor]:
    """Seconds of ART's UniversalPerturbation (FGSM attacker) on the pixels-in ``forward``, and its perturbation."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    class Pixels(torch.nn.Module):  # ART sees the same pixels-in, logits-out model
        def forward(self, x):
            return forward(x)

    classifier = PyTorchClassifier(
        Pixels(), torch.nn.CrossEntropyLoss(), input_shape=tuple(building.shape[1:]), nb_classes=classes,
        clip_values=(0.0, 1.0),
    )  # fmt: skip
    attack = UniversalPerturbation(
        classifier, attacker="fgsm", attacker_params={"eps": 0.0005 / 2, "norm": np.inf}, delta=0.0,
        max_iter=passes, eps=radius, norm=2, verbose=False,
    )  # fmt: skip
    np.random.seed(0)
    started = time.perf_counter()
    attack.generate(building.numpy())
    return time.perf_counter() - started, torch.from_numpy(attack.noise[0]).float()


def experiment(runs: dict[str, Path], seeds: dict[str, list[int]], building: int, passes: int, saved) -> dict:
    """Per model: rates of natural, training-image and random perturbations at each zeta, and
    how much of its ball each perturbation filled; ``saved(result)`` after every seed."""
    result = {}
    for model_name, run in runs.items():
        rows: dict[str, list] = {}
        for seed in seeds[model_name]:
            for zeta in (0.02, 0.04, 0.08):
                natural = _audit(run, f"natural-{zeta}-{seed}", building, passes, natural=PHOTOS, zeta=zeta, seed=seed)
                own = _audit(
                    run, f"train-{zeta}-{seed}", building, passes, source="fashion-mnist-small:train", zeta=zeta,
                    seed=seed,
                )  # fmt: skip
                rows.setdefault(f"zeta {zeta}", []).append({
                    "natural": natural["evaluation"]["fooling_rate"],
                    "training_images": own["evaluation"]["fooling_rate"],
                    "random_control": natural["evaluation"]["random_control_fooling_rate"],
                    "natural_ball_filled": natural["ball_filled"],
                    "training_images_ball_filled": own["ball_filled"],
                })  # fmt: skip
            targeted = _audit(run, f"targeted-{seed}", building, passes, natural=PHOTOS, zeta=0.04, target="Bag",
                              seed=seed)  # fmt: skip
            rows.setdefault("targeted Bag, zeta 0.04", []).append({
                "natural": targeted["evaluation"]["targeted_success_rate"],
                "random_control": targeted["evaluation"]["random_control_targeted_success_rate"],
                "natural_ball_filled": targeted["ball_filled"],
            })  # fmt: skip
            print(model_name, seed, {k: v[-1] for k, v in rows.items()}, flush=True)
            result[model_name] = {"per_seed": rows, "mean_sd": _mean_sd(rows), "natural_over_control": _ratios(rows)}
            saved(result)
    return result


def _audit(run: Path, name: str, building: int, passes: int, **options) -> dict:
    """One audit into ``run/audit/name``; an earlier one with the same settings is read back."""
    out = run / "audit" / name
    if (out / "uap.json").is_file():
        record = json.loads((out / "uap.json").read_text())
        if (record["building_images"], record["passes"]) == (building, passes) and "ball_filled" in record:
            return record
    return fewlabel.audit_uap(run, images=building, max_passes=passes, delta=0.0, out=out, **options)


def _ratios(rows: dict) -> dict:
    """Per setting: the natural-photo UAP's rate over the random control's (mean of the seeds)."""
    mean = statistics.mean
    return {
        setting: mean(r["natural"] for r in seeds) / max(mean(r["random_control"] for r in seeds), 1e-9)
        for setting, seeds in rows.items()
    }


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
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the building draw for the fine-tuned model")
    parser.add_argument("--other-seeds", default=None, help="for the other models (default: --seeds)")
    parser.add_argument("--building", type=int, default=500)
    parser.add_argument("--passes", type=int, default=10)
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
        "settings": {"building_images": args.building, "passes": args.passes, "step": 0.0005, "delta": 0.0},
    }

    def saved(rates: dict) -> None:
        save("uap", result | {"rates": rates}, partial=True)

    seeds = {name: [int(s) for s in args.seeds.split(",")] for name in runs}
    if args.other_seeds:
        seeds |= {name: [int(s) for s in args.other_seeds.split(",")] for name in runs if name != "fine-tuned"}
    result["rates"] = experiment(runs, seeds, args.building, args.passes, saved)
    result["speed"] = speed(runs["fine-tuned"], building, args.passes)  # last: after the long part, on a quiet machine
    print(result["speed"], flush=True)
    save("uap", result)


if __name__ == "__main__":
    main()

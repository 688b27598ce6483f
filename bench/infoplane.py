"""Information plane of the output (issue 14) on Fashion-MNIST: does the final validation
I(T;Y) rank runs as their test accuracy does, and do the two estimators agree?

Data (built once under bench/.data/infoplane from the full Fashion-MNIST in
/usr/share/datasets/fashion-mnist): train/ = 100 images per class (runs draw 10 to 100 of
them with labels_per_class), val/ = 50 per class from the rest of the training set (one fixed
validation split shared by every run, so their points are comparable), test/ = 100 per class
of the test set. An unbalanced copy keeps 10 training images of one class (Shirt) against
100 of the others.

Runs (64 px, tracked with --track-infoplane, 10 bins, k-NN at each fit's last epoch): they
differ in backbone (EfficientNet-Lite0, Lite1, ResNet-18), pretraining (ImageNet or none),
strategy and labels per class; see RUNS (two pairs differ only in pretraining). Written: the
comparison (fewlabel audit infoplane --rank --per-class), the per-run tracking cost, and both
binning codes on the saved models' validation outputs.

    python bench/infoplane.py [--runs NAME,NAME]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

import fewlabel
from _common import save
from fewlabel.audit.infoplane import CODES
from fewlabel.data.builtin import DEBIAN_FASHION_DIR, load_idx_split

DATA = Path(__file__).parent / ".data" / "infoplane"
OUT = Path("runs/bench-infoplane")
UNDER_LEARNED = "Shirt"
LITE0 = dict(model="efficientnet_lite0", pretrained="imagenet")
RUNS = {
    "lite0-probe-10": LITE0 | dict(strategy="linear-probe", labels_per_class=10),
    "lite0-probe-100": LITE0 | dict(strategy="linear-probe", labels_per_class=100),
    "lite0-fu-10": LITE0 | dict(strategy="freeze-unfreeze", labels_per_class=10),
    "lite0-fu-100": LITE0 | dict(strategy="freeze-unfreeze", labels_per_class=100),
    # the transfer pair: at the default lr (3e-4) and 10 epochs neither trained past 31% (last session)
    "lite0-full-imagenet-30": LITE0 | dict(strategy="full", labels_per_class=30, lr=1e-3, epochs=20),
    "lite0-full-scratch-30": dict(
        model="efficientnet_lite0", pretrained="none", strategy="full", labels_per_class=30, lr=1e-3, epochs=20
    ),
    "resnet18-scratch-30": dict(model="resnet18", pretrained="none", strategy="full", labels_per_class=30, lr=1e-3),
    "lite1-fu-30": dict(
        model="efficientnet_lite1", pretrained="imagenet", strategy="freeze-unfreeze", labels_per_class=30
    ),
    "lite0-auto-30": LITE0 | dict(labels_per_class=30),  # the defaults: the tracking cost that counts
    # a second transfer pair, the recommended procedure from either start (the full pair's ImageNet run collapses)
    "lite0-fu-imagenet-30": LITE0 | dict(strategy="freeze-unfreeze", labels_per_class=30),
    "lite0-fu-scratch-30": dict(
        model="efficientnet_lite0", pretrained="none", strategy="freeze-unfreeze", labels_per_class=30
    ),
}
TRANSFER_PAIR = ("lite0-fu-imagenet-30", "lite0-fu-scratch-30")  # differ only in pretraining


def build_data() -> dict[str, Path]:
    """The balanced and the unbalanced folder (PNG files), once."""
    balanced, unbalanced = DATA / "balanced", DATA / "unbalanced"
    if (unbalanced / "test").is_dir():
        return {"balanced": balanced, "unbalanced": unbalanced}
    if not DEBIAN_FASHION_DIR.is_dir():
        raise SystemExit("needs the full Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    train = load_idx_split(DEBIAN_FASHION_DIR, "train", "fashion-mnist")
    test = load_idx_split(DEBIAN_FASHION_DIR, "test", "fashion-mnist")
    rng = np.random.default_rng(0)
    for c, name in enumerate(train.class_names):
        members = rng.permutation(np.flatnonzero(train.labels.numpy() == c))
        tested = rng.permutation(np.flatnonzero(test.labels.numpy() == c))[:100]
        _write(balanced / "train" / name, train.images, members[:100])
        _write(balanced / "val" / name, train.images, members[100:150])
        _write(balanced / "test" / name, test.images, tested)
        _write(unbalanced / "train" / name, train.images, members[: 10 if name == UNDER_LEARNED else 100])
        _write(unbalanced / "val" / name, train.images, members[100:150])
        _write(unbalanced / "test" / name, test.images, tested)
    return {"balanced": balanced, "unbalanced": unbalanced}


def _write(folder: Path, images, indices) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(images[int(i)][0].numpy()).save(folder / f"{int(i)}.png")


def train(data: Path, name: str, options: dict) -> Path:
    run = OUT / name
    if not (run / "metrics.json").is_file():
        fewlabel.train(
            str(data), run, overwrite=True, img_size=64, progress=False, track_infoplane=True, **options
        )  # fmt: skip
    return run


def cost(run: Path) -> dict:
    import json

    tracked = json.loads((run / "infoplane.json").read_text())
    seconds = json.loads((run / "metrics.json").read_text())["train_seconds"]
    return {"tracking_seconds": tracked["seconds"], "train_seconds": seconds, "share": tracked["seconds"] / seconds}


def codes_side_by_side(runs: dict[str, Path], data: Path) -> dict:
    """Both binning codes on the same outputs: the saved model's softmax on the validation
    images, binned with the ``top`` and the ``simplex`` code, and each one's Spearman
    correlation with test accuracy across the runs."""
    import json

    from scipy.stats import spearmanr

    from fewlabel.audit.infoplane import binned_plane
    from fewlabel.data.sources import load_data

    val = load_data(f"{data}:val", 64, progress=False)
    rows = {}
    for name, run in runs.items():
        probabilities = fewlabel.load(run).predict_proba(val).numpy()
        rows[name] = {code: binned_plane(probabilities, val.labels.numpy(), 10, code)["I_TY"] for code in CODES}
        rows[name]["test_accuracy"] = json.loads((run / "metrics.json").read_text())["accuracy"]
    accuracy = [row["test_accuracy"] for row in rows.values()]
    rank = {}
    for code in CODES:
        rho, p = spearmanr([row[code] for row in rows.values()], accuracy)
        rank[code] = {"rho": float(rho), "p_value": float(p), "runs": len(rows)}
    return {"what": "I(T;Y) of each saved model's validation outputs, both codes, 10 bins", "runs": rows, "rank": rank}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folders = build_data()
    runs = {name: train(folders["balanced"], name, RUNS[name]) for name in args.runs.split(",")}
    unbalanced = train(folders["unbalanced"], "unbalanced-lite0-fu", LITE0 | dict(strategy="freeze-unfreeze"))
    plane = fewlabel.audit_infoplane(list(runs.values()), out=OUT / "plane", rank=True, per_class=True)
    per_class = fewlabel.audit_infoplane([unbalanced, runs["lite0-fu-100"]], out=OUT / "unbalanced", per_class=True)
    short = {str(run): name for name, run in runs.items()} | {str(unbalanced): "unbalanced-lite0-fu"}
    save("infoplane", {
        "data": "Fashion-MNIST: train 100/class (runs draw labels_per_class), val 50/class fixed, test 100/class; "
                "64 px; one seed per run",
        "runs": {name: RUNS[name] | {
            "test_accuracy": plane["runs"][str(run)]["test_accuracy"],
            "val_accuracy": plane["runs"][str(run)]["val_accuracy"],
            "final": plane["runs"][str(run)]["final"], "cost": cost(run)} for name, run in runs.items()},
        "rank": {k: v for k, v in plane["rank"].items() if k != "order"}
                | {"order": [short[row["run"]] for row in plane["rank"]["order"]]},
        "transfer": [{short[n]: row for n, row in group["runs"].items()} for group in plane["transfer"]],
        "trajectories": {name: [(p["I_XT"], p["I_TY"]) for p in plane["runs"][str(runs[name])]["points"]
                                if p["estimator"] == "binning"] for name in TRANSFER_PAIR if name in runs},
        "unbalanced": {
            "under_learned_class": UNDER_LEARNED,
            "per_class_final": {short[n]: {c: v["final"] for c, v in classes.items()}
                                for n, classes in per_class["per_class"].items()},
            "cost": cost(unbalanced),
        },
        "codes_side_by_side": codes_side_by_side(runs, folders["balanced"]),
        "figures": [str(OUT / "plane" / "infoplane.png"), str(OUT / "unbalanced" / "infoplane.png")],
    })  # fmt: skip


if __name__ == "__main__":
    main()

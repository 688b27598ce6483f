"""Distillation into a smaller student and the layer-smoothness regulariser (issue 15), on
Fashion-MNIST (full set from /usr/share/datasets/fashion-mnist; evaluation: the 10,000 test
images), 64 px, per seed:

* the teacher: EfficientNet-Lite0 from ImageNet, freeze-unfreeze (the defaults' schedule), on
  100 labelled images per class (1,000);
* the student: MobileNetV3-Small-0.5 from scratch (no offline ImageNet weights exist for it),
  the same 1,000 labelled images, ``--epochs`` passes over them, alone (``--loss ce``) and with
  KD, RKD, LGG and LGG+KD on the labelled images plus a seeded ``--pool-size`` draw of the
  unlabeled rest of the training split, and KD and LGG on the labelled images alone;
* the regulariser: the teacher's run (or, ``--smooth-on student``, the student alone) again with
  ``--regularize lgg-smooth`` at each of ``--reg-weights``.

``--data SET`` runs the same protocol on one of bench/defaults.py's small sets (``letters``,
``colour``, ``textures``: their labels per class, the rest of their train split as the pool,
their test split), to see whether a weight chosen on Fashion-MNIST holds on other data.

Every run also writes robustness.json (accuracy under Gaussian noise and FGSM, the first
``--robustness-images`` test images of a seeded draw). Sizes and CPU latency (batch 1 and 64,
median of repeated forwards of both networks in this process) are measured last. Runs already
on disk are read back, interrupted ones resumed from their last checkpoint.

    python bench/distill.py [--seeds 0,1,2] [--epochs 30] [--pool-size 10000] [--reg-weights 1e-3,1e-2]
                            [--smooth-on teacher|student] [--smooth-k K] [--smooth-power P]
                            [--smooth-layers stages|blocks|NAMES]
                            [--losses ce,kd,rkd,lgg,lgg+kd] [--graph-weight 2.5] [--graph-k K]
                            [--[no-]graph-embedding] [--[no-]graph-logits]
                            [--labelled-only] [--data SET] [--name distill]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

import fewlabel
from _common import command_line, save
from fewlabel.config import REG_WEIGHT, TrainConfig
from fewlabel.distill.options import DistillOptions
from fewlabel.methods import load_network

OUT = Path("runs/bench-distill")
DATA = "fashion-mnist"
FASHION = "Fashion-MNIST (full), 100 labelled images per class, 64 px, 10,000 test images"
COMMON = dict(img_size=64, labels_per_class=100, progress=False, robustness_images=1000)
TEACHER = dict(model="efficientnet_lite0", pretrained="imagenet", strategy="freeze-unfreeze")
STUDENT = dict(model="mobilenetv3_small_050", pretrained="none", lr=2e-3, method="distill")
LOSSES = ("ce", "kd", "rkd", "lgg", "lgg+kd")
WITHOUT_POOL = ("ce", "kd", "lgg")  # the student alone, and the two terms the goals compare, on the labelled images


def use_set(name: str) -> str:
    """Point the bench at one of bench/defaults.py's sets (built on first use); its description."""
    global OUT, DATA
    from defaults import SETS, dataset

    DATA, OUT = dataset(name), Path(f"runs/bench-distill-{name}")
    COMMON["labels_per_class"] = SETS[name][1]
    return f"bench/defaults.py set '{name}' ({SETS[name][2]}), 64 px, its test split"


def run(name: str, seed: int, options: dict) -> dict:
    """Train (or read back) one run; its accuracy, robustness and time. A run interrupted after
    a checkpoint continues from it (``resume``)."""
    out = OUT / f"seed-{seed}" / name
    if not (out / "metrics.json").is_file():
        started = time.perf_counter()
        interrupted = any((out / "checkpoints").glob("*"))
        fewlabel.train(DATA, out, overwrite=not interrupted, resume=interrupted, seed=seed, **COMMON, **options)
        logging.info("%s seed %d: %.0f s", name, seed, time.perf_counter() - started)
    metrics = json.loads((out / "metrics.json").read_text())
    robustness = json.loads((out / "robustness.json").read_text())
    return {"accuracy": metrics["accuracy"], "train_seconds": metrics["train_seconds"], "robustness": robustness}


def seed_runs(
    seed: int, epochs: int, pool_size: int, reg_weights: list[float], losses: tuple[str, ...],
    lgg: dict, pooled: bool = True, smooth_on: str = "teacher", smooth_graph: dict | None = None,
) -> dict:  # fmt: skip
    """Every run of one seed; ``lgg``'s options (``graph_weight``: lambda of the LGG term,
    ``graph_embedding``: the pooled embeddings paired too, ``graph_logits``: the outputs too,
    ``graph_k``: edges kept per image) name the LGG runs (:func:`lgg_name`), so variants sit side
    by side; without ``pooled`` only the runs on the labelled images.
    ``smooth_on`` says which network the regulariser's runs train: the fine-tuned ``teacher`` or
    the ``student`` alone, from scratch; ``smooth_graph`` their ``smooth_k``, ``smooth_power`` and
    ``smooth_layers`` (in the run's name when not the config's defaults)."""
    teacher_dir = OUT / f"seed-{seed}" / "teacher"
    runs = {"teacher": run("teacher", seed, TEACHER)}
    student = STUDENT | dict(teacher=str(teacher_dir), epochs=epochs)
    regularized, label = (TEACHER, "teacher") if smooth_on == "teacher" else (student | dict(loss="ce"), "student ce")
    defaults = TrainConfig.model_fields
    graph = {key: value for key, value in (smooth_graph or {}).items() if value != defaults[key].default}
    variant = "".join(f" {key.split('_')[-1]} {value}" for key, value in graph.items())  # e.g. " k 10 power 2"
    for weight in reg_weights:
        smooth = regularized | graph | dict(regularize="lgg-smooth", reg_weight=weight)
        name = f"{weight:g}{variant}"
        runs[f"{label}+lgg-smooth {name}"] = run(f"{smooth_on}-smooth-{name.replace(' ', '-')}", seed, smooth)
    for loss in losses:
        term = student | dict(loss=loss)
        name = loss
        if "lgg" in loss:
            term, name = term | lgg, lgg_name(loss, lgg)
        tag = name.replace(" ", "-")
        if loss in WITHOUT_POOL:
            runs[f"student {name}"] = run(f"student-{tag}", seed, term)
        if loss != "ce" and pooled:
            pooled_term = term | dict(unlabeled="rest", pool_size=pool_size)
            runs[f"student {name} + pool"] = run(f"student-{tag}-pool", seed, pooled_term)
    return runs


def lgg_name(loss: str, lgg: dict) -> str:
    """An LGG run's name: its loss, lambda and the options set (the k-NN mask only when given)."""
    name = f"{loss} lambda {lgg['graph_weight']:g}" + (" with embedding" if lgg["graph_embedding"] else "")
    name += " with outputs" if lgg["graph_logits"] else ""
    return name + (f" k {lgg['graph_k']}" if lgg["graph_k"] is not None else "")


def summary(per_seed: dict[int, dict]) -> dict:
    """Mean and sd over seeds of each run's accuracy and robustness figures."""
    names = next(iter(per_seed.values())).keys()
    out = {}
    for name in names:
        rows = [per_seed[s][name] for s in per_seed]
        figures = {"accuracy": [r["accuracy"] for r in rows]}
        for kind in ("gaussian", "fgsm"):
            for level in rows[0]["robustness"][kind]:
                figures[f"{kind} {level}"] = [r["robustness"][kind][level] for r in rows]
        out[name] = {
            key: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
            for key, v in figures.items()
        }
    return out


def latency(seed: int) -> dict:
    """Parameters and CPU forward latency (median of 20, after 3 warm-ups) of teacher and student
    (the first finished student run: every loss and lambda trains the same architecture)."""
    folder = OUT / f"seed-{seed}"
    students = sorted(run.parent.name for run in folder.glob("student-*/model.json"))
    result = {}
    for role, name in (("teacher", "teacher"), ("student", students[0] if students else "student")):
        if not (folder / name / "model.json").is_file():
            continue
        net, card = load_network(folder / name)
        entry = {"arch": card.arch, "parameters": sum(p.numel() for p in net.parameters())}
        for batch in (1, 64):
            x = torch.randn(batch, 3, card.img_size, card.img_size)
            times = []
            with torch.inference_mode():
                for i in range(23):
                    started = time.perf_counter()
                    net(x)
                    if i >= 3:
                        times.append(time.perf_counter() - started)
            entry[f"ms_batch_{batch}"] = 1000 * statistics.median(times)
        result[role] = entry
    if len(result) == 2:
        result["student_over_teacher"] = {
            key: result["student"][key] / result["teacher"][key] for key in ("parameters", "ms_batch_1", "ms_batch_64")
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pool-size", type=int, default=10000)
    parser.add_argument("--reg-weights", default=None, help="comma-separated; default the config's REG_WEIGHT; '' none")
    parser.add_argument(
        "--smooth-on", choices=("teacher", "student"), default="teacher",
        help="the network the --reg-weights runs regularise: the fine-tuned teacher or the student alone from scratch",
    )  # fmt: skip
    config = TrainConfig.model_fields
    parser.add_argument(
        "--smooth-k", type=int, default=config["smooth_k"].default,
        help="the regulariser's graphs keep k edges per image (before 2026-12-02 this was --graph-k)",
    )  # fmt: skip
    parser.add_argument(
        "--graph-k", type=int, default=config["graph_k"].default, help="LGG distillation's graphs: k edges per image"
    )
    parser.add_argument(
        "--smooth-power", type=int, default=config["smooth_power"].default, help="power of the Laplacian (regulariser)"
    )
    parser.add_argument(
        "--smooth-layers", default=config["smooth_layers"].default, help="layers the regulariser reads (stages, blocks)"
    )
    parser.add_argument("--losses", default=",".join(LOSSES))
    graph_weight = DistillOptions.model_fields["graph_weight"].default
    parser.add_argument("--graph-weight", type=float, default=graph_weight, help="LGG lambda (default the option's)")
    embedding = DistillOptions.model_fields["graph_embedding"].default
    parser.add_argument(
        "--graph-embedding", action=argparse.BooleanOptionalAction, default=embedding,
        help="LGG pairs the pooled embeddings too (default the option's)",
    )  # fmt: skip
    parser.add_argument(
        "--graph-logits", action=argparse.BooleanOptionalAction,
        default=DistillOptions.model_fields["graph_logits"].default,
        help="LGG pairs the outputs too (default the option's)",
    )  # fmt: skip
    parser.add_argument("--labelled-only", action="store_true", help="no runs with the unlabeled pool")
    parser.add_argument("--data", default=None, help="a small set of bench/defaults.py instead of Fashion-MNIST")
    parser.add_argument("--name", default="distill")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    described = use_set(args.data) if args.data else FASHION
    reg_weights = [float(w) for w in args.reg_weights.split(",") if w] if args.reg_weights is not None else [REG_WEIGHT]
    seeds = [int(s) for s in args.seeds.split(",")]
    losses = tuple(args.losses.split(","))
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = seed_runs(
            seed,
            args.epochs,
            args.pool_size,
            reg_weights,
            losses,
            {key: getattr(args, key) for key in ("graph_weight", "graph_embedding", "graph_logits", "graph_k")},
            not args.labelled_only,
            args.smooth_on,
            {"smooth_k": args.smooth_k, "smooth_power": args.smooth_power, "smooth_layers": args.smooth_layers},
        )
        result = {
            "protocol": {
                "data": described,
                "teacher": TEACHER,
                "student": STUDENT | {"epochs": args.epochs},
                "pool": "none (--labelled-only: the runs on the labelled images only)"
                if args.labelled_only
                else f"seeded draw of up to {args.pool_size} images from the unlabeled rest of the training split",
                "reg_weights": reg_weights,
                "smooth_on": args.smooth_on,
                "smooth_k": args.smooth_k,
                "smooth_power": args.smooth_power,
                "smooth_layers": args.smooth_layers,
                "graph_weight": args.graph_weight,
                "graph_embedding": args.graph_embedding,
                "graph_logits": args.graph_logits,
                "graph_k": args.graph_k,
                "command": command_line("distill.py", args),
                "robustness_images": COMMON["robustness_images"],
                "seeds": list(per_seed),
            },
            "per_seed": per_seed,
            "summary": summary(per_seed),
        }
        save(args.name, result, partial=True)
    result["latency"] = latency(seeds[0])
    save(args.name, result)


if __name__ == "__main__":
    main()

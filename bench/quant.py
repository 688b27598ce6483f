"""Low-bit networks (issue 16) on Fashion-MNIST (full set from /usr/share/datasets/fashion-mnist;
evaluation: the 10,000 test images), per seed:

* the float parent: EfficientNet-Lite0 from ImageNet, freeze-unfreeze, on 100 labelled images
  per class at ``--img-size`` px;
* the float control: the parent trained ``--epochs`` more, whole, at the qat runs' learning rate
  and schedule, without quantization (qat also trains the whole network: this separates what
  quantization costs from what the extra epochs give);
* quantization-aware training of that parent (``fewlabel quantize``) at W8A8, W4A4, W2A4 and
  W2A2 with the ``direct``, ``progressive`` and ``hlhl`` schedules, ``--epochs`` in all for each
  (equal total epochs), first and last layers at 8 bits; the whole grid on the seeds of
  ``--grid-seeds``, the runs the goals compare (W4A4 direct, W2A2 direct and hlhl) on every seed
  (a qat epoch takes about 30 s on this 2-core machine: the whole grid on three seeds did not fit).

Each qat run's deployment check (quant.json) gives sizes on disk, CPU latency at batch 1 and 64
of eager PyTorch float, onnxruntime float and onnxruntime quantized, and the kernels
onnxruntime runs; they are gathered for W8A8 (the precision onnxruntime runs with integer
kernels). Runs already on disk are read back (resumable).

Another float network: ``--model resnet18 --pretrained none --float-epochs 30 --img-size 32``
trains the parent from scratch, whole (no depthwise convolutions: EfficientNet-Lite0 does not
survive 2-bit weights or activations within a few epochs, a ResNet does). ``--runs`` names the
runs of the seeds outside ``--grid-seeds`` (default: the ones the goals compare).

    python bench/quant.py [--seeds 0,1,2] [--grid-seeds 0] [--epochs 4] [--img-size 64]
                          [--model efficientnet_lite0 --pretrained imagenet] [--float-epochs N]
                          [--runs W4A4-direct,W2A2-direct,W2A2-hlhl] [--out runs/bench-quant] [--name quant]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import fewlabel
from _common import command_line, save

DATA = "fashion-mnist"
PRECISIONS = ((8, 8), (4, 4), (2, 4), (2, 2))
SCHEDULES = ("direct", "progressive", "hlhl")
# hlhl-coarse-low: the other reading of the paper's rates (coarse tuning, the high rate, at low
# precision; fine tuning at high precision): high stages at lr / 10, low stages at lr
VARIANTS = {"hlhl-coarse-low": {"qat_schedule": "hlhl", "lr": 3e-5, "low_lr_factor": 10.0}}
GRID = (*((w, a, s) for w, a in PRECISIONS for s in SCHEDULES), (2, 2, "hlhl-coarse-low"))
GOAL_RUNS = ((4, 4, "direct"), (2, 2, "direct"), (2, 2, "hlhl"), (2, 2, "hlhl-coarse-low"))  # on every seed


def read(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    entry = {"accuracy": metrics["accuracy"], "train_seconds": metrics["train_seconds"]}
    if (out / "quant.json").is_file():
        quant = json.loads((out / "quant.json").read_text())
        entry |= {"stages": quant["stages"], "deployment": quant.get("deployment")}
    return entry


def parent(root: Path, seed: int, net: dict, common: dict) -> Path:
    """The float run: ``net`` holds its model, pretrained weights, strategy and epochs."""
    out = root / f"seed-{seed}" / "float"
    if not (out / "metrics.json").is_file():
        started = time.perf_counter()
        fewlabel.train(DATA, out, overwrite=True, seed=seed, **net, **common)
        logging.info("float seed %d: %.0f s", seed, time.perf_counter() - started)
    return out


def control(root: Path, seed: int, float_dir: Path, epochs: int, model: str, common: dict) -> Path:
    out = root / f"seed-{seed}" / "float-control"
    if not (out / "metrics.json").is_file():
        fewlabel.train(
            DATA, out, overwrite=True, seed=seed, model=model, strategy="full", head_epochs=0,
            pretrained=str(float_dir / "model.safetensors"), epochs=epochs, **common,
        )  # fmt: skip
    return out


def seed_runs(root: Path, seed: int, epochs: int, net: dict, common: dict, configs) -> dict:
    float_dir = parent(root, seed, net, common)
    runs = {
        "float": read(float_dir),
        "float control": read(control(root, seed, float_dir, epochs, net["model"], common)),
    }
    for weight_bits, act_bits, schedule in configs:
        name = f"W{weight_bits}A{act_bits} {schedule}"
        out = root / f"seed-{seed}" / f"w{weight_bits}a{act_bits}-{schedule}"
        if not (out / "metrics.json").is_file():
            started = time.perf_counter()
            options = {"qat_schedule": schedule} | VARIANTS.get(schedule, {})
            fewlabel.quantize(
                float_dir, DATA, out, overwrite=True, seed=seed, epochs=epochs, weight_bits=weight_bits,
                act_bits=act_bits, **options, **common,
            )  # fmt: skip
            logging.info("%s seed %d: %.0f s", name, seed, time.perf_counter() - started)
        runs[name] = read(out)
    return runs


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summary(per_seed: dict[int, dict]) -> dict:
    """Accuracy mean and sd over seeds of every run, the W8A8 deployment figures, and the goals."""
    names = max((runs.keys() for runs in per_seed.values()), key=len)
    accuracy = {n: mean_sd([per_seed[s][n]["accuracy"] for s in per_seed if n in per_seed[s]]) for n in names}
    float_mean = max(accuracy["float"]["mean"], accuracy["float control"]["mean"])
    goals = {}
    if "W4A4 direct" in accuracy:
        goals["W4A4 direct - best float (points)"] = 100 * (accuracy["W4A4 direct"]["mean"] - float_mean)
    if {"W2A2 hlhl", "W2A2 direct"} <= accuracy.keys():
        goals["W2A2 hlhl - direct (points)"] = 100 * (accuracy["W2A2 hlhl"]["mean"] - accuracy["W2A2 direct"]["mean"])
    deployments = [per_seed[s]["W8A8 direct"].get("deployment") for s in per_seed if "W8A8 direct" in per_seed[s]]
    deployments = [d for d in deployments if d and "error" not in d]
    deploy = {}
    if deployments:
        latency = lambda model, batch: mean_sd([d["latency_ms"][model][f"batch_{batch}_ms"] for d in deployments])  # noqa: E731
        deploy = {
            "latency_ms": {
                model: {f"batch_{b}": latency(model, b) for b in (1, 64)}
                for model in ("pytorch_float", "onnxruntime_float", "onnxruntime_quantized")
            },
            "size_bytes": deployments[0]["size_bytes"],
            "onnxruntime_kernels": deployments[0]["onnxruntime_kernels"],
            "argmax_agreement": [d["argmax_agreement"] for d in deployments],
        }
        sizes = deploy["size_bytes"]
        lat = deploy["latency_ms"]
        goals |= {
            "onnxruntime float / eager speed-up at batch 1": lat["pytorch_float"]["batch_1"]["mean"]
            / lat["onnxruntime_float"]["batch_1"]["mean"],
            "W8A8 ONNX smaller than float safetensors (x)": sizes["float_safetensors"] / sizes["quantized_onnx"],
            "W8A8 ONNX smaller than float ONNX (x)": sizes["float_onnx"] / sizes["quantized_onnx"],
            "W8A8 onnxruntime / float onnxruntime latency, batch 1": lat["onnxruntime_quantized"]["batch_1"]["mean"]
            / lat["onnxruntime_float"]["batch_1"]["mean"],
            "W8A8 onnxruntime / float onnxruntime latency, batch 64": lat["onnxruntime_quantized"]["batch_64"]["mean"]
            / lat["onnxruntime_float"]["batch_64"]["mean"],
        }
    return {"accuracy": accuracy, "deployment_w8a8": deploy, "goals": goals}


def parse_runs(text: str) -> tuple[tuple[int, int, str], ...]:
    """``W4A4-direct,W2A2-hlhl`` as (weight bits, activation bits, schedule) triples."""
    runs = []
    for item in filter(None, text.split(",")):
        precision, _, schedule = item.partition("-")
        weight, _, act = precision.upper().removeprefix("W").partition("A")
        runs.append((int(weight), int(act), schedule))
    return tuple(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument(
        "--grid-seeds", default="0", help="seeds that run every precision and schedule (the others: --runs)"
    )
    parser.add_argument("--runs", default=",".join(f"W{w}A{a}-{s}" for w, a, s in GOAL_RUNS))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--pretrained", default="imagenet")
    parser.add_argument("--float-epochs", type=int, default=None, help="epochs of the float parent (default: train's)")
    parser.add_argument("--out", default="runs/bench-quant")
    parser.add_argument("--name", default="quant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common = dict(img_size=args.img_size, labels_per_class=100, progress=False, robustness_images=0)
    scratch = args.pretrained == "none"
    net = dict(model=args.model, pretrained=args.pretrained, strategy="full" if scratch else "freeze-unfreeze")
    net |= {"head_epochs": 0} if scratch else {}
    net |= {"epochs": args.float_epochs} if args.float_epochs else {}
    float_text = (
        f"{args.model}, {'from scratch, whole' if scratch else 'ImageNet weights, freeze-unfreeze'}"
        f"{f', {args.float_epochs} epochs' if args.float_epochs else ''} (defaults otherwise)"
    )
    per_seed = {}
    grid = {int(s) for s in args.grid_seeds.split(",") if s}
    for seed in [int(s) for s in args.seeds.split(",")]:
        configs = GRID if seed in grid else parse_runs(args.runs)
        per_seed[seed] = seed_runs(Path(args.out), seed, args.epochs, net, common, configs)
        save(
            args.name,
            {
                "protocol": {
                    "data": f"Fashion-MNIST (full), 100 labelled images per class, {args.img_size} px, "
                    "10,000 test images",
                    "float": f"{float_text}; the control: {args.epochs} more epochs, whole network, BatchNorm "
                    "statistics fixed (as folded into qat convolutions)",
                    "qat": f"{args.epochs} epochs in all per schedule, lr 3e-4 (AdamW) unless a variant sets it, "
                    "first/last layers 8 bits",
                    "variants": VARIANTS,
                    "seeds": list(per_seed),
                    "grid_seeds": sorted(grid),
                    "command": command_line("quant.py", args),
                },
                "per_seed": per_seed,
                "summary": summary(per_seed),
            },
        )


if __name__ == "__main__":
    main()

"""The ``qat`` method: quantization-aware training of a trained float run, through the engine.

The float parent (``pretrained``: a fewlabel run's model.safetensors; in a recipe, the previous
stage) is rebuilt, its BatchNorm folded into its convolutions, then each stage of the schedule
(:mod:`fewlabel.quant.schedule`) re-quantizes the network at its precision
(:func:`fewlabel.quant.layers.quantize_layers`: the float weights carry over, the scales start
again from statistics) and trains it as one fit. Model selection (``keep_best``) looks at the
last stage only: an epoch at another precision is not the model asked for. After evaluation,
:func:`finish` exports the parent and the quantized network to ONNX and measures them.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.augment import BatchTransform
from ..errors import FewlabelError
from ..fileio import read_json
from ..methods import load_network
from ..models import ModelCard
from ..report.sections import record_section
from ..rundir import CARD, METRICS, ONNX, QUANT, WEIGHTS, read_record, write_record
from ..train.datamodule import datamodule
from ..train.engine import Fit
from .export import checked_export, latencies
from .layers import (
    BIAS_BITS,
    BitSpec,
    calibrate,
    fold_batchnorm,
    materialize_scales,
    quantizable_layers,
    quantize_layers,
    signed_inputs,
)
from .schedule import QuantStage, plan_stages

if TYPE_CHECKING:  # pragma: no cover
    from ..models import BackboneInfo
    from ..tasks.base import RunContext

log = logging.getLogger("fewlabel.quant")
SIGN_IMAGES = 64  # labelled images whose activations decide each layer's signed or unsigned quantizer
DEPLOY_IMAGES = 256  # evaluation images of the deployment check
FLOAT_ONNX = "model-float.onnx"


def train(ctx: RunContext) -> tuple[nn.Module, BackboneInfo]:
    """Fold, then run the schedule's stages, each a precision and one fit."""
    cfg, opts = ctx.cfg, ctx.cfg.method
    parent = float_parent(cfg.pretrained, ctx.data.class_names)
    net, info = ctx.task.build_model(cfg, ctx.data)
    folded = fold_batchnorm(net.eval())
    fixed = BatchTransform("none", cfg.img_size, info.mean, info.std, train=False)
    calibration = fixed(ctx.data.train.images[: max(opts.calibration_images, SIGN_IMAGES)])
    signed = signed_inputs(net, calibration[:SIGN_IMAGES])
    calibration = calibration[: opts.calibration_images]
    stages = plan_stages(opts, cfg.epochs, cfg.lr)
    state = ctx.engine.method_state
    state["card_extras"] = {
        "quant": {"signed_inputs": signed, "float_parent": str(Path(cfg.pretrained).parent), "bias_bits": BIAS_BITS}
    }
    quantize_layers(net, stages[0].spec(opts.first_last_bits), signed)
    restored = ctx.engine.start(net)
    saved = {k: v.clone() for k, v in net.state_dict().items()} if restored else None
    for index, stage in enumerate(stages):
        if index:
            quantize_layers(net, stage.spec(opts.first_last_bits), signed)
        if ctx.engine.finished(stage.name):
            net.load_state_dict(saved)  # a resumed run: the weights and scales after the last finished stage
        else:
            calibrate(net, calibration, cfg.batch_size)
            if index == len(stages) - 1:
                ctx.engine.selection.forget_best()
        # a finished stage's fit is skipped by the engine but still counted: it seeds the later fits' batches
        ctx.engine.fit(stage.name, stage.epochs, partial(stage_fit, ctx, net, info, stage))
    write_record(ctx.run_dir, QUANT, quant_record(ctx, parent, stages, folded, signed, net))
    return net, info


def float_parent(pretrained: str, class_names: list[str]) -> ModelCard:
    """The card of the float run to quantize; refused when ``pretrained`` is not a fewlabel run
    or predicts another class set (a quantized run is refused when its weights are loaded:
    :func:`fewlabel.models.backbones.create_backbone`)."""
    path = Path(pretrained)
    card_path = path.parent / CARD
    if path.suffix != ".safetensors" or not path.is_file() or not card_path.is_file():
        raise FewlabelError(
            f"method qat quantizes a trained float run: pretrained '{pretrained}' is not a fewlabel run's "
            f"{WEIGHTS} (use 'fewlabel quantize RUN DATA', or a recipe stage after a trained one)."
        )
    card = ModelCard.from_file(card_path)
    if list(card.class_names) != list(class_names):
        raise FewlabelError(
            f"'{path.parent}' predicts classes {', '.join(card.class_names)}; the data has {', '.join(class_names)}. "
            "Quantize on data with the float run's class set."
        )
    return card


def stage_fit(ctx: RunContext, net: nn.Module, info, stage: QuantStage) -> Fit:
    """One stage: the whole quantized network on the labelled images at the stage's rate;
    the scales and biases without weight decay."""
    cfg = ctx.cfg
    if not stage.run_schedule:
        cfg = cfg.model_copy(update={"schedule": "constant", "warmup_epochs": 0.0})
    for p in net.parameters():
        p.requires_grad = True
    groups = quant_param_groups(net, stage.lr, cfg.weight_decay)
    task, data = ctx.task, ctx.data
    train_set = task.dataset(data.train, info, cfg, True, ctx.seed)
    val_set = task.dataset(data.val, info, cfg, False, ctx.seed) if data.val is not None else None
    images = datamodule(cfg, ctx.seed, train_set, val_set, task.sampler_labels(data.train))
    return Fit(task.module(net, groups, cfg, data), images)


def quant_param_groups(net: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: the float weights with weight decay; biases and the quantizers' learned
    scales without (decay would shrink the scales, not the weights)."""
    decayed, plain = [], []
    for name, param in net.named_parameters():
        (plain if "_quant." in name or param.ndim <= 1 else decayed).append(param)
    return [g for g in ({"params": decayed, "lr": lr, "weight_decay": weight_decay},
                        {"params": plain, "lr": lr, "weight_decay": 0.0}) if g["params"]]  # fmt: skip


def quant_record(ctx: RunContext, parent: ModelCard, stages, folded, signed, net) -> dict:
    """quant.json: the parent, the precision, what was folded and quantized, each stage with the
    validation score at its end."""
    opts = ctx.cfg.method
    parent_dir = Path(ctx.cfg.pretrained).parent
    parent_metrics = read_json(parent_dir / METRICS) if (parent_dir / METRICS).is_file() else {}
    history = ctx.engine.selection.history
    key = ctx.engine.selection.key
    rows = []
    for stage in stages:
        last = next((r for r in reversed(history) if r["fit"] == stage.name), None)
        rows.append(stage.record() | {"label": f"W{stage.weight_bits}A{stage.act_bits}", key: last and last[key]})
    return {
        "float_parent": str(parent_dir),
        "parent_arch": parent.arch,
        "parent_accuracy": parent_metrics.get("accuracy"),
        "precision": BitSpec(opts.weight_bits, opts.act_bits, opts.first_last_bits).label,
        "weight_bits": opts.weight_bits,
        "act_bits": opts.act_bits,
        "first_last_bits": opts.first_last_bits,
        "qat_schedule": opts.qat_schedule,
        "monitor": key,
        "stages": rows,
        "folded_batchnorms": len(folded),
        "quantized_layers": len(quantizable_layers(net)),
        "signed_inputs": len(signed),
        "history": [r for r in history if r["fit"] in {s.name for s in stages}],
    }


def build_from_card(card: ModelCard) -> nn.Module:
    """The untrained quantized network a qat run's model.json describes (weights loaded after)."""
    from ..tasks import get_task

    quant = card.extras.get("quant", {})
    net = get_task(card.task).rebuild_model(card)
    fold_batchnorm(net.eval())
    bits = (card.extras["weight_bits"], card.extras["act_bits"], card.extras["first_last_bits"])
    spec = BitSpec(*bits, bias_bits=quant.get("bias_bits", 32))  # runs saved before BIAS_BITS: 32
    quantize_layers(net, spec, quant.get("signed_inputs", []))
    return materialize_scales(net, 3, card.img_size)


def finish(ctx: RunContext, model: nn.Module, card: ModelCard) -> None:
    """The deployment check, added to quant.json: ONNX exports of the parent (model-float.onnx)
    and of this network (model.onnx), their sizes, CPU latency of eager PyTorch float and both
    ONNX models at batch 1 and 64, onnxruntime's integer kernels, and agreement with PyTorch on
    the first ``DEPLOY_IMAGES`` evaluation images. An export that fails is recorded, not raised."""
    record = read_record(ctx.run_dir, QUANT) or {}
    try:
        record["deployment"] = deployment(ctx, model, card)
    except FewlabelError as exc:
        log.warning("deployment check: %s", exc)
        record["deployment"] = {"error": str(exc)}
    write_record(ctx.run_dir, QUANT, record)


def deployment(ctx: RunContext, model: nn.Module, card: ModelCard) -> dict:
    parent, _ = load_network(Path(ctx.cfg.pretrained).parent)
    split = ctx.data.eval
    fixed = BatchTransform("none", card.img_size, card.mean, card.std, train=False)
    images, labels = fixed(split.images[:DEPLOY_IMAGES]), split.labels[:DEPLOY_IMAGES]
    exported = checked_export(parent, images, ctx.run_dir / FLOAT_ONNX)
    quantized = checked_export(model, images, ctx.run_dir / ONNX)

    def accuracy(logits: torch.Tensor) -> float:
        return float((logits.argmax(1) == labels).float().mean())

    return {
        "images": len(images),
        "size_bytes": {
            "float_safetensors": Path(ctx.cfg.pretrained).stat().st_size,
            "float_onnx": exported.path.stat().st_size,
            "quantized_onnx": quantized.path.stat().st_size,
        },
        "latency_ms": {
            "pytorch_float": latencies(parent, None, card.img_size),
            "onnxruntime_float": latencies(None, exported.session, card.img_size),
            "onnxruntime_quantized": latencies(None, quantized.session, card.img_size),
        },
        "threads": torch.get_num_threads(),
        "argmax_agreement": {"float": exported.agreement, "quantized": quantized.agreement},
        "accuracy": {
            "pytorch_float": accuracy(exported.expected),
            "onnxruntime_float": accuracy(exported.got),
            "pytorch_quantized": accuracy(quantized.expected),
            "onnxruntime_quantized": accuracy(quantized.got),
        },
        "onnxruntime_kernels": {"float": exported.kernels, "quantized": quantized.kernels},
    }


def report_section(run_dir: Path) -> str | None:
    """The quantization part of report.html, from quant.json."""
    return record_section(run_dir, QUANT, "fewlabel.quant", "quant.html", "q")

"""ONNX export of a run's network, float or quantized, and what a deployment needs to know:
size on disk, CPU latency, and whether onnxruntime agrees with PyTorch.

A float network goes through ``torch.onnx.export``; a quantized one through Brevitas' QCDQ
export (QuantizeLinear, Clip below 8 bits, DequantizeLinear around float operators).
onnxruntime fuses 8-bit QCDQ patterns (DequantizeLinear -> Conv -> QuantizeLinear) into
integer kernels (QLinearConv, QGemm); below 8 bits the Clip blocks the fusion and the model
runs as simulated quantization in float. :func:`optimized_session` counts, in the graph
onnxruntime actually runs, the nodes of each kind.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FewlabelError
from ..fileio import atomic_write

OPSET = 17
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def is_quantized(net: nn.Module) -> bool:
    """Whether the network holds Brevitas quant layers."""
    return any(type(m).__module__.startswith("brevitas.nn") for m in net.modules())


def export_units(net: nn.Module) -> dict[str, nn.Module]:
    """The modules an export failure is looked for in: Brevitas quant layers whole, and the
    modules without children outside them."""
    units: dict[str, nn.Module] = {}
    for name, module in net.named_modules():
        inside = any(name.startswith(f"{unit}.") for unit in units)
        brevitas_layer = type(module).__module__.startswith("brevitas.nn")
        if name and not inside and (brevitas_layer or not list(module.children())):
            units[name] = module
    return units


@torch.no_grad()
def failing_layer(net: nn.Module, sample: torch.Tensor) -> str | None:
    """The first layer, in execution order, that fails to export on its own (with the input it
    gets from ``sample``); None when each exports alone."""
    units = export_units(net)
    inputs: dict[str, tuple] = {}
    handles = [
        module.register_forward_pre_hook(partial(_keep_first_input, inputs, name)) for name, module in units.items()
    ]
    try:
        net(sample)
    finally:
        for handle in handles:
            handle.remove()
    with tempfile.TemporaryDirectory() as workdir:
        for name, args in inputs.items():
            try:
                _write_onnx(units[name], args[0], is_quantized(units[name]), Path(workdir) / "unit.onnx")
            except Exception:
                return name
    return None


def _keep_first_input(inputs: dict, name: str, module: nn.Module, args: tuple) -> None:
    if name not in inputs and args and isinstance(args[0], torch.Tensor):
        inputs[name] = (args[0].detach(),)


def export_onnx(net: nn.Module, sample: torch.Tensor, path: str | Path) -> Path:
    """Write ``net`` (float, or Brevitas-quantized as QCDQ) to ``path``, batch size dynamic.
    A failure names the first layer that cannot be exported on its own."""
    path = Path(path)
    net = net.eval().cpu()
    quantized = is_quantized(net)
    try:
        atomic_write(path, partial(_write_onnx, net, sample, quantized))
    except Exception as exc:
        layer = failing_layer(net, sample)
        where = f" in layer '{layer}' ({type(net.get_submodule(layer)).__name__})" if layer else ""
        kind = "quantized (QCDQ)" if quantized else "float"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FewlabelError(
            f"ONNX export of the {kind} network failed{where}: {type(exc).__name__}: {first_line}"
        ) from None
    return path


def _write_onnx(net: nn.Module, sample: torch.Tensor, quantized: bool, target: Path) -> None:
    kwargs = dict(
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}},
        dynamo=False,
        opset_version=OPSET,
    )
    if quantized:
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(net, sample, export_path=str(target), **kwargs)
    else:
        torch.onnx.export(net, (sample,), str(target), **kwargs)


def session(path: str | Path, threads: int | None = None, optimized: str | Path | None = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(sess, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits of an onnxruntime session on preprocessed images."""
    outputs = [sess.run(None, {"images": images[i : i + batch].numpy()})[0] for i in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(outputs))


def optimized_session(path: str | Path) -> tuple[object, dict[str, int]]:
    """An onnxruntime session for ``path`` and the node counts of the graph it runs after its
    optimisations: the integer kernels (``INTEGER_OPS``) and the float convolutions and matrix
    products left (read from the optimised graph onnxruntime writes while building the session)."""
    import onnx

    with tempfile.TemporaryDirectory() as workdir:
        optimized = Path(workdir) / "optimized.onnx"
        sess = session(path, optimized=optimized)
        counts = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    kinds = (*INTEGER_OPS, "Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul")
    return sess, {kind: counts[kind] for kind in kinds if counts[kind]}


def median_ms(run, repeats: int, warmup: int = 3) -> float:
    """Median wall milliseconds of ``run()`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def latencies(net: nn.Module | None, sess, side: int, batches=(1, 64), repeats=(30, 5)) -> dict[str, float]:
    """CPU latency in ms at each batch size, of eager PyTorch (``net``) or an onnxruntime session."""
    out = {}
    for batch, count in zip(batches, repeats, strict=True):
        x = torch.randn(batch, 3, side, side)
        if net is not None:
            with torch.inference_mode():
                out[f"batch_{batch}_ms"] = median_ms(partial(net, x), count)
        else:
            out[f"batch_{batch}_ms"] = median_ms(partial(sess.run, None, {"images": x.numpy()}), count)
    return out


def parity_images(card, count: int = 64, seed: int = 0) -> torch.Tensor:
    """A seeded batch of uniform-noise images, preprocessed as the model's inputs are."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, 3, card.img_size, card.img_size, generator=generator)
    mean, std = torch.tensor(card.mean).view(1, -1, 1, 1), torch.tensor(card.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


@dataclass
class ExportCheck:
    """An exported network, its onnxruntime session and kernels, and its logits on the check's
    images from PyTorch (``expected``) and onnxruntime (``got``)."""

    path: Path
    session: object
    kernels: dict[str, int]
    expected: torch.Tensor
    got: torch.Tensor

    @property
    def agreement(self) -> float:
        return float((self.got.argmax(1) == self.expected.argmax(1)).float().mean())


def checked_export(net: nn.Module, images: torch.Tensor, out: str | Path) -> ExportCheck:
    """Export ``net`` to ``out`` and run it on ``images`` in PyTorch and in onnxruntime."""
    path = export_onnx(net, images[:1], out)
    with torch.inference_mode():
        expected = net.eval()(images)
    sess, kernels = optimized_session(path)
    return ExportCheck(path, sess, kernels, expected, onnx_logits(sess, images))


def export_model(net: nn.Module, card, out: str | Path) -> dict:
    """Export a loaded run's network to ``out`` and check it: onnxruntime against PyTorch on
    :func:`parity_images` (argmax agreement, largest logit difference), the file's size, and
    the kernels onnxruntime runs it with."""
    images = parity_images(card)
    check = checked_export(net, images, out)
    return {
        "path": str(check.path),
        "quantized": is_quantized(net),
        "size_bytes": check.path.stat().st_size,
        "parity_images": len(images),
        "argmax_agreement": check.agreement,
        "max_abs_logit_difference": float((check.got - check.expected).abs().max()),
        "onnxruntime_kernels": check.kernels,
    }

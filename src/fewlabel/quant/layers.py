"""Quantized networks from float ones, with Brevitas layers.

A float timm network becomes a quantization-aware one in two steps:

* :func:`fold_batchnorm`: every BatchNorm that directly follows a convolution (found on the
  torch.fx graph, so any timm CNN works) is folded into it, as Brevitas recommends before
  export: the exported graph then holds Conv -> QuantizeLinear patterns that onnxruntime runs
  with integer kernels, and training sees the weights that will be deployed. A BatchNorm with
  an activation (timm's BatchNormAct2d) leaves its activation in place.
* :func:`quantize_layers`: every Conv2d and Linear becomes a Brevitas QuantConv2d /
  QuantLinear whose weights (per output channel) and input activations (per tensor) are
  quantized with learned scales, and whose bias is quantized at the product of the input and
  weight scales (an int32 in the export) to ``BIAS_BITS`` = 21 bits: a channel whose folded
  BatchNorm scale is near 0 has tiny weights, hence a tiny weight scale, and a bias of millions
  of steps; past 2**21 float32 no longer holds such an integer to the 0.2 Brevitas checks at
  export, so the export failed. Clamping there changes only those near-constant channels (an
  ordinary channel's bias is some thousands of steps), and training sees the clamp too.
  Scales are parameters initialised by Brevitas from statistics (weights: the MSE-optimal
  scale on the first forward pass; activations: the MSE-optimal scale averaged over
  calibration batches, :func:`calibrate`), then learned with the straight-through estimator.
  A layer whose input was never negative on the sample (after ReLU/ReLU6) gets an unsigned
  activation quantizer, the others a signed one: at 2 bits a signed quantizer would leave a
  non-negative input one useful level. The first and the last quantized layers take
  ``first_last_bits`` for their weights and inputs.

The same :func:`quantize_layers` re-quantizes an already quantized network at another
precision (a schedule's next stage): the float weights carry over, the quantizers are new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from ..errors import FewlabelError

MIN_BITS, MAX_BITS = 2, 16
BIAS_BITS = 21
QUANT_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class BitSpec:
    """Bit widths of one precision: weights and activations of the inner layers, of the first
    and last layers, and of every bias (runs saved before the bias took ``BIAS_BITS`` used 32)."""

    weight_bits: int
    act_bits: int
    first_last_bits: int = 8
    bias_bits: int = BIAS_BITS

    @property
    def label(self) -> str:
        return f"W{self.weight_bits}A{self.act_bits}"


def check_bits(name: str, value: object) -> int:
    """``value`` as a bit width, or a one-line error naming ``name`` and what is accepted."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise FewlabelError(
            f"{name} {value!r} is not accepted: an integer from {MIN_BITS} to {MAX_BITS} "
            "(1 bit would need a binary sign quantizer, which fewlabel does not provide)."
        )
    return value


class _BatchNormLeaf(fx.Tracer):
    """A tracer that keeps every BatchNorm (timm's BatchNormAct2d too) as one node."""

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(m, name)


def conv_batchnorm_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BatchNorm reads the convolution's output and
    nothing else does."""
    modules = dict(net.named_modules())
    try:
        graph = _BatchNormLeaf().trace(net)
    except Exception as exc:  # tracing fails on data-dependent control flow
        raise FewlabelError(
            f"{type(net).__name__} cannot be traced to fold its BatchNorm layers ({type(exc).__name__}: {exc})."
        ) from None
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attribute, module)


def fold_batchnorm(net: nn.Module) -> list[tuple[str, str]]:
    """Fold, in place, each BatchNorm that follows a convolution into it (its running
    statistics and affine parameters become the convolution's weight scale and bias); the
    BatchNorm becomes its activation (or an identity). Returns the folded pairs."""
    pairs = conv_batchnorm_pairs(net)
    for conv_name, bn_name in pairs:
        bn = net.get_submodule(bn_name)
        fold_into(net.get_submodule(conv_name), bn)
        set_module(net, bn_name, batchnorm_remainder(bn))
    return pairs


@torch.no_grad()
def fold_into(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` as BatchNorm does in eval mode (adds a bias)."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    conv.bias = nn.Parameter(beta + (bias - bn.running_mean) * scale)


def batchnorm_remainder(bn: nn.Module) -> nn.Module:
    """What is left of a folded BatchNorm: timm's BatchNormAct2d keeps its dropout and activation."""
    parts = [getattr(bn, name) for name in ("drop", "act") if isinstance(getattr(bn, name, None), nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def quantizable_layers(net: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear layers, in order (Brevitas' quant layers are subclasses)."""
    return [name for name, m in net.named_modules() if isinstance(m, QUANT_TYPES)]


def check_quantizable(net: nn.Module) -> None:
    """Refuse, naming the first, a layer that is a Conv2d or Linear of another kind (timm's
    Conv2dSame pads in its forward, which a Brevitas layer would drop)."""
    import brevitas.nn as qnn

    known = (nn.Conv2d, nn.Linear, qnn.QuantConv2d, qnn.QuantLinear)
    for name in quantizable_layers(net):
        kind = type(net.get_submodule(name))
        if kind not in known:
            raise FewlabelError(
                f"layer '{name}' is a {kind.__name__}, which cannot be quantized (plain Conv2d and Linear only); "
                "choose another architecture."
            )


@torch.no_grad()
def signed_inputs(net: nn.Module, sample: torch.Tensor) -> list[str]:
    """The quantizable layers whose input held a negative value on ``sample`` (eval mode)."""
    seen: dict[str, bool] = {}
    hooks = []
    for name in quantizable_layers(net):

        def record(module, inputs, name=name):
            seen[name] = seen.get(name, False) or bool((inputs[0] < 0).any())

        hooks.append(net.get_submodule(name).register_forward_pre_hook(record))
    was_training = net.training
    try:
        net.eval()(sample)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return [name for name, negative in seen.items() if negative]


@torch.no_grad()
def calibrate(net: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Initialise every learned scale of a freshly quantized network, so that the optimiser
    sees them all from the first step: the activation scales from ``images`` (Brevitas'
    calibration mode: float activations flow, each quantizer averages its statistic over the
    batches, then its scale becomes a parameter), then the weight scales (one forward pass).
    The float layers run in eval mode (no dropout), whatever mode the network was left in: a
    resumed run calibrates what an uninterrupted one does."""
    from brevitas.graph.calibrate import calibration_mode

    was_training = net.training
    net.eval()
    with calibration_mode(net):
        for start in range(0, len(images), batch_size):
            net(images[start : start + batch_size])
    net(images[:1])
    net.train(was_training)


def materialize_scales(net: nn.Module, channels: int, side: int) -> nn.Module:
    """Create the learned scales of a rebuilt network from two random images, so that its
    state dict has the keys of a saved one (whose values are loaded next)."""
    calibrate(net, torch.rand(2, channels, side, side), 2)
    return net.eval()


def quantizers(bits: int, signed: bool, bias_bits: int = BIAS_BITS) -> dict:
    """Brevitas keyword arguments of one layer: learned-scale weight, input and bias quantizers."""
    from brevitas.quant.scaled_int import (
        Int8ActPerTensorFloatMSE,
        Int8WeightPerChannelFloatMSE,
        Int32Bias,
        Uint8ActPerTensorFloatMSE,
    )

    return dict(
        weight_quant=Int8WeightPerChannelFloatMSE,
        weight_bit_width=bits,
        input_quant=Int8ActPerTensorFloatMSE if signed else Uint8ActPerTensorFloatMSE,
        bias_quant=Int32Bias,
        bias_bit_width=bias_bits,
    )


def quantized_layer(
    layer: nn.Module, weight_bits: int, act_bits: int, signed: bool, bias_bits: int = BIAS_BITS
) -> nn.Module:
    """A Brevitas copy of a Conv2d or Linear (or of a quant layer) with the float weights."""
    import brevitas.nn as qnn

    kwargs = quantizers(weight_bits, signed, bias_bits) | {"input_bit_width": act_bits}
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise FewlabelError(f"padding mode '{layer.padding_mode}' cannot be quantized (zeros only).")
        new = qnn.QuantConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, bias=has_bias, **kwargs,
        )  # fmt: skip
    else:
        new = qnn.QuantLinear(layer.in_features, layer.out_features, bias=has_bias, **kwargs)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if has_bias:
            new.bias.copy_(layer.bias)
    return new.to(layer.weight.device)


def quantize_layers(net: nn.Module, spec: BitSpec, signed: list[str]) -> nn.Module:
    """Replace, in place, every Conv2d and Linear of ``net`` (float or quantized) by a Brevitas
    layer at ``spec``'s precision; inputs of the layers in ``signed`` get a signed quantizer.
    Returns ``net``; its activation scales are initialised by :func:`calibrate`."""
    names = quantizable_layers(net)
    check_quantizable(net)
    if not names:
        raise FewlabelError(f"{type(net).__name__} has no Conv2d or Linear layer to quantize.")
    signed_set = set(signed)
    for index, name in enumerate(names):
        edge = index in (0, len(names) - 1)
        weight_bits = spec.first_last_bits if edge else spec.weight_bits
        act_bits = spec.first_last_bits if edge else spec.act_bits
        layer = net.get_submodule(name)
        try:
            new = quantized_layer(layer, weight_bits, act_bits, name in signed_set, spec.bias_bits)
        except FewlabelError as exc:
            raise FewlabelError(f"layer '{name}': {exc}") from None
        set_module(net, name, new)
    return net


def float_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The float tensors of a quantized network (weights, biases), without the quantizers' scales."""
    return {k: v for k, v in net.state_dict().items() if "_quant." not in k}

"""An encoder-decoder for dense prediction (one value per pixel): a timm encoder (ImageNet
weights where available, the offline EfficientNet-Lite included) and a small U-Net decoder of
our own that returns a map at the input's full resolution. Nucleus detection (a proximity map)
and monocular depth (log depth) share it.

Why our own decoder rather than segmentation-models-pytorch: smp builds its timm encoders
itself and fetches their weights from the hub, so the offline ImageNet weights this project
relies on, fewlabel's weight registry and its checks (another architecture's file, a quantized
run) would all have to be bypassed; the decoder itself is a few lines. Each decoder step
upsamples by two, concatenates the encoder map of that stride and applies a 3x3 convolution,
batch norm and ReLU; a last step joins a full-resolution 3x3 convolution of the image (the
encoder's first map is at stride 2), and a 1x1 convolution gives the map. The output is linear:
each task decides what it means (a squashing function, e.g. a sigmoid for a [0, 1] target
with most pixels 0, saturates early and stops learning; we saw this with EfficientNet-Lite0 at
lr 1e-3).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewlabelError
from ..fileio import read_tensors
from ..rundir import CARD
from .backbones import BackboneInfo, create_encoder
from .files import ModelCard

DEFAULT_STAGES = 4  # encoder stages used: strides 2 to 16 on timm's usual five-stage CNNs


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class EncoderDecoder(nn.Module):
    """Image (B x 3 x H x W, normalised; H and W multiples of ``stride``) to one map
    (B x 1 x H x W, linear)."""

    def __init__(self, encoder: nn.Module, width: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        channels = list(encoder.channels)
        self.stride = int(max(encoder.reductions))
        self.ups = nn.ModuleList()
        deeper = channels[-1]
        for skip in reversed(channels[:-1]):
            self.ups.append(_block(deeper + skip, width))
            deeper = width
        self.full_resolution = _block(3, width // 2)
        self.last = _block(deeper + width // 2, width // 2)
        self.out = nn.Conv2d(width // 2, 1, 1)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer groups of the encoder (stem, then stages or blocks) with their names inside
        this network; the decoder matches none, so it is the last group: ``layer-decay`` trains it
        at the full rate and the encoder slower with depth, ``partial:N`` keeps it and the last N
        encoder blocks trainable. Without this every strategy saw one group (layer-decay = full)."""
        inner = getattr(self.encoder.model, "group_matcher", None)
        if inner is None:
            return {}
        prefix = r"^encoder\.model\."

        def named_here(pattern: str) -> str:
            return f"{prefix}(?:{pattern.replace('^', '')})"

        return {
            group: named_here(rule) if isinstance(rule, str) else [(named_here(p), order) for p, order in rule]
            for group, rule in inner(coarse=coarse).items()
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            y = block(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="nearest"), skip], 1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        y = self.last(torch.cat([y, self.full_resolution(x)], 1))
        return self.out(y)


def check_side(model: EncoderDecoder, img_size: int, task: str) -> None:
    """Refuse a training side that is not a multiple of the network's stride, naming the nearest that is."""
    if img_size % model.stride:
        nearest = max(model.stride, img_size // model.stride * model.stride)
        raise FewlabelError(
            f"img_size {img_size}: the {task} task trains on squares whose side is a multiple of the network's "
            f"stride {model.stride} (e.g. {nearest})."
        )


def build_encoder_decoder(
    task: str, arch: str, pretrained: str = "imagenet", stages: int = DEFAULT_STAGES, width: int = 32
) -> tuple[EncoderDecoder, BackboneInfo, ModelCard | None]:
    """The network on the first ``stages`` stages of ``arch`` with ``pretrained`` weights: an
    encoder's (``none``, ``imagenet``, ``hub``, a classifier's .safetensors), or a whole trained
    network's (the model.safetensors of an earlier run of ``task``, to fine-tune it on other
    data; its card is returned too, else None)."""
    card = run_card(pretrained, task)
    if card is not None:
        model, info = _from_run(Path(pretrained), card, arch, stages, width)
        return model, info, card
    encoder, info = create_encoder(arch, pretrained, indices=tuple(range(stages)))
    return EncoderDecoder(encoder, width), info, None


def run_card(pretrained: str, task: str) -> ModelCard | None:
    """The card of the ``task`` run whose model.safetensors ``pretrained`` names (None: not one)."""
    path = Path(pretrained)
    if path.suffix != ".safetensors" or not (path.parent / CARD).is_file():
        return None
    card = ModelCard.from_file(path.parent / CARD)
    return card if card.task == task else None


def _from_run(path: Path, card: ModelCard, arch: str, stages: int, width: int):
    """A trained network, whole: the same architecture and decoder are required."""
    theirs = (card.arch, card.extras.get("stages"), card.extras.get("decoder_width"))
    if theirs != (arch, stages, width):
        raise FewlabelError(
            f"--pretrained '{path}' is a {card.task} network with encoder {theirs[0]}, {theirs[1]} stages and decoder "
            f"width {theirs[2]}; this run asks for {arch}, {stages} and {width}: give the same, or start from imagenet."
        )
    encoder, _ = create_encoder(arch, "none", indices=tuple(range(stages)))
    model = EncoderDecoder(encoder, width)
    state = read_tensors(path)
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise FewlabelError(f"--pretrained '{path}' does not fit the network it describes (first: '{bad[0]}').")
    model.load_state_dict(state)
    return model, BackboneInfo(arch, tuple(card.mean), tuple(card.std), str(path))

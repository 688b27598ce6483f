"""The detector network: the shared encoder-decoder (:mod:`fewlabel.models.dense`) regressing
the proximity map at the input's full resolution, linear output (a sigmoid saturated: most
target pixels are 0)."""

from __future__ import annotations

from ..models import BackboneInfo
from ..models.dense import DEFAULT_STAGES, EncoderDecoder, build_encoder_decoder

ProximityNet = EncoderDecoder


def build_detector(
    arch: str, pretrained: str = "imagenet", stages: int = DEFAULT_STAGES, width: int = 32
) -> tuple[EncoderDecoder, BackboneInfo]:
    """The detector on the first ``stages`` stages of ``arch`` with ``pretrained`` weights: an
    encoder's, or a whole trained detector's (the model.safetensors of a nuclei run)."""
    model, info, _ = build_encoder_decoder("nuclei", arch, pretrained, stages, width)
    return model, info

"""Batched inference over an ImageSet, shared by feature extraction, evaluation and prediction."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..data.builtin import cache_root
from ..data.datasets import TransformedImages
from ..data.imageset import ImageSet
from ..fileio import atomic_write

log = logging.getLogger("fewlabel.train")


@torch.inference_mode()
def batched_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    desc: str = "inference",
    progress: bool = True,
) -> torch.Tensor:
    """Apply ``fn`` to transformed images in batches; outputs concatenated on the CPU."""
    dataset = TransformedImages(images, transform)
    outputs = []
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    for start in tqdm(
        range(0, len(dataset), batch_size), total=n_batches, desc=desc, leave=False, disable=not progress
    ):
        batch = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        outputs.append(fn(batch.to(device)).float().cpu())
    return torch.cat(outputs)


def pre_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's pooled embedding (timm's ``forward_head(pre_logits=True)``)."""
    return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)


def weights_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


class FeatureCache:
    """Backbone embeddings computed once per (data, transform, weights), kept in memory and,
    with ``mode='disk'``, under ``$FEWLABEL_CACHE_DIR/features`` as safetensors files."""

    def __init__(self, mode: str = "disk", folder: Path | None = None) -> None:
        self.mode = mode
        self.folder = folder or cache_root() / "features"
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def features(
        self,
        model: nn.Module,
        images: ImageSet,
        transform,
        transform_id: str,
        batch_size: int,
        device,
        progress: bool,
        fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``fn`` (default the model's pooled embedding) of the images, keyed by the images, the
        transform and the model's weights."""
        fn_name = f"|{getattr(fn, '__name__', repr(fn))}" if fn else ""
        key = hashlib.sha256(
            f"{images.fingerprint()}|{transform_id}|{weights_fingerprint(model)}{fn_name}".encode()
        ).hexdigest()[:32]
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.folder / f"{key}.safetensors"
        if self.mode == "disk" and path.is_file():
            self.hits += 1
            feats = load_file(str(path))["features"]
        else:
            self.misses += 1
            was_training = model.training
            model.eval()
            feats = batched_outputs(
                fn or pre_logits(model),
                images,
                transform,
                batch_size,
                device,
                desc=f"features of {images.source or 'images'}",
                progress=progress,
            )
            model.train(was_training)
            if self.mode == "disk":
                atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, str(tmp)))
        if self.mode != "off":
            self._memory[key] = feats
        return feats

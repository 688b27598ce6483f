"""Batched inference over an ImageSet, shared by feature extraction, evaluation and prediction."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import BatchTransform
from ..data.builtin import cache_root
from ..data.imageset import ImageSet
from ..fileio import atomic_write

log = logging.getLogger("fewlabel.train")


def first_batch_size(device: torch.device, img_size: int) -> int:
    """The batch inference starts with: on CUDA about 2^26 input values (4096 images at 64 px,
    256 at 224 px), halved on every out-of-memory error; on the CPU 256, beyond which larger
    batches only cost memory."""
    if device.type != "cuda":
        return 256
    return max(16, min(8192, 2 ** int(math.log2(2**26 / (3 * img_size * img_size)))))


def autocast_dtype(device: torch.device, mixed: bool | None) -> torch.dtype | None:
    """The autocast dtype of inference: ``mixed`` None means on CUDA only (bfloat16 where the
    GPU has it, else float16); on the CPU, bfloat16 when asked."""
    if mixed is False or (mixed is None and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@torch.inference_mode()
def batched_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: ImageSet,
    transform: BatchTransform,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    desc: str = "inference",
    progress: bool = True,
    mixed: bool | None = None,
) -> torch.Tensor:
    """``fn`` of the transformed images, in batches on ``device``: uint8 images are copied
    there (pinned, non-blocking on CUDA), transformed there, run under autocast (see
    :func:`autocast_dtype`), and the outputs gathered as float32 on the CPU. The batch starts
    at ``batch_size`` (default :func:`first_batch_size`) and halves whenever the device runs
    out of memory."""
    device = torch.device(device)
    pixels = images.images
    size = batch_size or first_batch_size(device, transform.img_size)
    dtype = autocast_dtype(device, mixed)
    outputs: list[torch.Tensor] = []
    start = 0
    with tqdm(total=len(pixels), desc=desc, leave=False, disable=not progress, unit="img") as bar:
        while start < len(pixels):
            chunk = pixels[start : start + size]
            try:
                outputs.append(_outputs_of(fn, chunk, transform, device, dtype))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                size //= 2
                log.info("%s: out of memory, batch halved to %d", desc, size)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += len(chunk)
            bar.update(len(chunk))
    return torch.cat(outputs)


def _outputs_of(fn, chunk: torch.Tensor, transform: BatchTransform, device: torch.device, dtype) -> torch.Tensor:
    if device.type == "cuda":
        x = transform(chunk.pin_memory().to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
    else:
        x = transform(chunk.to(device))
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return fn(x).float().cpu()


def pre_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's pooled embedding (timm's ``forward_head(pre_logits=True)``)."""
    return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)


def classifier_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of a timm model's classifier (none for a model without one)."""
    if not hasattr(model, "get_classifier"):
        return []
    head = model.get_classifier()
    prefixes = tuple(f"{name}." for name, module in model.named_modules() if module is head and name)
    return [k for k in model.state_dict() if prefixes and k.startswith(prefixes)]


def weights_fingerprint(model: nn.Module, without_classifier: bool = False) -> str:
    """A hash of the model's weights; ``without_classifier`` leaves out the classifier's, which
    pooled embeddings do not depend on (so the mirror test's backbone, a probe's and a
    fine-tuning run's head phase share their cached features)."""
    skip = set(classifier_keys(model)) if without_classifier else set()
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name in skip:
            continue
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
        transform: BatchTransform,
        device,
        progress: bool,
        fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``fn`` (default the model's pooled embedding) of the images, keyed by the images, the
        transform, the model's weights and the precision they are computed in."""
        fn_name = f"|{getattr(fn, '__name__', repr(fn))}" if fn else ""
        precision = autocast_dtype(torch.device(device), None)
        weights = weights_fingerprint(model, without_classifier=fn is None)
        key = hashlib.sha256(
            f"{images.fingerprint()}|{transform.describe()}|{weights}{fn_name}|{precision}".encode()
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
                device=device,
                desc=f"features of {images.source or 'images'}",
                progress=progress,
            )
            model.train(was_training)
            if self.mode == "disk":
                atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, str(tmp)))
        if self.mode != "off":
            self._memory[key] = feats
        return feats

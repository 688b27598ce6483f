"""Decode image files of any common mode into uint8 tensors, once.

Grayscale, RGB, RGBA, palette, 16-bit and CMYK files all load. Transparent images are
composited on white. Pillow's decompression-bomb limit stays on, and an image over the
limit is refused even where Pillow would only warn.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")


class ImageDecodeError(Exception):
    """A file that is not a readable image (corrupt, truncated, empty, not an image, too large)."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Return an HxWxC uint8 array with C=1 (grayscale) or C=3 (colour)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return ((arr - lo) * scale).round().astype(np.uint8)[..., None]
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _refuse_bombs(img: Image.Image) -> None:
    """Refuse more pixels than Pillow's MAX_IMAGE_PIXELS, where Pillow itself only warns
    (it raises above twice the limit). Checked here rather than through a warnings filter,
    which is not thread-safe."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.size[0] * img.size[1] > limit:
        raise ImageDecodeError(
            f"refused as a decompression bomb ({img.size[0]}x{img.size[1]} pixels exceeds the limit of {limit})"
        )


def decode_image(source: str | Path | bytes) -> torch.Tensor:
    """Read one file (or its bytes) into a CxHxW uint8 tensor, raising ImageDecodeError with the reason."""
    try:
        if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
            raise ImageDecodeError("empty file")
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            _refuse_bombs(img)
            img.load()
            arr = pil_to_array(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """A decoded image (1 or 3 channels, :func:`pil_to_array`) as 3 x H x W, grayscale repeated."""
    return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def decode_rgb_files(paths: list[Path]) -> list[torch.Tensor]:
    """Every file decoded as 3 x H x W uint8, all before any output is written: the first
    unreadable one is refused, named, with nothing written."""
    from ..errors import FewlabelError

    images = []
    for path in paths:
        try:
            images.append(to_rgb(decode_image(path)))
        except ImageDecodeError as exc:
            raise FewlabelError(f"Unreadable image '{path}': {exc}; nothing written.") from None
    return images


def resize_to_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop to size x size (uint8 in, uint8 out)."""
    _, h, w = image.shape
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = F.interpolate(
        image[None].float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized[:, top : top + size, left : left + size]
    return cropped.round().clamp(0, 255).to(torch.uint8)

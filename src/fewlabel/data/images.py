"""Decode image files of any common mode into uint8 tensors, once.

Grayscale, RGB, RGBA, palette, 16-bit and CMYK files all load. Transparent images are
composited on white. Pillow's decompression-bomb limit stays on, and an image over the
limit is refused even where Pillow would only warn.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

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


def _refuse_bombs(img: Image.Image, max_pixels: int | None = None) -> None:
    """Refuse more pixels than ``max_pixels`` (default Pillow's MAX_IMAGE_PIXELS, where Pillow
    itself only warns: it raises above twice the limit). Checked here rather than through a
    warnings filter, which is not thread-safe."""
    pillow = Image.MAX_IMAGE_PIXELS
    limit = min(n for n in (max_pixels, pillow, float("inf")) if n)
    if img.size[0] * img.size[1] > limit:
        size = f"{img.size[0]}x{img.size[1]} pixels exceeds the limit of {limit}"
        raise ImageDecodeError(f"refused as a decompression bomb ({size})" if limit == pillow else f"{size} pixels")


def _shrink_while_decoding(img: Image.Image, min_side: int) -> None:
    """Ask the decoder for a smaller image whose shorter side stays at least ``min_side``
    (JPEG decodes at 1/2, 1/4 or 1/8 scale directly: Pillow's draft mode)."""
    width, height = img.size
    scale = min_side / min(width, height)
    if scale < 1:
        img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))


_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F")  # what Image.reduce takes (not P, 1, I;16)


def _reduced(img: Image.Image, min_side: int) -> Image.Image:
    """A decoded image shrunk by a whole factor (box average) while its shorter side stays at
    least ``min_side``: later steps (mode conversion, resizing) then work on the small copy.
    Palette, 1-bit and 16-bit images stay at full size (Pillow cannot reduce them)."""
    factor = min(img.size) // min_side
    return img.reduce(factor) if factor >= 2 and img.mode in _REDUCIBLE_MODES else img


def decode_image(
    source: str | Path | bytes, min_side: int | None = None, max_pixels: int | None = None
) -> torch.Tensor:
    """Read one file (or its bytes) into a CxHxW uint8 tensor, raising ImageDecodeError with the reason.

    ``min_side``: the image is only needed with its shorter side at least this long, so it is
    decoded at reduced size where the format allows and shrunk right after decoding (the web
    app: a 9000 x 9000 upload never reaches full size in float). ``max_pixels``: refuse larger
    images (after draft mode) from their header, before decoding; default Pillow's limit."""
    try:
        if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
            raise ImageDecodeError("empty file")
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            if min_side:
                _shrink_while_decoding(img, min_side)
            _refuse_bombs(img, max_pixels)
            img.load()
            arr = pil_to_array(_reduced(img, min_side) if min_side else img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image in a format Pillow reads ({' '.join(IMAGE_EXTENSIONS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(_without_reprs(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__) from None
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


def _without_reprs(text: str) -> str:
    """A decoder's message without Python object reprs (``<_io.BytesIO object at 0x...>``)."""
    return re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", text)


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

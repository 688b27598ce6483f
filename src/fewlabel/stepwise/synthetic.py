"""``synthetic`` intermediate datasets: images made by a generator, for render-then-real stages.

Mahmood et al. (2018) train first on rendered, photorealistic images and then on real ones.
Here any Python callable can be the renderer; the recipe names it as ``module:function``.

Generator contract: ``generator(per_class: int, seed: int, **options)`` returns an iterable
of ``(image, class_name)`` pairs, ``image`` a PIL image or an H x W (x C) uint8 array, and
the same seed must give the same images. The builder writes them as ``images/*.png`` plus
``labels.csv`` (``path,label``), so class names may hold any character (``T-shirt/top``).

:func:`fashion_silhouettes` is the generator shipped for the Fashion-MNIST demo domain.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data.builtin import FASHION_CLASSES
from ..errors import FewlabelError
from ..fileio import write_json, write_text
from ..rundir import BUILT_LABELS, SYNTHETIC_MARKER

MARKER = SYNTHETIC_MARKER
LABELS_FILE = BUILT_LABELS


def resolve_generator(name: str) -> Callable:
    """The callable ``module:function`` names, with one-line errors for each way it can fail."""
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise FewlabelError(
            f"generator '{name}' is not of the form module:function "
            "(for example fewlabel.stepwise.synthetic:fashion_silhouettes)."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FewlabelError(f"generator '{name}': module '{module_name}' cannot be imported ({exc}).") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise FewlabelError(f"generator '{name}': '{module_name}' has no callable '{attribute}'.")
    return function


def build_synthetic(
    generator: str, out: Path, per_class: int = 100, seed: int = 0, options: dict | None = None
) -> dict:
    """Run the generator and write ``out/images/*.png``, ``out/labels.csv`` and, last,
    ``out/synthetic.json`` (its presence marks a finished build)."""
    function = resolve_generator(generator)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, counts = [], Counter()
    for index, item in enumerate(function(per_class, seed, **(options or {}))):
        image, label = _check_item(item, generator, index)
        relative = f"images/{index:06d}.png"
        image.save(out / relative)
        rows.append((relative, label))
        counts[label] += 1
    if len(counts) < 2:
        raise FewlabelError(f"generator '{generator}' made {len(counts)} class(es); classification needs at least 2.")
    buffer = io.StringIO()
    csv.writer(buffer).writerows([("path", "label"), *rows])
    write_text(out / LABELS_FILE, buffer.getvalue())
    summary = {
        "generator": generator,
        "per_class": per_class,
        "seed": seed,
        "options": options or {},
        "sizes": dict(sorted(counts.items())),
    }
    write_json(out / MARKER, summary)
    return summary


def _check_item(item, generator: str, index: int) -> tuple[Image.Image, str]:
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)):
        raise FewlabelError(f"generator '{generator}': item {index} is not an (image, class name) pair.")
    image, label = item
    if isinstance(image, Image.Image):
        return image, label
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise FewlabelError(
            f"generator '{generator}': item {index} is not a PIL image or H x W (x C) uint8 array "
            f"(got {array.dtype} {array.shape})."
        )
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array), label


# Outlines in a unit square (x right, y down), one per Fashion-MNIST class, shoes with the toe
# to the left as in Fashion-MNIST; details drawn dark.
_T_SHIRT = [(0.4, 0.12), (0.6, 0.12), (0.82, 0.2), (0.95, 0.42), (0.8, 0.47), (0.72, 0.36), (0.72, 0.92),
            (0.28, 0.92), (0.28, 0.36), (0.2, 0.47), (0.05, 0.42), (0.18, 0.2)]  # fmt: skip
_LONG_SLEEVES = [(0.4, 0.1), (0.6, 0.1), (0.8, 0.16), (0.94, 0.88), (0.8, 0.9), (0.72, 0.4), (0.72, 0.92),
                 (0.28, 0.92), (0.28, 0.4), (0.2, 0.9), (0.06, 0.88), (0.2, 0.16)]  # fmt: skip
_SHAPES: dict[str, list[tuple[float, float]]] = {
    "T-shirt/top": _T_SHIRT,
    "Trouser": [(0.3, 0.05), (0.7, 0.05), (0.74, 0.97), (0.56, 0.97), (0.5, 0.32), (0.44, 0.97), (0.26, 0.97)],
    "Pullover": _LONG_SLEEVES,
    "Dress": [(0.4, 0.05), (0.6, 0.05), (0.63, 0.35), (0.82, 0.97), (0.18, 0.97), (0.37, 0.35)],
    "Coat": [(x, 0.97 if y > 0.9 else y) for x, y in _LONG_SLEEVES],
    "Sandal": [(0.03, 0.78), (0.03, 0.68), (0.97, 0.6), (0.97, 0.72)],
    "Shirt": _LONG_SLEEVES,
    "Sneaker": [(0.03, 0.8), (0.03, 0.65), (0.4, 0.55), (0.6, 0.4), (0.8, 0.35), (0.97, 0.45), (0.97, 0.8)],
    "Bag": [(0.12, 0.38), (0.88, 0.38), (0.9, 0.92), (0.1, 0.92)],
    "Ankle boot": [(0.03, 0.88), (0.03, 0.66), (0.25, 0.56), (0.5, 0.52), (0.55, 0.1), (0.92, 0.1), (0.95, 0.88)],
}


def fashion_silhouettes(per_class: int, seed: int = 0, size: int = 28, scale: int = 4) -> Iterable:
    """Grey garment silhouettes on black in Fashion-MNIST's ten classes and layout: an outline
    per class (plus straps, handles, collars, buttons, openings), randomly scaled, shifted,
    rotated, shaded and textured. Drawn at ``scale`` times ``size`` and downsampled (smooth
    edges). Crude on purpose: a rendered domain near, not equal to, the real photographs."""
    rng = np.random.default_rng(seed)
    for class_name in FASHION_CLASSES:
        for _ in range(per_class):
            yield _render(class_name, rng, size, scale), class_name


def _render(class_name: str, rng: np.random.Generator, size: int, scale: int) -> Image.Image:
    side = size * scale
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    shrink, dx, dy = rng.uniform(0.78, 1.0), rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05)

    def to_pixels(points):
        return [(side * (0.5 + dx + shrink * (x - 0.5)), side * (0.5 + dy + shrink * (y - 0.5))) for x, y in points]

    brightness = int(rng.integers(110, 250))
    draw.polygon(to_pixels(_SHAPES[class_name]), fill=brightness)
    _details(class_name, draw, to_pixels, brightness, rng, side)
    canvas = canvas.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR)
    array = np.asarray(canvas, dtype=np.float32)
    shade = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0), side)[:, None]
    texture = rng.normal(1.0, rng.uniform(0.02, 0.15), size=array.shape)
    array = np.clip(array * shade * texture, 0, 255).astype(np.uint8)
    image = Image.fromarray(array).filter(ImageFilter.GaussianBlur(scale * 0.3))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _details(class_name: str, draw: ImageDraw.ImageDraw, to_pixels, brightness: int, rng, side: int) -> None:
    dark = int(brightness * rng.uniform(0.2, 0.5))
    width = max(1, side // 40)
    if class_name == "Sandal":
        for x in np.linspace(0.15, 0.85, int(rng.integers(3, 6))):
            draw.line(to_pixels([(x, 0.66), (x + rng.uniform(-0.15, 0.15), 0.35)]), fill=brightness, width=2 * width)
    elif class_name == "Bag":
        draw.arc(
            [*to_pixels([(0.3, 0.12)])[0], *to_pixels([(0.7, 0.62)])[0]], 180, 360, fill=brightness, width=3 * width
        )
    elif class_name == "Coat":
        draw.line(to_pixels([(0.5, 0.12), (0.5, 0.97)]), fill=dark, width=width)
    elif class_name == "Shirt":
        draw.line(to_pixels([(0.42, 0.1), (0.5, 0.25), (0.58, 0.1)]), fill=dark, width=width)
        for y in np.linspace(0.3, 0.85, 5):
            draw.ellipse(to_pixels([(0.48, y), (0.52, y + 0.03)]), fill=dark)
    elif class_name == "Sneaker":
        draw.line(to_pixels([(0.03, 0.74), (0.97, 0.74)]), fill=dark, width=width)

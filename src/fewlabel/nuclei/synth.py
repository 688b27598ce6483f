"""Synthetic microscopy tiles with exact nucleus centres, in styles that differ as organs and
stains do.

A tile is rendered as stain concentrations turned into colour by the Beer-Lambert law with the
haematoxylin, eosin and DAB optical-density vectors scikit-image uses for colour deconvolution
(``skimage.color.rgb_from_hed``), so the colours are those of real stains. The tissue has two
compartments drawn from a smooth random field: epithelium (dense nuclei, cytoplasm, and cell
membranes along the Voronoi boundaries between nuclei) and stroma (sparse, elongated nuclei
following the fibre direction, fibrous texture). Nuclei are ellipses with an irregular
outline, chromatin texture and optionally a darker rim; they may overlap (their stain adds up).
Blur and noise come last. A nucleus's centre is its ellipse's centre, recorded exactly for
every nucleus whose centre lies inside the tile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from skimage.color import rgb_from_hed

from ..errors import unknown_choice
from ..fileio import write_json
from ..outputs import output_folder, register_output_kind
from .data import drop_outside
from .options import STYLE_NAMES

STYLE_RECORD = "style.json"  # fewlabel nuclei synth: the style, count, seed and size of the tiles
SYNTH_OUTPUT = register_output_kind("synthetic tiles", ("train", "test", STYLE_RECORD), (STYLE_RECORD,))

Stain = tuple[float, float, float]  # haematoxylin, eosin, DAB concentrations


@dataclass(frozen=True)
class Style:
    """How an organ and a stain look. Densities are nuclei per 1000 px² of a compartment."""

    name: str
    summary: str
    radius: float  # mean nucleus radius (px)
    radius_sd: float
    elongation: tuple[float, float]  # aspect ratio range of epithelial nuclei
    stroma_elongation: tuple[float, float]
    epithelium: float  # share of the tile that is epithelium
    density_epithelium: float
    density_stroma: float
    min_separation: float  # least centre distance as a share of the two radii; below 1 nuclei overlap
    nucleus_stain: Stain
    nucleus_variation: float  # sd of a per-nucleus factor on its stain (pale and dark nuclei side by side)
    positive_stain: Stain  # a DAB-positive nucleus (nuclear immunostain)
    positive_fraction: float
    cytoplasm_stain: Stain
    stain_over_nuclei: float  # share of the cytoplasm's stain kept over a nucleus (IHC: DAB above and below it)
    membrane_stain: Stain
    stroma_stain: Stain
    fibre_texture: float  # amplitude of the stroma's fibrous texture
    chromatin: float  # amplitude of the texture inside nuclei
    rim: float  # extra stain at a nucleus's edge (vesicular nuclei)
    irregularity: float  # amplitude of the outline's bumps
    blur: float  # Gaussian blur sigma (px)
    noise: float  # Gaussian noise sd (grey levels)


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            "breast-he", "H&E, breast-like: medium nuclei in clustered epithelium, pink fibrous stroma",
            radius=6.0, radius_sd=1.2, elongation=(1.0, 1.5), stroma_elongation=(1.6, 3.0), epithelium=0.5,
            density_epithelium=4.5, density_stroma=0.9, min_separation=0.75, nucleus_stain=(1.05, 0.12, 0.0),
            nucleus_variation=0.0,
            positive_stain=(1.05, 0.12, 0.0), positive_fraction=0.0, cytoplasm_stain=(0.06, 0.5, 0.0),
            stain_over_nuclei=0.0,
            membrane_stain=(0.05, 0.15, 0.0), stroma_stain=(0.02, 0.6, 0.0), fibre_texture=0.35, chromatin=0.35,
            rim=0.35, irregularity=0.08, blur=0.8, noise=4.0,
        ),
        Style(
            "lymph-he", "H&E, lymph-node-like: small, round, dark, densely packed nuclei",
            radius=3.8, radius_sd=0.5, elongation=(1.0, 1.15), stroma_elongation=(1.2, 2.0), epithelium=0.7,
            density_epithelium=12.0, density_stroma=2.5, min_separation=0.85, nucleus_stain=(1.6, 0.05, 0.0),
            nucleus_variation=0.0,
            positive_stain=(1.6, 0.05, 0.0), positive_fraction=0.0, cytoplasm_stain=(0.08, 0.25, 0.0),
            stain_over_nuclei=0.0,
            membrane_stain=(0.0, 0.0, 0.0), stroma_stain=(0.03, 0.45, 0.0), fibre_texture=0.3, chromatin=0.15,
            rim=0.0, irregularity=0.04, blur=1.0, noise=5.0,
        ),
        Style(
            "ihc-dab", "immunohistochemistry: blue counterstained nuclei, brown DAB cytoplasm and membranes",
            radius=6.5, radius_sd=1.3, elongation=(1.3, 2.4), stroma_elongation=(1.8, 3.5), epithelium=0.6,
            density_epithelium=4.5, density_stroma=0.7, min_separation=0.8, nucleus_stain=(0.7, 0.0, 0.02),
            nucleus_variation=0.3,
            positive_stain=(0.5, 0.0, 0.5), positive_fraction=0.1, cytoplasm_stain=(0.03, 0.0, 0.9),
            stain_over_nuclei=0.6, membrane_stain=(0.0, 0.0, 1.4), stroma_stain=(0.07, 0.0, 0.03),
            fibre_texture=0.5, chromatin=0.25, rim=0.2, irregularity=0.1, blur=1.2, noise=3.0,
        ),
    )
}  # fmt: skip


assert tuple(STYLES) == STYLE_NAMES, "options.STYLE_NAMES lists the styles for the command line"


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise unknown_choice("style", name, STYLES)
    return STYLES[name]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-sd smooth noise."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _intensity(rng: np.random.Generator, sd: float) -> float:
    """A nucleus's stain factor; no draw at all without variation (older styles' tiles stay the same)."""
    return float(np.clip(rng.normal(1.0, sd), 0.4, 1.6)) if sd > 0 else 1.0


def _place_nuclei(rng: np.random.Generator, style: Style, epithelium: np.ndarray, fibre_angle: float) -> list[dict]:
    """Nuclei (centre, radii, angle, outline bumps, positive) in the padded canvas: Poisson counts
    per compartment, uniform positions, rejected when closer than ``min_separation``."""
    height, width = epithelium.shape
    nuclei: list[dict] = []
    centres = np.zeros((0, 2))
    radii = np.zeros(0)
    for in_epithelium, density, (lo, hi) in (
        (True, style.density_epithelium, style.elongation),
        (False, style.density_stroma, style.stroma_elongation),
    ):
        area = float((epithelium == in_epithelium).sum())
        for _ in range(rng.poisson(density * area / 1000.0) * 3):  # tries; stops at the count
            if sum(n["epithelium"] == in_epithelium for n in nuclei) >= density * area / 1000.0:
                break
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            if epithelium[min(int(y), height - 1), min(int(x), width - 1)] != in_epithelium:
                continue
            radius = max(1.5, rng.normal(style.radius, style.radius_sd))
            if len(centres):
                gaps = np.hypot(*(centres - (x, y)).T)
                if np.any(gaps < style.min_separation * (radii + radius)):
                    continue
            aspect = rng.uniform(lo, hi)
            angle = rng.uniform(0, np.pi) if in_epithelium else fibre_angle + rng.normal(0, 0.25)
            nuclei.append({
                "x": x, "y": y, "a": radius * np.sqrt(aspect), "b": radius / np.sqrt(aspect), "angle": angle,
                "bumps": rng.normal(0, style.irregularity, size=(3, 2)), "phase": rng.uniform(0, 2 * np.pi, 3),
                "positive": bool(rng.random() < style.positive_fraction), "epithelium": in_epithelium,
                "intensity": _intensity(rng, style.nucleus_variation),
            })  # fmt: skip
            centres = np.vstack([centres, (x, y)])
            radii = np.append(radii, radius)
    return nuclei


def _nucleus_mask(nucleus: dict, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage in [0, 1] with a one-pixel anti-aliased edge, depth: 0 at the edge, 1 at the centre)."""
    dx, dy = cols - nucleus["x"], rows - nucleus["y"]
    cos, sin = np.cos(nucleus["angle"]), np.sin(nucleus["angle"])
    u, v = (dx * cos + dy * sin) / nucleus["a"], (-dx * sin + dy * cos) / nucleus["b"]
    phi = np.arctan2(v, u)
    outline = 1.0 + sum(
        amp * np.cos((k + 2) * phi + nucleus["phase"][k]) for k, amp in enumerate(nucleus["bumps"][:, 0])
    )
    rho = np.hypot(u, v) / outline
    scale = min(nucleus["a"], nucleus["b"])
    coverage = np.clip((1.0 - rho) * scale + 0.5, 0.0, 1.0)
    return coverage, np.clip(1.0 - rho, 0.0, 1.0)


def _membranes(nuclei: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """Cell boundaries between epithelial nuclei: 1 on the Voronoi edges, fading over ~1 px."""
    centres = np.array([(n["x"], n["y"]) for n in nuclei if n["epithelium"]])
    if len(centres) < 2:
        return np.zeros(shape)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    distance, _ = cKDTree(centres).query(np.stack([cols.ravel(), rows.ravel()], 1), k=2)
    gap = (distance[:, 1] - distance[:, 0]).reshape(shape)
    return np.exp(-0.5 * (gap / 1.2) ** 2)


def render_tile(style: Style, size: int | tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3, centres N x 2 as x y) of one tile of ``style``."""
    height, width = (size, size) if isinstance(size, int) else size
    margin = int(np.ceil(4 * style.radius))
    shape = (height + 2 * margin, width + 2 * margin)
    region = _smooth_field(rng, shape, (shape[0] / 10, shape[1] / 10))
    epithelium = region > np.quantile(region, 1.0 - style.epithelium)
    soft_epithelium = gaussian_filter(epithelium.astype(float), 2.0)
    fibre_angle = rng.uniform(0, np.pi)
    streak = _smooth_field(rng, shape, (1.5, 8.0))  # fibres along the rows, then turned
    fibres = np.array(Image.fromarray(streak.astype(np.float32)).rotate(np.degrees(-fibre_angle), resample=2))
    nuclei = _place_nuclei(rng, style, epithelium, fibre_angle)

    stain = np.zeros((3, *shape))
    stroma_texture = np.clip(1.0 + style.fibre_texture * fibres, 0.0, None)
    membrane = _membranes(nuclei, shape) * soft_epithelium
    for channel in range(3):
        stain[channel] = (
            (1 - soft_epithelium) * style.stroma_stain[channel] * stroma_texture
            + soft_epithelium * style.cytoplasm_stain[channel] * (1 + 0.15 * _smooth_field(rng, shape, (3, 3)))
            + membrane * style.membrane_stain[channel]
        )
    chromatin = _smooth_field(rng, shape, (0.8, 0.8))
    occupied = np.zeros(shape)
    nuclear = np.zeros((3, *shape))
    for nucleus in nuclei:
        reach = int(np.ceil(max(nucleus["a"], nucleus["b"]) * 1.4)) + 2
        r0, r1 = max(0, int(nucleus["y"]) - reach), min(shape[0], int(nucleus["y"]) + reach + 1)
        c0, c1 = max(0, int(nucleus["x"]) - reach), min(shape[1], int(nucleus["x"]) + reach + 1)
        rows, cols = np.mgrid[r0:r1, c0:c1]
        coverage, depth = _nucleus_mask(nucleus, rows, cols)
        texture = np.clip(1.0 + style.chromatin * chromatin[r0:r1, c0:c1] + style.rim * (depth < 0.25), 0.2, None)
        colour = np.asarray(style.positive_stain if nucleus["positive"] else style.nucleus_stain) * nucleus["intensity"]
        for channel in range(3):
            nuclear[channel, r0:r1, c0:c1] += coverage * texture * colour[channel]
        occupied[r0:r1, c0:c1] += coverage
    stain = stain * (1 - (1 - style.stain_over_nuclei) * np.clip(occupied, 0, 1)) + nuclear
    optical_density = np.tensordot(stain, rgb_from_hed, axes=([0], [0]))  # H x W x RGB
    image = 245.0 * np.exp(-optical_density)
    image = gaussian_filter(image, (style.blur, style.blur, 0)) + rng.normal(0, style.noise, image.shape)
    image = np.clip(image[margin : margin + height, margin : margin + width], 0, 255).round().astype(np.uint8)
    centres = np.array([(n["x"] - margin, n["y"] - margin) for n in nuclei]).reshape(-1, 2)
    return image, drop_outside(centres, height, width)[0]


def write_synthetic(
    out: str | Path,
    style: str | Style,
    n: int,
    seed: int = 0,
    size: int = 256,
    test_fraction: float = 0.25,
    overwrite: bool = False,
) -> dict:
    """Write ``n`` tiles of ``style`` as ``out/{train,test}/tile-NNNN.png`` with a point CSV
    (``x,y``) beside each; the last ``test_fraction`` of them (at least one) go to ``test``.
    Tile ``i`` depends only on (``seed``, ``i``). Returns what ``out/style.json`` records. A
    folder that holds files already is refused unless ``overwrite`` (see :mod:`fewlabel.outputs`)."""
    style = get_style(style) if isinstance(style, str) else style
    with output_folder(out, SYNTH_OUTPUT.name, overwrite=overwrite) as folder:
        return _write_tiles(folder, style, n, seed, size, test_fraction)


def _write_tiles(out: Path, style: Style, n: int, seed: int, size: int, test_fraction: float) -> dict:
    n_test = max(1, round(n * test_fraction)) if n > 1 else 0
    counts = {"train": 0, "test": 0}
    for index in range(n):
        split = "test" if index >= n - n_test else "train"
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        image, centres = render_tile(style, size, np.random.default_rng([seed, index]))
        Image.fromarray(image).save(folder / f"tile-{index:04d}.png")
        np.savetxt(folder / f"tile-{index:04d}.csv", centres, fmt="%.2f", delimiter=",", header="x,y", comments="")
        counts[split] += 1
    record = {"style": asdict(style), "n": n, "seed": seed, "size": size, "images": counts}
    write_json(out / STYLE_RECORD, record)
    return record


def with_changes(style: Style, **changes) -> Style:
    """A copy of ``style`` with some parameters changed (a user's own style)."""
    return replace(style, **changes)

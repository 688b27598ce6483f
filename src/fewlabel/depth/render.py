"""Colon-like scenes with exact per-pixel depth, rendered as an endoscope sees them.

The scene is a tube whose cross-section at depth ``z`` (millimetres along the camera's axis) is
centred on a bending centre line ``a(z)`` and has the radius ``R(z, theta)``: a base radius
narrowed by haustral folds, ridges that repeat along the tube and are lower over the three
taeniae (``cos 3 theta``). The camera (pinhole, light at the camera as in an endoscope) sits
inside at the origin looking along +z; its offset from the centre line and the tube's tilt
come from ``a(z)``. A pixel's ray is ``z (u, v, 1)``; it meets the wall at the first ``z`` where
``|z (u, v) - a(z)| >= R(z, theta)``. Rays of one image angle share a half-plane, where each
depth slice's wall lies at two closed-form offsets, so the crossing is a sorted search over
slices (:func:`polar_depth`), computed on a polar grid and resampled to pixels
(:func:`ray_cast`). Rays that reach ``FAR_MM`` stop on a cap there (the lumen beyond a bend).
Depth is the planar depth ``z`` in millimetres (what depth sensors and depth datasets store).

Styles: ``synthetic`` shades the wall flat Lambertian in one colour (no fall-off, no
texture); ``cinematic`` adds inverse-square fall-off of the light, a wet specular highlight
(Blinn-Phong with the light at the eye), wrap-around and blurred reddish light for
subsurface scattering, vessel and mucosa texture, vignetting, auto-exposure and sensor noise.
Every parameter of anatomy and lighting is drawn per image from a range; ``held_out`` draws
from bands just outside the training ranges, for testing on conditions no training image had.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import FewlabelError, unknown_choice
from ..fileio import write_json
from ..outputs import output_folder, register_output_kind
from ..rundir import RENDER_RECORD
from .options import RENDER_OUTSIDE, RENDER_STYLES

FOV_DEGREES = 110.0  # horizontal field of view of the endoscope camera (fixed: known intrinsics)
NEAR_MM, FAR_MM = 1.0, 200.0
RENDER_OUTPUT = register_output_kind("rendered depth data", ("train", "test", RENDER_RECORD), (RENDER_RECORD,))
ANGLES, SLICES = 1024, 256  # the ray caster's angular bins and depth slices


@dataclass(frozen=True)
class Range:
    """A parameter's training range ``[low, high]`` and the held-out band ``spread`` beyond each end."""

    low: float
    high: float
    spread: float

    def draw(self, rng: np.random.Generator, held_out: bool) -> float:
        if not held_out:
            return float(rng.uniform(self.low, self.high))
        if self.low - self.spread >= 0 and rng.random() < 0.5:  # no band below a range that starts near 0
            return float(rng.uniform(self.low - self.spread, self.low))
        return float(rng.uniform(self.high, self.high + self.spread))


ANATOMY = {
    "radius_mm": Range(20.0, 30.0, 5.0),
    "fold_depth": Range(0.15, 0.32, 0.08),  # share of the radius a fold takes away at its crest
    "fold_spacing_mm": Range(18.0, 28.0, 5.0),
    "bend_mm": Range(0.0, 14.0, 6.0),  # amplitude of the centre line's bends
    "bend_wavelength_mm": Range(90.0, 160.0, 30.0),
    "offset": Range(0.0, 0.3, 0.1),  # camera's distance from the centre line, share of the radius
    "tilt": Range(0.0, 0.12, 0.05),  # slope of the tube's axis against the camera's
}
PATIENT_ANATOMY = ("radius_mm", "fold_depth", "fold_spacing_mm", "bend_mm", "bend_wavelength_mm")
PATIENT_PHASES = (0, 3, 4, 5, 6)  # Tube's bend axes, taeniae, bend and fold phases (see Tube)
LIGHTING = {
    "exposure": Range(0.75, 0.95, 0.1),  # the brightness auto-exposure aims the 99th percentile at
    "specular": Range(0.15, 0.45, 0.15),
    "shininess": Range(20.0, 60.0, 15.0),
    "subsurface": Range(0.2, 0.5, 0.15),
    "vessels": Range(0.2, 0.6, 0.2),
    "vignetting": Range(0.2, 0.5, 0.15),
    "noise": Range(0.005, 0.02, 0.01),
}
GROUPS = {"anatomy": ANATOMY, "lighting": LIGHTING}  # what --outside may shift alone
assert ("all", *GROUPS) == RENDER_OUTSIDE, "options.RENDER_OUTSIDE lists the groups for the command line"


@dataclass(frozen=True)
class Scene:
    """One image's anatomy and lighting (every field drawn by :func:`draw_scene`)."""

    values: dict
    phases: tuple[float, ...]  # random phases and directions of folds, bends and textures
    colour: tuple[float, float, float]

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


def draw_scene(rng: np.random.Generator, held_out: bool = False, patient: Scene | None = None,
               outside: str = "all") -> Scene:  # fmt: skip
    """Anatomy and lighting from the training ranges, or (``held_out``) from the bands outside them:
    every parameter, or with ``outside`` ``anatomy`` or ``lighting`` only that group's (the other
    drawn from its training ranges), to tell which shift a model fails on.

    With ``patient`` (a scene drawn before), the colon is that patient's: its :data:`PATIENT_ANATOMY`,
    fold and bend phases and mucosa colour; the view is new: the camera moved along the colon by a
    random distance (the bends and folds shift), its offset and tilt, the stretch of mucosa
    (texture) and the lighting are drawn afresh."""
    values = {
        name: r.draw(rng, held_out and outside in ("all", group))
        for group, table in GROUPS.items()
        for name, r in table.items()
    }
    colour = tuple(float(c) for c in np.array([0.85, 0.45, 0.38]) * rng.uniform(0.85, 1.1, 3))
    phases = [float(p) for p in rng.uniform(0, 2 * math.pi, 24)]
    if patient is None:
        return Scene(values, tuple(phases), colour)
    values |= {name: patient.values[name] for name in PATIENT_ANATOMY}
    for index in PATIENT_PHASES:
        phases[index] = patient.phases[index]
    moved = float(rng.uniform(0, values["bend_wavelength_mm"]))  # the camera's new place along the colon
    return Scene(values, tuple(Tube.moved_along(phases, values, moved)), patient.colour)


@functools.lru_cache(maxsize=8)
def pixel_rays(size: int, fov_degrees: float = FOV_DEGREES) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v): each pixel centre's ray direction divided by its z, for a square image of ``size``."""
    focal = size / 2 / math.tan(math.radians(fov_degrees) / 2)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / focal
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    return u, v


class Tube:
    """The wall of one scene as a function of depth: its centre line, its haustral folds and
    their height over the taeniae."""

    WOBBLE = 1.7  # frequency of the centre line's second wave, in multiples of the bend's

    def __init__(self, scene: Scene) -> None:
        self.s = scene
        p = scene.phases
        self.bend_axes = (math.cos(p[0]), math.sin(p[0]))
        self.offset = (scene.offset * scene.radius_mm * math.cos(p[1]), scene.offset * scene.radius_mm * math.sin(p[1]))
        self.tilt = (scene.tilt * math.cos(p[2]), scene.tilt * math.sin(p[2]))
        self.taenia = p[3]

    def centre(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, p = self.s, self.s.phases
        k = 2 * math.pi / s.bend_wavelength_mm
        bend = s.bend_mm * (torch.sin(k * z + p[4]) - math.sin(p[4]))
        wobble = 0.3 * s.bend_mm * (torch.sin(self.WOBBLE * k * z + p[5]) - math.sin(p[5]))
        x = self.offset[0] + self.tilt[0] * z + bend * self.bend_axes[0] - wobble * self.bend_axes[1]
        y = self.offset[1] + self.tilt[1] * z + bend * self.bend_axes[1] + wobble * self.bend_axes[0]
        return x, y

    @staticmethod
    def moved_along(phases: list[float], values: dict, distance: float) -> list[float]:
        """``phases`` of the same colon seen from ``distance`` mm further along it: the phases of
        :meth:`centre`'s two waves and of :meth:`fold` advance by what each covers in that distance."""
        bend = 2 * math.pi * distance / values["bend_wavelength_mm"]
        moved = list(phases)
        moved[4] += bend
        moved[5] += Tube.WOBBLE * bend
        moved[6] += 2 * math.pi * distance / values["fold_spacing_mm"]
        return moved

    def fold(self, z: torch.Tensor) -> torch.Tensor:
        """Height of the haustral folds at depth z, 0 between folds and 1 at a crest."""
        ridge = torch.cos(2 * math.pi * z / self.s.fold_spacing_mm + self.s.phases[6])
        return torch.where(ridge > 1e-3, ridge, 0.0) ** 6  # no subnormal floats (slow on CPUs)

    def taeniae(self, cos_theta: torch.Tensor, sin_theta: torch.Tensor) -> torch.Tensor:
        """cos 3 (theta - taenia): +1 midway between the three taeniae, where folds are highest."""
        cos3 = 4 * cos_theta**3 - 3 * cos_theta
        sin3 = 3 * sin_theta - 4 * sin_theta**3
        return cos3 * math.cos(3 * self.taenia) + sin3 * math.sin(3 * self.taenia)


def _wall_offsets(tube: Tube, z: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each half-line from the camera's axis (angle ``directions``, A) meets the wall in
    each slice ``z`` (S): (near, far) distances along it (S x A), from the circle of radius
    R(z, theta) around the centre line; theta is the angle of a first estimate's wall point
    (one fixed-point step), so folds keep their shape over the taeniae. ``far`` is -1 where the
    half-line misses the slice's lumen altogether."""
    cx, cy = tube.centre(z)
    cx, cy = cx[:, None], cy[:, None]
    ex, ey = torch.cos(directions)[None], torch.sin(directions)[None]
    along = cx * ex + cy * ey
    across2 = (cx * cx + cy * cy) - along * along
    height = tube.s.fold_depth * tube.fold(z)[:, None]
    radius = tube.s.radius_mm * (1 - 0.65 * height)
    for _ in range(2):
        root = torch.sqrt((radius * radius - across2).clamp(min=0))
        far = along + root
        dx, dy = far * ex - cx, far * ey - cy
        rho = torch.sqrt(dx * dx + dy * dy).clamp(min=1e-6)
        radius = tube.s.radius_mm * (1 - height * (0.65 + 0.35 * tube.taeniae(dx / rho, dy / rho)))
    root = torch.sqrt((radius * radius - across2).clamp(min=0))
    missed = radius * radius < across2
    return along - root, (along + root).masked_fill(missed, -1.0)


@functools.lru_cache(maxsize=8)
def _polar_grid(size: int, angles: int, radial: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slopes of the polar grid's ``radial`` columns, grid_sample coordinates of every pixel in
    the polar image of ``angles`` + 1 rows, the last repeating the first)."""
    u, v = pixel_rays(size)
    slope = torch.sqrt(u * u + v * v)
    top = float(slope.max()) * 1.001
    angle = torch.remainder(torch.atan2(v, u), 2 * math.pi) / (2 * math.pi) * angles  # in row units
    grid = torch.stack([slope / top * 2 - 1, angle / angles * 2 - 1], dim=-1)  # align_corners=True
    return torch.linspace(0, top, radial), grid[None]


def _first_outside(bounds: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Per row (an angle), the first slice at which the running minimum of ``bounds`` (A x S)
    falls below each ``query`` (A x K); S when none does."""
    key = -torch.cummin(bounds, dim=1).values
    return torch.searchsorted(key.contiguous(), -query.contiguous(), right=True)


def polar_depth(tube: Tube, angles: int, slopes: torch.Tensor, slices: int = SLICES) -> torch.Tensor:
    """Planar depth (angles x len(slopes)) of the rays of each image angle and slope. Each ray lies
    in the half-plane of its angle; per depth slice and angle the wall's near and far offsets
    are known (:func:`_wall_offsets`), so the ray leaves the lumen at the first slice whose far
    slope falls below its own, or whose near slope rises above it: a sorted search over running
    minima. The crossing is interpolated linearly between that slice and the one before (exact
    for a straight tube). Rays that stay inside stop on the far cap."""
    z = torch.logspace(math.log10(NEAR_MM), math.log10(FAR_MM), slices)
    near, far = _wall_offsets(tube, z, torch.arange(angles) * (2 * math.pi / angles))
    near, far = near.T.contiguous(), far.T.contiguous()  # A x S offsets (mm)
    query = slopes.expand(angles, -1)
    by_far = _first_outside(far / z, query)
    by_near = _first_outside(-near / z, -query)
    first = torch.minimum(by_far, by_near)
    i = first.clamp(1, slices - 1)
    use_far = by_far <= by_near
    before = torch.where(use_far, far.gather(1, i - 1), near.gather(1, i - 1))
    after = torch.where(use_far, far.gather(1, i), near.gather(1, i))
    sign = use_far.float() * 2 - 1  # the gap to the wall, positive inside the lumen
    gap_before = sign * (before - query * z[i - 1])
    gap_after = sign * (after - query * z[i])
    step = gap_before - gap_after
    t = (gap_before / step.where(step.abs() > 1e-9, torch.ones(()))).clamp(0, 1)
    depth = z[i - 1] + t * (z[i] - z[i - 1])
    return depth.where(first > 0, z[0]).where(first < slices, torch.full((), FAR_MM))


def ray_cast(tube: Tube, size: int, angles: int = ANGLES, slices: int = SLICES) -> torch.Tensor:
    """Planar depth (mm) of every pixel of a ``size`` square image: :func:`polar_depth` on a
    polar grid of ``angles`` rows and ``size`` slopes, resampled to pixels by bilinear
    interpolation of inverse depth (linear in slope on a straight tube, so exact there)."""
    slopes, grid = _polar_grid(size, angles, size)
    inverse = 1.0 / polar_depth(tube, angles, slopes[None], slices)
    inverse = torch.cat([inverse, inverse[:1]])[None, None]
    pixels = F.grid_sample(inverse, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return (1.0 / pixels[0, 0]).clamp(NEAR_MM, FAR_MM)


def _length(vectors: torch.Tensor) -> torch.Tensor:
    """Length of 3 x H x W vectors (1 x H x W); faster than torch.norm over the first dimension."""
    return torch.sqrt(vectors[0] ** 2 + vectors[1] ** 2 + vectors[2] ** 2).clamp(min=1e-9)[None]


def surface_normals(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit normals 3 x H x W, points 3 x H x W) of the surface a depth map describes."""
    u, v = pixel_rays(depth.shape[-1])
    points = torch.stack([depth * u, depth * v, depth])
    du = torch.gradient(points, dim=2)[0]
    dv = torch.gradient(points, dim=1)[0]
    normal = torch.linalg.cross(du, dv, dim=0)
    normal = normal / _length(normal)
    facing = (normal * points).sum(0, keepdim=True) > 0  # normals face the camera
    return normal.where(~facing, -normal), points


def _wall_coordinates(scene: Scene, points: torch.Tensor, tube: Tube) -> torch.Tensor:
    """Texture coordinates of the wall's points (3 x H x W, mm): around the tube on a cylinder of
    the base radius, and along it."""
    cx, cy = tube.centre(points[2])
    dx, dy = points[0] - cx, points[1] - cy
    scale = scene.radius_mm / torch.sqrt(dx * dx + dy * dy).clamp(min=1e-6)
    return torch.stack([dx * scale, dy * scale, points[2]])


def _texture(scene: Scene, coordinates: torch.Tensor, frequency: float, waves: int, offset: int) -> torch.Tensor:
    """A sum of ``waves`` plane waves (random directions and phases) over the wall, in [-1, 1]."""
    p = scene.phases
    total = torch.zeros_like(coordinates[0])
    for k in range(waves):
        a, b, phase = (p[(offset + 3 * k + j) % len(p)] for j in range(3))
        direction = (math.cos(a) * math.cos(b), math.sin(a) * math.cos(b), math.sin(b))
        along = direction[0] * coordinates[0] + direction[1] * coordinates[1] + direction[2] * coordinates[2]
        total += torch.sin(frequency * (1 + 0.37 * k) * along + phase)
    return total / waves


def shade(scene: Scene, tube: Tube, depth: torch.Tensor, style: str, rng: np.random.Generator) -> torch.Tensor:
    """The RGB image (3 x H x W in [0, 1]) of a depth map in ``style``."""
    normal, points = surface_normals(depth)
    distance = _length(points)[0]
    facing = (normal * -points / distance).sum(0)  # cosine to the light at the camera
    cosine = facing.clamp(min=0)
    colour = torch.tensor(scene.colour)[:, None, None]
    if style == "synthetic":
        return (colour * (0.15 + 0.85 * cosine)).clamp(0, 1)
    wrap = scene.subsurface
    fall_off = (30.0 / distance) ** 2  # inverse square, 1 at 30 mm
    diffuse = ((facing + wrap) / (1 + wrap)).clamp(min=0) * fall_off
    coordinates = _wall_coordinates(scene, points, tube)
    vessels = torch.exp(-((_texture(scene, coordinates, 0.35, 3, 7) / 0.06) ** 2).clamp(max=30)) * scene.vessels
    mucosa = 1 + 0.08 * _texture(scene, coordinates, 2.2, 3, 13)
    albedo = colour * mucosa * (1 - vessels * torch.tensor([0.2, 0.55, 0.5])[:, None, None])
    image = albedo * diffuse
    blurred = F.interpolate(F.avg_pool2d(image[None], 4), size=image.shape[-2:], mode="bilinear")[0]
    image = image * (1 - 0.5 * wrap) + blurred * torch.tensor([0.5, 0.2, 0.15])[:, None, None] * wrap * 2
    specular = scene.specular * cosine**scene.shininess * fall_off
    image = image + specular
    u, v = pixel_rays(depth.shape[-1])
    image = image * (1 - scene.vignetting * (u * u + v * v) / float((u * u + v * v).max()))
    image = image * scene.exposure / torch.quantile(image.mean(0).flatten()[::7], 0.99).clamp(min=1e-6)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    noise = torch.randn(image.shape, generator=generator) * scene.noise
    return (image + noise * image.clamp(min=0).sqrt()).clamp(0, 1)


@contextlib.contextmanager
def _no_subnormals():
    """Flush subnormal floats to zero while rendering (products of small offsets and fall-offs
    make them, and CPUs compute on them a hundred times slower); turned off again after
    (torch's default; torch cannot tell the setting before)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def render(scene: Scene, size: int = 256, style: str = "cinematic", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image H x W x 3, depth float32 H x W in mm) of one scene."""
    if style not in RENDER_STYLES:
        raise unknown_choice("depth style", style, RENDER_STYLES)
    tube = Tube(scene)
    with _no_subnormals():
        depth = ray_cast(tube, size)
        image = shade(scene, tube, depth, style, np.random.default_rng(seed))
    pixels = (image.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy()
    return pixels, depth.numpy()


def straight_tube_depth(size: int, radius_mm: float) -> np.ndarray:
    """The closed form on a straight circular tube with the camera on its axis: z = R / |(u, v)|."""
    u, v = pixel_rays(size)
    return np.minimum(radius_mm / np.sqrt(u.numpy() ** 2 + v.numpy() ** 2), FAR_MM).astype(np.float32)


def write_renders(out: Path, style: str, n: int, *, overwrite: bool = False, **settings) -> dict:
    """:func:`render_into` the folder ``out`` (see :mod:`fewlabel.outputs`): a folder that holds
    files already is refused unless ``overwrite``; the options are checked before it is touched."""
    render_into(None, style, n, **settings)  # only checks the options
    with output_folder(out, RENDER_OUTPUT.name, overwrite=overwrite) as folder:
        return render_into(folder, style, n, **settings)


def render_into(out: Path | None, style: str, n: int, seed: int = 0, size: int = 256, test_share: float = 0.2,
                patients: int | None = None, outside: str = "all") -> dict:  # fmt: skip
    """``n`` renders in ``out/train`` (training ranges) and ``out/test`` (``test_share`` of them,
    anatomy and lighting drawn outside the training ranges): ``NNNNN.png`` with
    ``NNNNN_depth.npy`` (float32 mm) each, and render.json (written last) describing them
    (``out`` None: check the options only, write nothing).

    ``patients``: the training images show only this many colons (patients), each seen from
    several places under several rendering conditions (:func:`draw_scene`), as a cinematic set
    made from a few CT volumes is; default: every image its own colon. Held-out images always
    have their own. ``outside``: which parameters held-out images draw outside the training
    ranges (:func:`draw_scene`). render.json keeps each image's anatomy and lighting (``scenes``)."""
    if style not in RENDER_STYLES:
        raise unknown_choice("depth style", style, RENDER_STYLES)
    if outside not in RENDER_OUTSIDE:
        raise unknown_choice("held-out parameters (outside)", outside, RENDER_OUTSIDE)
    n_test = round(n * test_share)
    if patients is not None and not 1 <= patients <= n - n_test:
        raise FewlabelError(f"patients {patients}: accepted 1 to the number of training images ({n - n_test}).")
    if out is None:
        return {}
    record = {"style": style, "n": n, "seed": seed, "size": size, "units": "mm", "fov_degrees": FOV_DEGREES,
              "far_mm": FAR_MM, "train": n - n_test, "test_held_out": n_test, "patients": patients, "outside": outside,
              "ranges": {k: [r.low, r.high, r.spread] for k, r in (ANATOMY | LIGHTING).items()},
              "scenes": {}}  # fmt: skip
    for name, scene, render_seed in drawn_scenes(n, seed, n_test, patients, outside):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        image, depth = render(scene, size, style, seed=render_seed)
        Image.fromarray(image).save(out / f"{name}.png")
        np.save(out / f"{name}_depth.npy", depth)
        record["scenes"][name] = scene.values
    write_json(out / RENDER_RECORD, record)
    return record


def drawn_scenes(
    n: int, seed: int, n_test: int, patients: int | None, outside: str = "all"
) -> Iterator[tuple[str, Scene, int]]:
    """Each image of :func:`write_renders` in order: its name under the folder (``train/NNNNN``
    or ``test/NNNNN``), its scene and its rendering seed; seeded, so a folder's scenes can be
    drawn again."""
    colons = [draw_scene(np.random.default_rng([seed, index, 0])) for index in range(patients or 0)]
    for index in range(n):
        held_out = index >= n - n_test
        rng = np.random.default_rng([seed, index])
        patient = colons[index % len(colons)] if colons and not held_out else None
        scene = draw_scene(rng, held_out, patient, outside)
        yield f"{'test' if held_out else 'train'}/{index:05d}", scene, int(rng.integers(2**31))


def scene_parameters(folder: str | Path) -> dict[str, dict]:
    """Anatomy and lighting of each image of a rendered folder, by name (``test/00003``): from its
    render.json, or drawn again from the seed it records (folders written before it kept them)."""
    record = json.loads((Path(folder) / RENDER_RECORD).read_text())
    if "scenes" in record:
        return record["scenes"]
    draws = drawn_scenes(
        record["n"], record["seed"], record["test_held_out"], record["patients"], record.get("outside", "all")
    )
    return {name: scene.values for name, scene, _ in draws}


def build_renders(data: str | None, out: Path, *, options: dict, seed: int, **_) -> dict:
    """A recipe stage's ``build: {method: depth-render, options: {style, n, size, test_share, patients,
    outside}}``: :func:`write_renders` into the stage's data folder (DATA is not used)."""
    accepted = ("style", "n", "size", "test_share", "patients", "outside")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FewlabelError(f"build options {unknown}: depth-render accepts {', '.join(accepted)}.")
    return render_into(Path(out), seed=seed, **options)

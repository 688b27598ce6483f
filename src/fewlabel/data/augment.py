"""Batched image transforms that run wherever the batch is (CPU or GPU): uint8 N x C x H x W
in, normalised float N x 3 x S x S out.

Images are decoded once and kept as uint8 tensors; a loader only gathers a batch of them,
the batch is moved to the device, and the whole batch is augmented there in a few tensor
operations (:class:`BatchTransform`). Every random number of an image comes from a
counter-based hash of (seed, stream, epoch, index, draw) (:func:`key_uniforms`), so an
image's augmentation depends on nothing else: not on the batch it falls in, the number of
workers or processes, the device, or a resume in between.

Presets (training only; evaluation resizes to S x S and normalises):

* ``none``: no augmentation;
* ``crop``: random resized crop (area 0.8-1, aspect 3/4-4/3), no flip;
* ``light``: ``crop`` and horizontal flip;
* ``standard``: crop area 0.5-1, flip, colour jitter (brightness, contrast, saturation, each a
  factor drawn in [0.8, 1.2]; applied in that fixed order, where torchvision draws the order);
* ``randaugment``: ``standard`` then RandAugment (Cubuk et al. 2020) as torchvision defines
  it: 2 of its 14 operations per image, magnitude 9 of 31 bins, a random sign for the signed
  ones, geometric operations with nearest sampling and black fill.

Choices: the crop follows torchvision's RandomResizedCrop (10 tries, then the whole image)
and samples bilinearly without antialiasing (images are stored at ``img_size``, so a crop is
only ever enlarged); a grayscale batch is augmented as one channel and repeated to three at
the end, which gives the same result as augmenting three equal channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

AUGMENTATIONS = ("none", "crop", "light", "standard", "randaugment")
FLIP_TOLERANCE = 0.05  # mirror test: the accuracy a class-preserving flip may cost, at least
_MASK32 = 0xFFFFFFFF
_CROP_TRIES = 10
_RANDAUGMENT_OPS = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
    "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
)  # fmt: skip
_SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness"}


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for int64 x in [0, 2^32), without int64 overflow."""
    low = (x * (constant & 0xFFFF)) & _MASK32
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (Wellons' lowbias32) of int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def key_uniforms(seed: int, keys: torch.Tensor, draws: int, stream: int = 0) -> torch.Tensor:
    """N x ``draws`` uniform numbers in [0, 1), a pure function of (seed, stream, epoch, index,
    draw) for N (epoch, index) ``keys``; computed on ``keys``' device."""
    base = _hash32(torch.tensor((seed * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32, device=keys.device))
    per_image = _hash32(_hash32(base ^ (keys[:, 0] & _MASK32)) ^ (keys[:, 1] & _MASK32))
    counters = torch.arange(draws, device=keys.device, dtype=torch.long)
    bits = _hash32(per_image[:, None] ^ _hash32(counters + 0x632BE5AB)[None, :])
    return (bits >> 8).float() / float(1 << 24)


class Draws:
    """The uniform numbers of a batch, handed out column by column."""

    def __init__(self, uniforms: torch.Tensor) -> None:
        self.uniforms = uniforms
        self.used = 0

    def take(self, n: int = 1) -> torch.Tensor:
        columns = self.uniforms[:, self.used : self.used + n]
        self.used += n
        return columns if n > 1 else columns[:, 0]


def crop_boxes(draws: Draws, height: int, width: int, scale: tuple[float, float]) -> torch.Tensor:
    """N x 4 (top, left, h, w) crops as torchvision's RandomResizedCrop draws them: up to 10 tries
    of an area share in ``scale`` and a log-uniform aspect ratio in [3/4, 4/3]; the whole image
    when no try fits."""
    area = height * width
    u = draws.take(4 * _CROP_TRIES).view(-1, _CROP_TRIES, 4)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[..., 1]
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(target * ratio).round()
    h = torch.sqrt(target / ratio).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full_like(fits[:, 0], -1, dtype=torch.long))
    rows = torch.arange(len(u), device=u.device)
    pick = first.clamp_min(0)
    h, w = h[rows, pick], w[rows, pick]
    top = torch.floor(u[rows, pick, 2] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[rows, pick, 3] * (width - w + 1)).clamp(max=width - w)
    whole = first < 0
    top, left = torch.where(whole, 0.0, top), torch.where(whole, 0.0, left)
    h, w = torch.where(whole, float(height), h), torch.where(whole, float(width), w)
    return torch.stack([top, left, h, w], 1)


def crop_flip_resize(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's (top, left, h, w) box, mirrored where ``flip``, sampled bilinearly to
    size x size in one ``grid_sample`` (float images). Output pixels on the box's rim
    interpolate with the pixels just outside it (the image's own, where a cut-out crop would
    repeat its edge)."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    theta = images.new_zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def color_jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation by N x 3 factors (float images in [0, 1])."""
    images = (images * factors[:, 0].view(-1, 1, 1, 1)).clamp(0, 1)
    means = _grayscale(images).mean((1, 2, 3), keepdim=True)
    images = _blend(images, means, factors[:, 1])
    return _blend(images, _grayscale(images), factors[:, 2])


def _randaugment_op(images: torch.Tensor, op: str, sign: float) -> torch.Tensor:
    """One RandAugment operation at magnitude 9 of 31 on a float batch (torchvision's values)."""
    height, width = images.shape[-2:]
    bin_share = 9 / 30
    nearest = TF.InterpolationMode.NEAREST
    if op == "identity":
        return images
    if op in ("shear_x", "shear_y"):
        degrees = math.degrees(math.atan(0.3 * bin_share)) * sign
        shear = [degrees, 0.0] if op == "shear_x" else [0.0, degrees]
        return TF.affine(
            images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, center=[0, 0]
        )
    if op in ("translate_x", "translate_y"):
        shift = int(150 / 331 * (width if op == "translate_x" else height) * bin_share * sign)
        translate = [shift, 0] if op == "translate_x" else [0, shift]
        return TF.affine(images, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
    if op == "rotate":
        return TF.rotate(images, 30 * bin_share * sign, interpolation=nearest)
    factor = 1.0 + 0.9 * bin_share * sign
    if op == "brightness":
        return TF.adjust_brightness(images, factor)
    if op == "color":
        return TF.adjust_saturation(images, factor) if images.shape[1] == 3 else images
    if op == "contrast":
        return TF.adjust_contrast(images, factor)
    if op == "sharpness":
        return TF.adjust_sharpness(images, factor)
    if op == "posterize":
        return TF.to_dtype(TF.posterize(TF.to_dtype(images, torch.uint8, scale=True), 7), torch.float32, scale=True)
    if op == "solarize":
        return TF.solarize(images, 1.0 - bin_share)
    if op == "autocontrast":
        return TF.autocontrast(images)
    return TF.to_dtype(TF.equalize(TF.to_dtype(images, torch.uint8, scale=True)), torch.float32, scale=True)


def randaugment(images: torch.Tensor, draws: Draws, num_ops: int = 2) -> torch.Tensor:
    """``num_ops`` RandAugment operations per image; the images that drew the same operation and
    sign are transformed together."""
    for _ in range(num_ops):
        choice = (draws.take() * len(_RANDAUGMENT_OPS)).long().clamp(max=len(_RANDAUGMENT_OPS) - 1)
        negative = draws.take() < 0.5
        out = images.clone()
        for op_index, op in enumerate(_RANDAUGMENT_OPS):
            picked = choice == op_index
            groups = ((picked & ~negative, 1.0), (picked & negative, -1.0)) if op in _SIGNED else ((picked, 1.0),)
            for chosen, sign in groups:
                if chosen.any():
                    out[chosen] = _randaugment_op(images[chosen], op, sign)
        images = out
    return images


class BatchTransform:
    """The transform of one preset on whole batches: ``transform(images, keys, seed)`` with
    uint8 N x C x H x W ``images`` and N x 2 (epoch, index) ``keys`` on the same device;
    evaluation (``train=False`` or ``augment='none'``) needs no keys. ``stream`` separates
    two views of the same images (FixMatch's weak and strong); ``hflip`` overrides the
    preset's horizontal flip (FixMatch's strong view follows the run's flip decision)."""

    def __init__(
        self,
        augment: str,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = True,
        stream: int = 0,
        vflip: bool = False,
        hflip: bool | None = None,
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment '{augment}': accepted {', '.join(AUGMENTATIONS)}")
        self.augment = augment if train else "none"
        preset_flips = self.augment in ("light", "standard", "randaugment")
        self.hflip = preset_flips if hflip is None else (hflip and self.augment != "none")
        self.vflip = vflip and self.augment != "none"
        self.img_size = img_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.stream = stream

    @property
    def random(self) -> bool:
        return self.augment != "none"

    def __call__(self, images: torch.Tensor, keys: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        if self.random:
            if keys is None:
                raise ValueError(f"augment '{self.augment}' draws per image: pass the images' (epoch, index) keys")
            x = self._augment(x, key_uniforms(seed, keys.to(x.device), self.draws_needed, self.stream))
        elif x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def draws_needed(self) -> int:
        return 4 * _CROP_TRIES + 1 + 3 + 4 + 1

    def _augment(self, x: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        draws = Draws(uniforms)
        scale = (0.8, 1.0) if self.augment in ("crop", "light") else (0.5, 1.0)
        boxes = crop_boxes(draws, x.shape[-2], x.shape[-1], scale)
        flip = draws.take() < 0.5
        x = crop_flip_resize(x, boxes, flip & self.hflip, self.img_size)
        if self.augment in ("standard", "randaugment"):
            x = color_jitter(x, 0.8 + 0.4 * draws.take(3))
        if self.augment == "randaugment":
            x = randaugment(x, draws)
        if self.vflip:
            upside_down = draws.uniforms[:, -1] < 0.5
            x = torch.where(upside_down.view(-1, 1, 1, 1), x.flip(-2), x)
        return x

    def describe(self) -> str:
        """A string that identifies the transform (evaluation: for feature-cache keys)."""
        stats = f"mean{tuple(round(m, 4) for m in self.mean)}-std{tuple(round(s, 4) for s in self.std)}"
        return f"{self.augment}{'+vflip' if self.vflip else ''}{self.img_size}-{stats}"

    def __repr__(self) -> str:
        return f"BatchTransform({self.describe()}, stream={self.stream})"


class TwoViews:
    """Two transforms of the same images (a weak and a strong view), each with its own stream."""

    def __init__(self, weak: BatchTransform, strong: BatchTransform) -> None:
        self.weak, self.strong = weak, strong

    def __call__(self, images: torch.Tensor, keys: torch.Tensor | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weak(images, keys, seed), self.strong(images, keys, seed)


def mirror_test(original: torch.Tensor, mirrored: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """Whether mirroring keeps the class, from pooled features of labelled images and of the
    same images mirrored. A logistic regression is fitted on the original features of one half
    of the images (stratified, seeded) and predicts the other half, original and mirrored, and
    the halves swap. A class-preserving flip costs little accuracy; a flip that turns one class
    into another (b and d, left and right) costs much. The flip is allowed when the mirrored
    accuracy is within ``FLIP_TOLERANCE`` or two binomial standard errors (the larger) of the
    original accuracy, and only when the test is conclusive: the original accuracy more than two
    standard errors above the majority-class share (features that separate nothing say nothing
    about flips, and then no flip is added)."""
    return mirror_tests(original, {"mirror": mirrored}, labels, seed)["mirror"]


def mirror_tests(original: torch.Tensor, mirrored: dict[str, torch.Tensor], labels: torch.Tensor, seed: int = 0):
    """:func:`mirror_test` for several mirrors of the same images at once (horizontal and
    vertical): the two halves' regressions are fitted once and predict every mirror."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x, y = original.float().numpy(), labels.numpy()
    right = dict.fromkeys(["original", *mirrored], 0)
    for fit_on, score_on in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, y):
        head = LogisticRegression(max_iter=500).fit(x[fit_on], y[fit_on])
        for name, features in {"original": original, **mirrored}.items():
            right[name] += int((head.predict(features.float().numpy()[score_on]) == y[score_on]).sum())
    n = len(y)
    accuracy = right["original"] / n
    tolerance = max(FLIP_TOLERANCE, 2 * math.sqrt(accuracy * (1 - accuracy) / n))
    chance = float(labels.bincount().max()) / n
    conclusive = accuracy > chance + 2 * math.sqrt(chance * (1 - chance) / n)
    return {
        name: {
            "allowed": conclusive and right[name] / n >= accuracy - tolerance,
            "conclusive": conclusive,
            "accuracy": accuracy,
            "mirrored_accuracy": right[name] / n,
            "tolerance": tolerance,
            "images": n,
        }
        for name in mirrored
    }

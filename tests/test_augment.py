"""Batched transforms on the device: per-image seeding by key, crop geometry, presets, and
batched inference (out-of-memory halving, mixed precision)."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from fewlabel.data.augment import (
    _RANDAUGMENT_OPS,
    BatchTransform,
    Draws,
    _randaugment_op,
    color_jitter,
    crop_boxes,
    crop_flip_resize,
    key_uniforms,
    randaugment,
)
from fewlabel.data.datasets import EpochSampler, ImageBatches
from fewlabel.data.imageset import ImageSet
from fewlabel.train.datamodule import default_workers
from fewlabel.train.inference import batched_outputs

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def keys_for(indices, epoch: int = 0) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    return torch.stack([torch.full_like(indices, epoch), indices], 1)


def test_key_uniforms_are_a_pure_function_of_seed_stream_epoch_index_and_draw():
    keys = keys_for(range(2000))
    u = key_uniforms(3, keys, 6)
    assert u.shape == (2000, 6) and float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12**-0.5) < 0.01
    assert torch.equal(key_uniforms(3, keys[[7, 1500]], 6), u[[7, 1500]])  # whatever the batch
    for changed in (
        key_uniforms(4, keys, 6),
        key_uniforms(3, keys, 6, stream=1),
        key_uniforms(3, keys_for(range(2000), 1), 6),
    ):
        assert (changed != u).float().mean() > 0.99
    assert torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1].abs() < 0.05  # draws independent


def test_crop_boxes_follow_random_resized_crop():
    draws = Draws(key_uniforms(0, keys_for(range(5000)), 40))
    top, left, h, w = crop_boxes(draws, 28, 28, (0.5, 1.0)).unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 28) & (left + w <= 28)).all())
    area = h * w / 28**2
    assert float(area.min()) >= 0.45 and float(area.max()) <= 1.0  # rounding of h and w aside
    ratio = w / h
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.45
    assert (area > 0.95).float().mean() < 0.2  # not collapsing onto the whole-image fallback


def test_crop_flip_resize_samples_the_box_exactly():
    images = torch.rand(2, 3, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    flip = torch.tensor([False, True])
    out = crop_flip_resize(images, whole, flip, 8)
    assert torch.allclose(out[0], images[0], atol=1e-6)
    assert torch.allclose(out[1], images[1].flip(-1), atol=1e-6)
    quadrant = torch.tensor([[4.0, 0.0, 4.0, 4.0]] * 2)  # bottom-left 4 x 4, enlarged to 8 x 8
    expected = F.interpolate(images[:, :, 4:, :4], size=(8, 8), mode="bilinear", align_corners=False)
    got = crop_flip_resize(images, quadrant, torch.tensor([False, False]), 8)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the rim also reads the pixels just outside
    assert torch.allclose(got[inner], expected[inner], atol=1e-5)


def test_evaluation_transform_is_resize_and_normalise():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    out = BatchTransform("standard", 16, MEAN, STD, train=False)(images)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert BatchTransform("none", 8, MEAN, STD, train=False)(images).shape == (4, 3, 8, 8)
    gray = BatchTransform("none", 16, (0.5,) * 3, (0.5,) * 3, train=False)(images[:, :1])
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_augmentation_is_per_image_whatever_the_batch_and_differs_by_epoch():
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    for preset in ("light", "standard", "randaugment"):
        transform = BatchTransform(preset, 32, MEAN, STD)
        full = transform(images, keys_for(range(32)), seed=5)
        part = transform(images[[3, 17]], keys_for([3, 17]), seed=5)
        assert full.shape == (32, 3, 32, 32)
        assert torch.allclose(full[[3, 17]], part, atol=1e-5), preset
        later = transform(images, keys_for(range(32), epoch=1), seed=5)
        assert (later - full).abs().amax((1, 2, 3)).gt(1e-3).float().mean() > 0.9


def test_light_preset_flips_about_half_the_images():
    images = torch.zeros(400, 1, 16, 16, dtype=torch.uint8)
    images[..., 8:] = 255  # right half white
    out = BatchTransform("light", 16, (0.0,) * 3, (1.0,) * 3)(images, keys_for(range(400)))
    flipped = (out[:, 0, :, 0] > 0.5).all(1)  # left column white: mirrored
    assert 0.4 < float(flipped.float().mean()) < 0.6


def test_colour_jitter_factors_of_one_change_nothing_and_brightness_scales():
    images = torch.rand(3, 3, 8, 8)
    assert torch.allclose(color_jitter(images, torch.ones(3, 3)), images, atol=1e-6)
    darker = color_jitter(images, torch.tensor([[0.5, 1.0, 1.0]] * 3))
    assert torch.allclose(darker, images * 0.5, atol=1e-6)


def test_every_randaugment_operation_keeps_shape_and_range_and_most_change_the_image():
    images = torch.rand(4, 3, 16, 16)
    unchanged = []
    for op in _RANDAUGMENT_OPS:
        for sign in (1.0, -1.0):
            out = _randaugment_op(images, op, sign)
            assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1, op
            if torch.allclose(out, images, atol=1e-3):
                unchanged.append(op)
    assert set(unchanged) == {"identity"}
    draws = Draws(key_uniforms(0, keys_for(range(4)), 4))
    assert randaugment(images, draws).shape == images.shape


def test_image_batches_give_raw_images_with_keys_and_fields():
    images = ImageSet(
        torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8), torch.arange(10) % 2, ["a", "b"], list("abcdefghij")
    )
    dataset = ImageBatches(images.images, (images.labels,), BatchTransform("light", 8, MEAN, STD), seed=1)
    sampler = EpochSampler(images.labels, 0, keyed=True)
    keys = list(sampler)[:4]
    raw, labels = dataset.__getitems__(keys)
    assert raw.images.dtype == torch.uint8 and raw.keys.tolist() == [list(k) for k in keys]
    assert torch.equal(labels, images.labels[[i for _, i in keys]])
    out = raw.apply()
    assert out.shape == (4, 3, 8, 8)
    single, label = dataset[keys[1]]
    assert torch.allclose(single, out[1], atol=1e-5) and label == labels[1]


def _tiny_model():
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=5).eval()


def _images(n: int) -> ImageSet:
    pixels = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return ImageSet(pixels, torch.zeros(n, dtype=torch.long), list("abcde"), [str(i) for i in range(n)])


def test_inference_halves_the_batch_when_out_of_memory_and_gives_the_same_outputs():
    model, images = _tiny_model(), _images(21)
    transform = BatchTransform("none", 32, MEAN, STD, train=False)
    sizes = []

    def limited(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        if len(x) > 6:
            raise torch.OutOfMemoryError("pretend")
        return model(x)

    expected = batched_outputs(model, images, transform, batch_size=32, progress=False)
    got = batched_outputs(limited, images, transform, batch_size=32, progress=False)
    assert torch.allclose(got, expected, atol=1e-5)
    assert sizes[:3] == [21, 16, 8] and max(sizes[3:]) <= 4


def test_mixed_precision_inference_matches_float32_within_tolerance():
    model, images = _tiny_model(), _images(64)
    transform = BatchTransform("none", 32, MEAN, STD, train=False)
    full = batched_outputs(model, images, transform, progress=False, mixed=False).softmax(-1)
    mixed = batched_outputs(model, images, transform, progress=False, mixed=True).softmax(-1)  # bfloat16 on CPU
    assert mixed.dtype == torch.float32
    assert float((full - mixed).abs().max()) < 0.05
    assert float((full.argmax(-1) == mixed.argmax(-1)).float().mean()) >= 0.95


def test_workers_follow_the_machine():
    assert default_workers(cuda=False) == 0
    assert 0 <= default_workers(cuda=True) <= 4


def test_a_preset_flip_can_be_turned_off():
    images = torch.zeros(200, 1, 16, 16, dtype=torch.uint8)
    images[..., 8:] = 255  # right half white
    out = BatchTransform("standard", 16, (0.0,) * 3, (1.0,) * 3, hflip=False)(images, keys_for(range(200)))
    assert not bool((out[:, 0, :, 0] > 0.5).all(1).any())  # no image mirrored
    assert BatchTransform("crop", 16, MEAN, STD).hflip is False and BatchTransform("light", 16, MEAN, STD).hflip

"""Feature cache: computed once per (data, transform, weights), on disk and in memory."""

from __future__ import annotations

import timm
import torch

from fewlabel.data.augment import BatchTransform
from fewlabel.data.sources import load_data
from fewlabel.train.inference import FeatureCache


def _images_model_transform(folder):
    """A tiny folder's images at 32 px, a tiny untrained classifier and its evaluation transform."""
    model = timm.create_model("test_efficientnet", num_classes=3).eval()
    return load_data(str(folder), 32), model, BatchTransform("none", 32, [0.5] * 3, [0.5] * 3, train=False)


def test_features_are_cached_and_keyed_by_weights(image_folder, tmp_path):
    images, model, tf = _images_model_transform(image_folder)
    first = FeatureCache("disk", tmp_path)
    a = first.features(model, images, tf, "cpu", False)
    assert first.misses == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    second = FeatureCache("disk", tmp_path)
    b = second.features(model, images, tf, "cpu", False)
    assert second.hits == 1 and second.misses == 0 and torch.equal(a, b)
    with torch.no_grad():
        model.conv_stem.weight.add_(1.0)
    c = second.features(model, images, tf, "cpu", False)
    assert second.misses == 1 and not torch.equal(a, c)
    second.features(model, images, BatchTransform("none", 32, [0.4] * 3, [0.5] * 3, train=False), "cpu", False)
    assert second.misses == 2


def test_pooled_features_do_not_depend_on_the_classifier_so_its_weights_do_not_key_them(image_folder, tmp_path):
    images, model, tf = _images_model_transform(image_folder)
    cache = FeatureCache("memory", tmp_path)
    a = cache.features(model, images, tf, "cpu", False)
    with torch.no_grad():
        model.get_classifier().weight.add_(1.0)  # a trained head: the embeddings are the same
    b = cache.features(model, images, tf, "cpu", False)
    assert cache.hits == 1 and torch.equal(a, b)
    headless = timm.create_model("test_efficientnet", num_classes=0).eval()
    headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("classifier")})
    assert torch.equal(cache.features(headless, images, tf, "cpu", False), a) and cache.hits == 2
    logits = cache.features(model, images, tf, "cpu", False, fn=model)  # another function: keyed by every weight
    with torch.no_grad():
        model.get_classifier().weight.add_(1.0)
    assert not torch.equal(cache.features(model, images, tf, "cpu", False, fn=model), logits)

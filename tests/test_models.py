"""Backbones and weights: offline ImageNet weights, weight files, and clear refusals."""

from __future__ import annotations

import pytest
import skimage.data
import timm
import torch
from safetensors.torch import save_file

from fewlabel.data.augment import BatchTransform
from fewlabel.data.images import resize_to_square
from fewlabel.errors import FewlabelError
from fewlabel.methods import load_network
from fewlabel.models import ModelCard, create_backbone, save_model_files

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_offline_lite0_puts_a_real_cat_photo_in_an_imagenet_cat_class():
    model, info = create_backbone("efficientnet_lite0", "imagenet", num_classes=1000)
    assert info.weights.startswith("imagenet:efficientnet-lite0")
    photo = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).contiguous()
    x = BatchTransform("none", 224, info.mean, info.std, train=False)(resize_to_square(photo, 224)[None])
    with torch.no_grad():
        probs = model.eval()(x).softmax(-1)[0]
    assert int(probs.argmax()) in IMAGENET_CATS
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.8


def test_offline_weights_keep_the_body_and_reset_a_head_of_another_size():
    model, _ = create_backbone("efficientnet_lite0", "imagenet", num_classes=7)
    reference, _ = create_backbone("efficientnet_lite0", "imagenet", num_classes=1000)
    assert model.get_classifier().out_features == 7
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)


def test_unknown_model_lists_offline_ones_and_suggests():
    with pytest.raises(FewlabelError, match=r"Unknown model 'efficientnet_lite9'.*efficientnet_lite0.*Did you mean"):
        create_backbone("efficientnet_lite9", "none", 3)


def test_hub_failure_is_one_clear_line(monkeypatch):
    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to the hub\nmore lines")
        return timm.models.create_model(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FewlabelError, match=r"could not be downloaded from the timm hub \(We couldn't connect") as err:
        create_backbone("resnet18", "imagenet", 3)
    assert "\n" not in str(err.value) and "efficientnet_lite0" in str(err.value)


def test_pretrained_safetensors_path(tmp_path):
    source = timm.create_model("test_resnet", num_classes=5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model, info = create_backbone("test_resnet", str(tmp_path / "w.safetensors"), num_classes=3)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight) and info.weights.endswith("w.safetensors")
    with pytest.raises(FewlabelError, match="do not fit architecture 'test_efficientnet'.*another architecture"):
        create_backbone("test_efficientnet", str(tmp_path / "w.safetensors"), num_classes=3)
    with pytest.raises(FewlabelError, match="--pretrained 'nope.pt' is not accepted"):
        create_backbone("test_resnet", "nope.pt", num_classes=3)


def test_model_files_round_trip_and_refuse_a_mismatched_card(tmp_path):
    model = timm.create_model("test_efficientnet", num_classes=3).eval()
    card = ModelCard("test_efficientnet", ["a", "b", "c"], 32, [0.5] * 3, [0.5] * 3)
    save_model_files(tmp_path, model, card)
    loaded, loaded_card = load_network(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x)) and loaded_card == card
    (tmp_path / "model.json").write_text((tmp_path / "model.json").read_text().replace('"c"', '"c", "d"'))
    with pytest.raises(FewlabelError, match="does not match.*4 classes"):
        load_network(tmp_path)
    with pytest.raises(FewlabelError, match="not a model folder: model.json is missing"):
        load_network(tmp_path / "nothing")


def test_weights_of_a_fewlabel_run_keep_its_preprocessing(tmp_path):
    model = timm.create_model("test_efficientnet", num_classes=4)
    save_model_files(tmp_path, model, ModelCard("test_efficientnet", list("abcd"), 32, [0.1, 0.2, 0.3], [0.4] * 3))
    _, info = create_backbone("test_efficientnet", str(tmp_path / "model.safetensors"), num_classes=2)
    assert info.mean == (0.1, 0.2, 0.3) and info.std == (0.4, 0.4, 0.4)

"""Data layer: every DATA form, every image mode, splits, and each bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from fewlabel.data.images import decode_image, resize_to_square
from fewlabel.data.sources import load_data, parse_data_spec
from fewlabel.data.splits import align_classes, per_class_subset, stratified_holdout
from fewlabel.errors import FewlabelError


@pytest.mark.parametrize(
    ("mode", "channels"),
    [("L", 1), ("RGB", 3), ("RGBA", 3), ("P", 3), ("I;16", 1), ("CMYK", 3), ("1", 1), ("LA", 3)],
)
def test_every_image_mode_decodes_to_uint8(tmp_path, mode, channels):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 17, 3), dtype=np.uint8))
    image = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.arange(12 * 17, dtype=np.uint16).reshape(12, 17) * 300)
    )
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    tensor = decode_image(path)
    assert tensor.dtype == torch.uint8 and tensor.shape == (channels, 12, 17)
    if mode == "I;16":  # 16-bit is rescaled to the full 8-bit range, not truncated
        assert tensor.min() == 0 and tensor.max() == 255


def test_transparent_pixels_composite_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert decode_image(tmp_path / "clear.png").min() == 255


def test_resize_to_square_keeps_centre():
    image = torch.zeros(1, 10, 30, dtype=torch.uint8)
    image[:, :, 10:20] = 200
    out = resize_to_square(image, 10)
    assert out.shape == (1, 10, 10) and out.float().mean() > 150


def test_image_folder_loads_all_classes_in_memory(image_folder):
    data = load_data(str(image_folder), image_size=16)
    assert data.class_names == ["blue", "green", "red"]
    assert data.images.shape == (24, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.class_counts() == [8, 8, 8]


def test_split_folder_is_used_split_by_split(split_folder):
    assert parse_data_spec(str(split_folder)).available_splits() == ("train", "val", "test")
    assert len(load_data(f"{split_folder}:test", 16)) == 12
    assert len(load_data(str(split_folder), 16)) == 24


def test_csv_paths_are_relative_to_the_csv(image_folder):
    lines = ["path,label"] + [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(image_folder.rglob("*.png"))]
    (image_folder / "labels.csv").write_text("\n".join(lines))
    data = load_data(str(image_folder / "labels.csv"), 16)
    assert len(data) == 24 and data.class_names == ["blue", "green", "red"]


def test_builtin_small_dataset_ships_with_the_package():
    train, test = load_data("fashion-mnist-small", 28), load_data("fashion-mnist-small:test", 28)
    assert len(train) == 1000 and len(test) == 1000
    assert train.class_counts() == [100] * 10 and train.images.shape[1:] == (1, 28, 28)


def test_corrupt_files_are_skipped_with_a_warning_naming_each(image_folder, caplog):
    (image_folder / "red" / "zero.png").write_bytes(b"")
    (image_folder / "red" / "text.jpg").write_text("not an image")
    good = (image_folder / "red" / "0.png").read_bytes()
    (image_folder / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="fewlabel.data"):
        data = load_data(str(image_folder), 16)
    assert len(data) == 24
    message = caplog.text
    assert "skipped 3 unreadable" in message
    for name in ("zero.png", "text.jpg", "truncated.png"):
        assert name in message


def test_strict_refuses_a_corrupt_file(image_folder):
    (image_folder / "red" / "bad.png").write_text("garbage")
    with pytest.raises(FewlabelError, match=r"bad\.png"):
        load_data(str(image_folder), 16, strict=True)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch, image_folder):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(FewlabelError, match="decompression bomb"):
        load_data(str(image_folder), 16, strict=True)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        (lambda root: (root / "empty").mkdir(), "has no image files"),
        (lambda root: [p.unlink() for p in (root / "red").iterdir()], "red.*no image files"),
    ],
)
def test_empty_class_folder_is_an_error(image_folder, setup, pattern):
    setup(image_folder)
    with pytest.raises(FewlabelError, match=pattern):
        load_data(str(image_folder), 16)


def test_single_class_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(FewlabelError, match="at least 2"):
        load_data(str(root), 16)


def test_csv_with_missing_columns_or_paths(tmp_path):
    (tmp_path / "a.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(FewlabelError, match="columns 'path' and 'label'; found: file, class"):
        load_data(str(tmp_path / "a.csv"), 16)
    (tmp_path / "b.csv").write_text("path,label\nmissing.png,a\n")
    with pytest.raises(FewlabelError, match="1 path.*missing.png"):
        load_data(str(tmp_path / "b.csv"), 16)


def test_unknown_dataset_lists_the_builtins():
    with pytest.raises(FewlabelError, match="Unknown dataset 'fashion-mnits'.*fashion-mnist-small.*Did you mean"):
        parse_data_spec("fashion-mnits")


def test_missing_split_names_the_available_ones(image_folder):
    with pytest.raises(FewlabelError, match="no 'test' split. Available: train"):
        load_data(f"{image_folder}:test", 16)


def test_per_class_subset_is_stratified_seeded_and_refuses_too_many():
    labels = torch.arange(3).repeat_interleave(10)
    chosen, rest = per_class_subset(labels, 4, seed=7, class_names=["a", "b", "c"])
    assert torch.bincount(labels[chosen]).tolist() == [4, 4, 4] and len(rest) == 18
    again, _ = per_class_subset(labels, 4, seed=7, class_names=["a", "b", "c"])
    other, _ = per_class_subset(labels, 4, seed=8, class_names=["a", "b", "c"])
    assert torch.equal(chosen, again) and not torch.equal(chosen, other)
    with pytest.raises(FewlabelError, match="larger than class 'a', which has 10"):
        per_class_subset(labels, 11, seed=0, class_names=["a", "b", "c"])


def test_stratified_holdout_keeps_every_class_on_both_sides():
    labels = torch.tensor([0] * 10 + [1] * 3)
    held, kept = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(labels[held].tolist()) == [0, 0, 1]
    assert set(labels[kept].tolist()) == {0, 1}


def test_mismatched_class_sets_are_refused(tmp_path, image_folder):
    other = load_data(str(make_image_folder(tmp_path / "o", classes=("red", "purple"))), 16)
    with pytest.raises(FewlabelError, match="classes the model does not know: purple"):
        align_classes(other, ["blue", "green", "red"], "Evaluation")
    subset = load_data(str(make_image_folder(tmp_path / "s", classes=("red", "blue"))), 16)
    aligned = align_classes(subset, ["blue", "green", "red"], "Evaluation")
    assert aligned.class_names == ["blue", "green", "red"] and set(aligned.labels.tolist()) == {0, 2}


def test_full_fashion_mnist_reads_idx_files_from_the_configured_folder(monkeypatch):
    from fewlabel.data.builtin import SHIPPED_DIR

    monkeypatch.setenv("FEWLABEL_FASHION_MNIST_DIR", str(SHIPPED_DIR / "fashion-mnist-small"))
    data = load_data("fashion-mnist:test", 28)
    assert len(data) == 1000 and data.source == "fashion-mnist:test" and data.class_names[9] == "Ankle boot"


def test_missing_full_fashion_mnist_names_both_remedies(monkeypatch):
    import torchvision.datasets

    from fewlabel.data import builtin

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(builtin, "fashion_mnist_dir", lambda: None)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(FewlabelError, match="apt-get install dataset-fashion-mnist.*fashion-mnist-small") as err:
        load_data("fashion-mnist", 28)
    assert "could not be downloaded (OSError)" in str(err.value)


def test_original_sizes_are_kept_for_the_data_summary(image_folder):
    data = load_data(str(image_folder), 16)
    summary = data.subset([0, 1, 2]).summary()["original_sizes"]
    assert data.original_sizes[0] == (24, 30) and data.original_sizes[1] == (20, 20)
    assert summary["min"] == [20, 20] and summary["max"] == [24, 30]
    assert summary["most_common"][0] == {"size": [20, 20], "count": 2}

"""Pseudo-classes for a `clusters` intermediate dataset: descriptors and filtered k-means."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fewlabel.data.imageset import ImageSet
from fewlabel.data.sources import load_data
from fewlabel.errors import FewlabelError
from fewlabel.stepwise.intermediate import (
    COLOUR_BINS,
    LBP_POINTS,
    cluster_pseudo_classes,
    handcrafted_descriptors,
    standardise,
)


def test_descriptor_of_a_flat_red_image_by_hand():
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[0, 0] = 255
    (row,) = handcrafted_descriptors(ImageSet(image, torch.zeros(1, dtype=torch.long), ["a"], ["x"]))
    red, green, blue, texture = np.split(row, [COLOUR_BINS, 2 * COLOUR_BINS, 3 * COLOUR_BINS])
    assert red[-1] == 1.0 and green[0] == 1.0 and blue[0] == 1.0
    # flat image: every interior pixel has the "all neighbours >= centre" code; the 28 border
    # pixels compare with neighbours outside the image
    assert texture[LBP_POINTS] == pytest.approx(36 / 64) and texture.sum() == pytest.approx(1.0)
    assert len(texture) == LBP_POINTS + 2


def test_kmeans_recovers_separated_groups_and_drops_the_farthest_members():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 2)) * 0.3 + np.array([[0, 0], [10, 0], [0, 10]])[truth]
    result = cluster_pseudo_classes(features, k=3, seed=0, keep_fraction=0.5)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.sizes() == [10, 10, 10]
    for cluster in range(3):
        members = result.labels == cluster
        assert result.distances[members & result.kept].max() <= result.distances[members & ~result.kept].min()


def test_colour_classes_are_found_without_labels(image_folder):
    images = load_data(str(image_folder), 16)
    features = standardise(handcrafted_descriptors(images))
    result = cluster_pseudo_classes(features, k=3, seed=0, keep_fraction=1.0)
    assert adjusted_rand_score(images.labels.numpy(), result.labels) > 0.9


@pytest.mark.parametrize(("k", "keep"), [(1, 0.8), (61, 0.8), (3, 0.0)])
def test_bad_k_or_keep_fraction(k, keep):
    with pytest.raises(FewlabelError, match="--k|keep_fraction"):
        cluster_pseudo_classes(np.zeros((60, 2)), k=k, keep_fraction=keep)


def test_build_writes_an_image_folder_a_later_stage_can_train_on(image_folder, tmp_path):
    from typer.testing import CliRunner

    from fewlabel.cli import app

    out = tmp_path / "intermediate"
    result = CliRunner().invoke(
        app,
        [
            "intermediate",
            "build",
            str(image_folder),
            "--out",
            str(out),
            "--k",
            "3",
            "--keep-fraction",
            "0.75",
            "--img-size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "18 images in 3 classes" in result.output
    summary = json.loads((out / "clusters.json").read_text())
    assert sorted(summary["sizes"].values()) == [6, 6, 6] and summary["params"]["descriptor"] == "handcrafted"
    stage_data = load_data(str(out), 16)
    assert stage_data.class_names == ["cluster-0", "cluster-1", "cluster-2"] and len(stage_data) == 18
    again = CliRunner().invoke(app, ["intermediate", "build", str(image_folder), "--out", str(out), "--k", "3"])
    assert again.exit_code != 0 and "exists; pass --overwrite" in str(again.exception)


def test_embedding_and_both_descriptors_use_the_backbone(image_folder, tmp_path):
    import fewlabel.api

    summary = fewlabel.api.build_intermediate(
        str(image_folder),
        tmp_path / "out",
        k=3,
        descriptor="both",
        model="test_efficientnet",
        pretrained="none",
        img_size=32,
        keep_fraction=1.0,
    )
    assert summary["kept"] == 24 and summary["params"]["model"] == "test_efficientnet"
    with pytest.raises(FewlabelError, match="--k 30 must be between 2 and the pool size \\(24 images\\)"):
        fewlabel.api.build_intermediate(str(image_folder), tmp_path / "other", k=30)


def test_synthetic_builder_writes_a_csv_dataset_with_the_generator_classes(tmp_path):
    from fewlabel.data.builtin import FASHION_CLASSES
    from fewlabel.stepwise.synthetic import build_synthetic

    summary = build_synthetic("fewlabel.stepwise.synthetic:fashion_silhouettes", tmp_path / "s", per_class=3, seed=5)
    assert summary["sizes"] == {name: 3 for name in FASHION_CLASSES}
    data = load_data(str(tmp_path / "s" / "labels.csv"), 28)
    assert sorted(data.class_names) == sorted(FASHION_CLASSES)  # "T-shirt/top" survives: labels live in the CSV
    assert len(data) == 30 and data.images.shape[1] == 1
    images = data.images.float()
    assert images.amax() > 100 and images[:, :, 0, 0].amax() < 30  # bright garment on a dark background
    again = build_synthetic("fewlabel.stepwise.synthetic:fashion_silhouettes", tmp_path / "t", per_class=3, seed=5)
    assert again["sizes"] == summary["sizes"]
    assert torch.equal(load_data(str(tmp_path / "t" / "labels.csv"), 28).images, data.images)  # seeded


def one_class(per_class, seed):
    return [(np.zeros((8, 8), np.uint8), "only")] * per_class


def not_pairs(per_class, seed):
    return [np.zeros((8, 8), np.uint8)]


def float_images(per_class, seed):
    return [(np.zeros((8, 8)), "a"), (np.zeros((8, 8)), "b")]


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        ("fashion_silhouettes", "not of the form module:function"),
        ("no_such_module_xyz:f", "module 'no_such_module_xyz' cannot be imported"),
        ("fewlabel.stepwise.synthetic:nothing", "has no callable 'nothing'"),
        ("test_intermediate:one_class", "made 1 class"),
        ("test_intermediate:not_pairs", "item 0 is not an \\(image, class name\\) pair"),
        ("test_intermediate:float_images", "item 0 is not a PIL image or H x W"),
    ],
)
def test_bad_generators_are_named(tmp_path, generator, message):
    from fewlabel.stepwise.synthetic import build_synthetic

    with pytest.raises(FewlabelError, match=message) as info:
        build_synthetic(generator, tmp_path / "s", per_class=2)
    assert generator in str(info.value) or "module" in str(info.value)


def test_pools_without_labels(tmp_path, image_folder):
    from PIL import Image

    from fewlabel.data.sources import UNLABELED, has_labels, load_pool

    flat = tmp_path / "flat"
    (flat / "more").mkdir(parents=True)
    for i, path in enumerate(sorted(image_folder.rglob("*.png"))[:5]):
        Image.open(path).save(flat / ("more" if i == 4 else ".") / f"{i}.png")
    pool = load_pool(str(flat), 16)
    assert len(pool) == 5 and pool.class_names == [UNLABELED] and not has_labels(pool)
    (tmp_path / "pool.csv").write_text("path\n" + "\n".join(f"flat/{i}.png" for i in range(3)) + "\n")
    assert len(load_pool(str(tmp_path / "pool.csv"), 16)) == 3
    labelled = load_pool(str(image_folder), 16)
    assert has_labels(labelled) and labelled.class_names == ["blue", "green", "red"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FewlabelError, match="pool '.*empty' holds no image files"):
        load_pool(str(tmp_path / "empty"), 16)


def test_clusters_from_a_flat_pool_with_a_size_limit(tmp_path, image_folder):
    import fewlabel.api

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(image_folder.rglob("*.png"))):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    summary = fewlabel.api.build_intermediate(None, tmp_path / "out", unlabeled=str(flat), k=3, pool_size=12)
    assert summary["pool_size"] == 12 and summary["params"]["pool_size"] == 12
    same = fewlabel.api.build_intermediate(None, tmp_path / "again", unlabeled=str(flat), k=3, pool_size=12)
    assert same["members"] == summary["members"]  # the subset is drawn with the seed


def two_colours(per_class, seed):
    rng = np.random.default_rng(seed)
    for name, channel in (("reddish", 0), ("bluish", 2)):
        for _ in range(per_class):
            image = rng.integers(0, 60, size=(12, 12, 3), dtype=np.uint8)
            image[..., channel] = 220
            yield image, name

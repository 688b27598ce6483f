"""Nucleus detection: proximity maps, peaks and matching against values worked out by hand,
the three annotation formats and their bad inputs, joint augmentation, seamless tiling, the
synthetic microscopy, and the task trained end to end through the engine."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fewlabel
from fewlabel import FewlabelError
from fewlabel.config import make_config
from fewlabel.models import load_model_files
from fewlabel.nuclei.augment import TrainingCrops, grid_origins, random_crop, random_symmetry, stain_jitter
from fewlabel.nuclei.data import load_nuclei
from fewlabel.nuclei.inference import predict_proximity
from fewlabel.nuclei.matching import best_threshold, count_detections, detection_scores, f1_by_threshold, match_points
from fewlabel.nuclei.peaks import above, find_peaks
from fewlabel.nuclei.proximity import proximity_map
from fewlabel.nuclei.synth import STYLES, render_tile, write_synthetic
from test_rundir import undocumented

NUCLEI = dict(
    task="nuclei", strategy="full", model="test_efficientnet", pretrained="none", img_size=64, epochs=3,
    batch_size=8, lr=3e-3, progress=False, task_options={"crops_per_image": 2, "tile": 64, "overlap": 16},
)  # fmt: skip


def test_inverse_proximity_map_matches_values_worked_by_hand():
    m = proximity_map(np.array([[2.0, 1.0]]), (3, 5), radius=2, alpha=1.0, form="inverse")
    assert m[1, 2] == pytest.approx(1.0)  # on the centre
    assert m[1, 3] == pytest.approx(0.5)  # D = 1: 1 / (1 + 1)
    assert m[0, 3] == pytest.approx(1 / (1 + math.sqrt(2)), rel=1e-6)
    assert m[1, 4] == pytest.approx(1 / 3) and m[1, 0] == pytest.approx(1 / 3)  # D = r: still inside
    assert m[0, 0] == 0.0  # D = sqrt(5) > r


def test_exponential_proximity_map_and_the_nearest_centre_wins():
    m = proximity_map(np.array([[2.0, 1.0]]), (3, 5), radius=2, alpha=2.0, form="exponential")
    assert m[1, 2] == pytest.approx(1.0) and m[1, 4] == pytest.approx(0.0)
    assert m[1, 3] == pytest.approx((math.e - 1) / (math.e**2 - 1), rel=1e-6)
    two = proximity_map(np.array([[0.0, 0.0], [4.0, 0.0]]), (1, 5), radius=3, alpha=1.0)
    assert two[0].tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.5, 1.0])
    assert proximity_map(np.zeros((0, 2)), (4, 4), radius=3).max() == 0.0


def test_peaks_above_threshold_and_apart():
    m = np.zeros((20, 30), dtype=np.float32)
    m[5, 5], m[5, 7], m[15, 20], m[2, 25] = 0.9, 0.8, 0.6, 0.2
    points, scores = find_peaks(m, threshold=0.3, min_distance=3)
    assert points.tolist() == [[5, 5], [20, 15]]  # x y, strongest first; (7, 5) too close, (25, 2) too weak
    assert scores.tolist() == pytest.approx([0.9, 0.6])
    low_points, low_scores = find_peaks(m, threshold=0.1, min_distance=3)
    assert above(low_points, low_scores, 0.3).tolist() == points.tolist()  # filtering = finding again
    assert find_peaks(np.zeros((8, 8)), 0.5)[0].shape == (0, 2)


def test_hungarian_matching_beats_greedy_and_scores_by_hand():
    predicted, true = np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[1.2, 0.0], [3.9, 0.0]])
    pairs, distances = match_points(predicted, true, radius=2.0)
    assert sorted(pairs.tolist()) == [[0, 0], [1, 1]]  # greedy nearest-first would pair (1, 0) and stop
    assert sorted(distances.tolist()) == pytest.approx([1.2, 1.9])
    counts = count_detections(np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[1.0, 0.0], [9.0, 0.0], [30.0, 30.0]]), 3)
    scores = counts.scores()
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 1)
    assert scores["precision"] == 1.0 and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(0.8) and scores["localization_error"] == pytest.approx(1.0)


def test_scores_without_detections_or_nuclei_are_defined():
    overall, per_image = detection_scores([np.zeros((0, 2)), np.zeros((0, 2))], [np.ones((3, 2)), np.zeros((0, 2))], 5)
    assert overall["f1"] == 0.0 and overall["precision"] == 1.0 and overall["recall"] == 0.0
    assert math.isnan(overall["localization_error"])
    assert per_image[1]["f1"] == 1.0  # nothing there, nothing found


def test_threshold_curve_and_choice():
    points = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    peaks = [(points, np.array([0.9, 0.5, 0.2]))]  # the 0.2 one is a false positive
    true = [np.array([[0.0, 0.0], [10.0, 0.0]])]
    curve = f1_by_threshold(peaks, true, radius=2, thresholds=[0.1, 0.3, 0.6])
    assert [r["f1"] for r in curve] == pytest.approx([0.8, 1.0, 2 / 3])
    assert best_threshold(curve) == 0.3
    assert best_threshold([{"threshold": t, "f1": 1.0} for t in (0.1, 0.2, 0.3)]) == 0.2  # middle of a plateau


def _tile(folder, name, size=(40, 50)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 200, np.uint8)).save(folder / f"{name}.png")


def test_point_csvs_masks_and_one_table_all_load(tmp_path, caplog):
    points = tmp_path / "points"
    _tile(points, "a")
    (points / "a.csv").write_text("x,y\n3,4\n10.5,20\n100,5\n")  # the last is outside the 50 x 40 image
    _tile(points, "b")  # no annotation: no nuclei
    with caplog.at_level(logging.WARNING):
        loaded = load_nuclei(str(points))
    assert loaded.points[0].tolist() == [[3, 4], [10.5, 20]] and len(loaded.points[1]) == 0
    assert "dropped 1 annotated point" in caplog.text and "no annotation file" in caplog.text
    masks = tmp_path / "masks"
    _tile(masks, "c")
    labels = np.zeros((40, 50), np.uint16)
    labels[10:13, 20:25] = 1  # centroid x 22, y 11
    labels[30:33, 5:8] = 2  # centroid x 6, y 31
    Image.fromarray(labels).save(masks / "c_mask.png")
    assert load_nuclei(str(masks)).points[0].tolist() == [[22, 11], [6, 31]]
    table = tmp_path / "table"
    _tile(table, "d")
    _tile(table, "e")
    (table / "points.csv").write_text("image,x,y\nd.png,1,2\nd.png,3,4\ne.png,,\n")
    loaded = load_nuclei(str(table / "points.csv"))
    assert [len(p) for p in loaded.points] == [2, 0]


def test_bad_annotations_are_named(tmp_path):
    _tile(tmp_path / "cols", "a")
    (tmp_path / "cols" / "a.csv").write_text("col,row\n1,2\n")
    with pytest.raises(FewlabelError, match=r"a\.csv.*\['col', 'row'\].*x,y"):
        load_nuclei(str(tmp_path / "cols"))
    (tmp_path / "cols" / "a.csv").write_text("x,y\n1,2\n3,abc\n")
    with pytest.raises(FewlabelError, match=r"a\.csv', line 3: x and y must be numbers"):
        load_nuclei(str(tmp_path / "cols"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FewlabelError, match="holds no images"):
        load_nuclei(str(tmp_path / "empty"))
    _tile(tmp_path / "none", "a")
    with pytest.raises(FewlabelError, match="no image has annotations"):
        load_nuclei(str(tmp_path / "none"))
    with pytest.raises(FewlabelError, match="no 'test' folder"):
        load_nuclei(f"{tmp_path / 'none'}:test")


def test_crops_and_symmetries_keep_targets_on_their_pixels():
    image = torch.randint(0, 256, (3, 30, 20), dtype=torch.uint8)
    target = image[:1].float() / 255  # the target is a function of the pixel
    for seed in range(8):
        torch.manual_seed(seed)
        crop, crop_target = random_symmetry(*random_crop(image, target, 16))
        assert crop.shape == (3, 16, 16) and torch.equal(crop[:1].float() / 255, crop_target)
    small, small_target = random_crop(image, target, 40)  # larger than the image: padded
    assert small.shape == (3, 40, 40) and small_target[:, 35:, :].abs().sum() == 0
    jittered = stain_jitter(image, 0.1)
    assert jittered.shape == image.shape and 0 < (jittered - image.float()).abs().mean() < 40


def test_training_crops_are_seeded_by_epoch_and_index():
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)]
    targets = [torch.rand(1, 40, 40)]
    crops = TrainingCrops(images, targets, 16, (0.5,) * 3, (0.5,) * 3, seed=0, crops_per_image=3, jitter=0.1)
    assert len(crops) == 3
    assert torch.equal(crops[(1, 2)][0], crops[(1, 2)][0]) and not torch.equal(crops[(1, 2)][0], crops[(2, 2)][0])


class LocalNet(nn.Module):
    """Three 3x3 convolutions: each output pixel sees 7 x 7 input pixels."""

    stride = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(4, 1, 3, padding=1))  # fmt: skip

    def forward(self, x):
        return self.body(x)


def test_tiled_inference_has_no_seams():
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    net = LocalNet().eval()
    whole = predict_proximity(net, image, (0.5,) * 3, (0.25,) * 3, tile=128, overlap=0)
    tiled = predict_proximity(net, image, (0.5,) * 3, (0.25,) * 3, tile=32, overlap=8, batch_size=3)
    assert whole.shape == (70, 90)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)  # half the overlap covers the 3-pixel reach
    seams = predict_proximity(net, image, (0.5,) * 3, (0.25,) * 3, tile=32, overlap=2)
    assert np.abs(seams - whole).max() > 1e-3  # too little overlap: the tile borders show
    assert grid_origins((70, 90), 32) == [(t, c) for t in (0, 32, 38) for c in (0, 32, 58)]


def test_synthetic_tiles_are_reproducible_with_centres_on_dark_nuclei(tmp_path):
    image, centres = render_tile(STYLES["breast-he"], 96, np.random.default_rng([3, 0]))
    again, same = render_tile(STYLES["breast-he"], 96, np.random.default_rng([3, 0]))
    assert np.array_equal(image, again) and np.array_equal(centres, same)
    assert image.shape == (96, 96, 3) and len(centres) > 5
    grey = image.mean(-1)
    at_centres = grey[centres[:, 1].round().astype(int).clip(0, 95), centres[:, 0].round().astype(int).clip(0, 95)]
    assert at_centres.mean() < grey.mean() - 20  # haematoxylin: nuclei are darker than the tissue
    counts = {name: len(render_tile(s, 128, np.random.default_rng(0))[1]) for name, s in STYLES.items()}
    assert counts["lymph-he"] > 2 * counts["breast-he"]  # styles differ in density
    colours = {
        name: render_tile(s, 64, np.random.default_rng(0))[0].reshape(-1, 3).mean(0) for name, s in STYLES.items()
    }
    assert colours["ihc-dab"][2] < colours["breast-he"][2] - 20  # DAB is brown, eosin pink
    record = write_synthetic(tmp_path / "synth", "lymph-he", 4, seed=1, size=48)
    assert record["images"] == {"train": 3, "test": 1}
    assert len(load_nuclei(str(tmp_path / "synth"))) == 3 and len(load_nuclei(f"{tmp_path / 'synth'}:test")) == 1


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei") / "data"
    write_synthetic(root, "breast-he", 10, seed=0, size=96, test_fraction=0.2)
    return root


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    return fewlabel.train(str(synth), tmp_path_factory.mktemp("runs") / "nuc", **NUCLEI)


def test_the_nuclei_task_trains_chooses_a_threshold_and_reports(trained, synth):
    run, metrics = trained.run_dir, trained.metrics
    _, card = load_model_files(run, fewlabel.methods.build_network)
    assert card.task == "nuclei" and 0.05 <= card.extras["threshold"] <= 0.95
    assert card.extras["threshold_chosen_on"] == "validation" and card.extras["proximity_radius"] == 6.0
    assert metrics["eval_data"] == "test" and metrics["n_samples"] == 2
    assert {"f1", "precision", "recall", "localization_error", "f1_by_threshold"} <= set(metrics)
    assert metrics["f1"] == pytest.approx(
        dict((r["threshold"], r["f1"]) for r in metrics["f1_by_threshold"])[card.extras["threshold"]]
    )
    header, *rows = (run / "detections.csv").read_text().splitlines()
    assert header == "image,x,y,score,status"
    statuses = {row.rsplit(",", 1)[1] for row in rows}
    assert statuses <= {"matched", "false_positive", "missed"}
    n_true = sum(1 for row in rows if row.endswith((",matched", ",missed")))
    assert n_true == metrics["n_nuclei"]
    assert undocumented(run) == []  # every file of a nuclei run is in fewlabel.rundir.FILES
    report = (run / "report.html").read_text()
    assert "Nucleus detection" in report and "F1 against the threshold" in report
    again = fewlabel.evaluate(run, f"{synth}:test")
    assert again["f1"] == pytest.approx(metrics["f1"])


def test_nuclei_configs_refuse_what_cannot_work(synth, tmp_path):
    with pytest.raises(
        FewlabelError, match="task_options: proximity_radiuss: unknown key; accepted keys: proximity_radius"
    ):
        make_config({"data": str(synth), "task": "nuclei", "task_options": {"proximity_radiuss": 4}})
    with pytest.raises(FewlabelError, match="task 'classification' takes none"):
        make_config({"data": str(synth), "task_options": {"tile": 4}})
    with pytest.raises(FewlabelError, match="multiple of the network's stride 16"):
        fewlabel.train(str(synth), tmp_path / "odd", **NUCLEI | {"img_size": 40})
    with pytest.raises(FewlabelError, match="augment/vflip: the nuclei task augments its own way"):
        fewlabel.train(str(synth), tmp_path / "aug", **NUCLEI | {"augment": "randaugment"})
    with pytest.raises(FewlabelError, match="--refit: task 'nuclei'"):
        fewlabel.train(str(synth), tmp_path / "refit", **NUCLEI | {"refit": True})


def test_nuclei_commands_synth_detect_eval_and_fine_tune(trained, synth, tmp_path):
    from typer.testing import CliRunner

    from fewlabel.cli import app

    runner = CliRunner()
    made = runner.invoke(
        app, ["nuclei", "synth", "--style", "ihc-dab", "--n", "3", "--size", "80", "--out", str(tmp_path / "ihc")]
    )
    assert made.exit_code == 0, made.output
    tiles = sorted((tmp_path / "ihc").rglob("*.png"))
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(np.array(Image.open(tiles[0])), (2, 3, 1))).save(big)  # 160 x 240: tiled at 64
    out = tmp_path / "found" / "detections.csv"
    found = runner.invoke(app, ["nuclei", "detect", str(trained.run_dir), str(tiles[0]), str(big), "--out", str(out)])
    assert found.exit_code == 0, found.output
    header, *rows = out.read_text().splitlines()
    assert header == "image,x,y,score" and all(r.startswith((str(tiles[0]), str(big))) for r in rows)
    assert (out.parent / "big.detections.png").is_file() and (out.parent / f"{tiles[0].stem}.detections.png").is_file()
    scored = runner.invoke(
        app,
        ["nuclei", "eval", str(trained.run_dir), f"{synth}:test", "--radius", "3", "--out", str(tmp_path / "m.json")],
    )
    assert scored.exit_code == 0, scored.output
    tight = fewlabel.evaluate(trained.run_dir, f"{synth}:test", match_radius=3.0)
    assert tight["match_radius"] == 3.0
    assert tight["f1"] <= trained.metrics["f1"] + 1e-9  # a smaller radius matches fewer
    bad = runner.invoke(app, ["nuclei", "detect", str(trained.run_dir), str(tmp_path / "m.json")])
    assert isinstance(bad.exception, FewlabelError) and "Unreadable image" in str(bad.exception)
    tuned = fewlabel.train_nuclei(
        str(tmp_path / "ihc"),
        tmp_path / "tuned",
        **NUCLEI | {"epochs": 1, "pretrained": str(trained.run_dir / "model.safetensors")},
    )
    assert tuned.metrics["f1"] >= 0 and fewlabel.load(tuned.run_dir).card.extras["threshold"] > 0
    with pytest.raises(FewlabelError, match="nuclei network with encoder test_efficientnet, 4 stages"):
        fewlabel.train_nuclei(
            str(tmp_path / "ihc"),
            tmp_path / "other",
            **NUCLEI | {"pretrained": str(trained.run_dir / "model.safetensors"), "task_options": {"stages": 3}},
        )


def test_transfer_trains_each_way_fine_tunes_mixes_and_resumes(tmp_path):
    data = [tmp_path / "he", tmp_path / "lymph"]
    write_synthetic(data[0], "breast-he", 6, seed=0, size=64, test_fraction=0.34)
    write_synthetic(data[1], "lymph-he", 6, seed=1, size=64, test_fraction=0.34)
    options = {k: v for k, v in NUCLEI.items() if k != "task"} | {"epochs": 1}
    record = fewlabel.nuclei_transfer([str(d) for d in data], tmp_path / "transfer", few=2, few_val=1, **options)
    matrix = np.asarray(record["f1_matrix"]["f1"])
    assert matrix.shape == (2, 2) and record["f1_matrix"]["trained_on"] == ["he", "lymph"]
    assert record["targets"]["lymph"]["from"]["he"]["as_is"] == matrix[0, 1]
    assert set(record["targets"]["he"]["from"]["lymph"]) == {"as_is", "fine_tuned", "mixed"}
    assert len(list((tmp_path / "transfer" / "data" / "few-he" / "train").glob("*.png"))) == 2
    mixed = tmp_path / "transfer" / "data" / "mix-lymph-he"
    assert len(list((mixed / "train").glob("*.png"))) == 4 + 2  # all lymph's training images and he's few
    assert len(list((mixed / "train").glob("*.csv"))) == 4 + 2
    assert record["few_crops_per_image"] == 2 * 3 // 2  # as many crops per epoch as a source fit: 2 x 3 / 2
    assert "Nucleus detection across styles" in (tmp_path / "transfer" / "report.html").read_text()
    finished = (tmp_path / "transfer" / "on-he" / "metrics.json").stat().st_mtime
    again = fewlabel.nuclei_transfer([str(d) for d in data], tmp_path / "transfer", few=2, few_val=1, **options)
    assert (tmp_path / "transfer" / "on-he" / "metrics.json").stat().st_mtime == finished  # finished runs are kept
    assert again["f1_matrix"] == record["f1_matrix"]


def test_nuclei_training_under_two_process_ddp_matches_one_process(synth, tmp_path):
    import json
    import os
    import subprocess
    import sys

    options = NUCLEI | {"epochs": 2, "freeze_bn": "yes", "dropout": 0.0}  # frozen BatchNorm: half batches add up
    single = fewlabel.train(str(synth), tmp_path / "single", **options)
    flags = ["--encoder", "test_efficientnet", "--pretrained", "none", "--img-size", "64", "--epochs", "2",
             "--batch-size", "4", "--lr", "3e-3", "--freeze-bn", "yes", "--dropout", "0", "--no-progress",
             "--crops-per-image", "2", "--tile", "64", "--overlap", "16", "--strategy", "full",
             "--devices", "2", "--distributed", "ddp", "--accelerator", "cpu"]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "fewlabel.cli", "nuclei", "train", str(synth), "--out", str(tmp_path / "ddp"), *flags]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["threshold"] == single.metrics["threshold"]
    assert ddp["f1"] == pytest.approx(single.metrics["f1"], abs=0.02)
    from safetensors.torch import load_file

    ddp_weights, one_weights = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("ddp", "single"))
    for name, tensor in one_weights.items():  # two half batches took the same steps as one whole batch
        assert torch.allclose(ddp_weights[name], tensor, atol=1e-4), name

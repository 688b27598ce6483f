"""Monocular depth: the renderer against the closed form of a straight tube, the depth metrics
and losses against values worked out by hand, the data folder's bad inputs, joint augmentation,
and the task trained, fine-tuned, predicted, evaluated and chained in a recipe."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fewlabel
from fewlabel import FewlabelError, api
from fewlabel.depth.augment import DepthPairs, resize_depth
from fewlabel.depth.data import DepthSet, load_depth
from fewlabel.depth.inference import DepthPredictor
from fewlabel.depth.metrics import depth_scores, image_errors
from fewlabel.depth.render import (
    ANATOMY,
    FAR_MM,
    LIGHTING,
    PATIENT_ANATOMY,
    Scene,
    Tube,
    draw_scene,
    ray_cast,
    render,
    scene_parameters,
    straight_tube_depth,
    write_renders,
)
from fewlabel.depth.task import depth_loss
from fewlabel.stepwise.recipe import read_recipe, run_recipe
from test_rundir import undocumented

DEPTH = dict(
    strategy="full",
    model="test_efficientnet",
    pretrained="none",
    img_size=32,
    epochs=2,
    batch_size=4,
    lr=3e-3,
    progress=False,
)


def _straight(radius: float) -> Scene:
    scene = draw_scene(np.random.default_rng(0))
    flat = dict(scene.values) | {"fold_depth": 0.0, "bend_mm": 0.0, "offset": 0.0, "tilt": 0.0, "radius_mm": radius}
    return Scene(flat, scene.phases, scene.colour)


def test_a_straight_tube_renders_its_closed_form_depth():
    depth = ray_cast(Tube(_straight(25.0)), 96).numpy()
    expected = straight_tube_depth(96, 25.0)
    away_from_cap = expected < 0.95 * FAR_MM  # the ring where the far cap starts is interpolated across a kink
    assert away_from_cap.mean() > 0.95
    assert np.abs(depth - expected)[away_from_cap].max() / expected[away_from_cap].min() < 1e-4
    corner = 25.0 / math.hypot(*(((95.5 - 48) / (48 / math.tan(math.radians(55)))),) * 2)
    assert depth[95, 95] == pytest.approx(corner, rel=1e-4)  # z = R / |(u, v)| by hand at a corner pixel


def test_renders_are_seeded_share_their_depth_across_styles_and_light_falls_off():
    scene = draw_scene(np.random.default_rng(3))
    plain, depth = render(scene, 64, "synthetic", seed=1)
    photo, same_depth = render(scene, 64, "cinematic", seed=1)
    again, _ = render(scene, 64, "cinematic", seed=1)
    assert np.array_equal(depth, same_depth) and np.array_equal(photo, again)
    assert not np.array_equal(plain, photo)
    assert np.isfinite(depth).all() and depth.min() > 0 and depth.max() <= FAR_MM
    brightness = photo.astype(float).mean(-1).ravel()
    rank = np.argsort(np.argsort(depth.ravel()))
    assert np.corrcoef(np.argsort(np.argsort(brightness)), rank)[0, 1] < -0.5  # inverse-square: far is dark
    with pytest.raises(FewlabelError, match="depth style 'photo'"):
        render(scene, 32, "photo")


def test_a_colon_scaled_as_a_whole_looks_the_same_so_absolute_scale_comes_from_the_prior():
    """Shading depends on angles only and auto-exposure cancels the fall-off: a colon 1.3 times
    larger in every length renders nearly the same image with every depth 1.3 times larger, while
    widening it alone changes the image a lot (why held-out widths cost absolute, not scaled, error)."""
    scene = draw_scene(np.random.default_rng(0))
    lengths = ("radius_mm", "fold_spacing_mm", "bend_mm", "bend_wavelength_mm")
    scaled = Scene(scene.values | {k: 1.3 * scene.values[k] for k in lengths}, scene.phases, scene.colour)
    wider = Scene(scene.values | {"radius_mm": 1.3 * scene.radius_mm}, scene.phases, scene.colour)
    for style, most in (("synthetic", 3.0), ("cinematic", 6.0)):  # grey levels; the texture is in mm
        image, depth = render(scene, 96, style, seed=1)
        same, deeper = render(scaled, 96, style, seed=1)
        other, _ = render(wider, 96, style, seed=1)
        near = depth < 0.7 * FAR_MM  # the far cap does not scale
        assert np.median(deeper[near] / depth[near]) == pytest.approx(1.3, rel=1e-3)
        assert np.abs(image.astype(float) - same).mean() < most < np.abs(image.astype(float) - other).mean() / 2


def test_held_out_scenes_draw_every_parameter_outside_the_training_ranges():
    ranges = ANATOMY | LIGHTING
    for seed in range(20):
        train = draw_scene(np.random.default_rng(seed)).values
        test = draw_scene(np.random.default_rng(seed), held_out=True).values
        for name, r in ranges.items():
            assert r.low <= train[name] <= r.high
            assert not r.low < test[name] < r.high and r.low - r.spread <= test[name] <= r.high + r.spread
        for outside, shifted in (("anatomy", ANATOMY), ("lighting", LIGHTING)):  # one group shifted, the other not
            values = draw_scene(np.random.default_rng(seed), held_out=True, outside=outside).values
            assert all(not r.low < values[name] < r.high for name, r in shifted.items())
            assert all(r.low <= values[name] <= r.high for name, r in ranges.items() if name not in shifted)


def test_views_of_one_patient_share_the_colon_seen_from_elsewhere_under_new_light():
    patient = draw_scene(np.random.default_rng(0))
    views = [draw_scene(np.random.default_rng(seed), patient=patient) for seed in (1, 2)]
    for view in views:
        assert {k: view.values[k] for k in PATIENT_ANATOMY} == {k: patient.values[k] for k in PATIENT_ANATOMY}
        assert view.colour == patient.colour and view.phases[0] == patient.phases[0]
        moved = (view.phases[6] - patient.phases[6]) * patient.fold_spacing_mm / (2 * math.pi)
        z = torch.linspace(1, 150, 64)
        assert torch.allclose(Tube(view).fold(z), Tube(patient).fold(z + moved), atol=1e-4)  # the same folds, shifted
        bend_moved = (view.phases[4] - patient.phases[4]) * patient.bend_wavelength_mm / (2 * math.pi)
        assert bend_moved == pytest.approx(moved) and 0 <= moved < patient.bend_wavelength_mm
    assert views[0].exposure != views[1].exposure and views[0].offset != views[1].offset


def test_renders_from_few_patients_repeat_their_colons_and_refuse_more_patients_than_images(tmp_path):
    record = write_renders(tmp_path / "few", "synthetic", 5, seed=0, size=24, test_share=0.2, patients=2)
    assert record["patients"] == 2 and record["train"] == 4
    depths = [np.load(tmp_path / "few" / "train" / f"{i:05d}_depth.npy") for i in range(4)]
    assert not np.array_equal(depths[0], depths[2])  # the same patient from another place
    scenes = record["scenes"]  # each image's anatomy and lighting, kept and drawn again alike
    assert list(scenes) == [f"train/{i:05d}" for i in range(4)] + ["test/00004"]
    assert scenes["train/00000"]["radius_mm"] == scenes["train/00002"]["radius_mm"]  # one patient
    assert not ANATOMY["radius_mm"].low < scenes["test/00004"]["radius_mm"] < ANATOMY["radius_mm"].high
    record_file = tmp_path / "few" / "render.json"
    assert json.loads(record_file.read_text())["scenes"] == scenes
    record_file.write_text(json.dumps({k: v for k, v in record.items() if k != "scenes"}))  # an older folder
    assert scene_parameters(tmp_path / "few") == scenes
    with pytest.raises(FewlabelError, match="patients 5: accepted 1 to the number of training images \\(4\\)"):
        write_renders(tmp_path / "many", "synthetic", 5, size=24, test_share=0.2, patients=5)
    assert not (tmp_path / "many").exists()  # refused before anything was written
    with pytest.raises(FewlabelError, match="held-out parameters \\(outside\\) 'camera'"):
        write_renders(tmp_path / "bad", "synthetic", 5, size=24, outside="camera")
    assert not (tmp_path / "bad").exists()


def test_depth_errors_match_values_worked_by_hand():
    true = np.array([[1.0, 2.0], [4.0, np.nan]])
    errors = image_errors(2 * true, true)
    assert errors["abs_rel"] == pytest.approx(1.0) and errors["delta_1"] == 0.0 and errors["delta_3"] == 0.0
    assert errors["log_rmse"] == pytest.approx(math.log(2))
    assert errors["rmse"] == pytest.approx(math.sqrt((1 + 4 + 16) / 3))  # the NaN pixel is not scored
    scaled = image_errors(2 * true, true, median_scaled=True)
    assert scaled["abs_rel"] == pytest.approx(0.0, abs=1e-12) and scaled["delta_1"] == 1.0
    assert scaled["scale"] == pytest.approx(0.5) and "scale" not in errors
    near = image_errors(np.array([1.2, 1.0]), np.array([1.0, 1.0]), max_depth=None)
    assert near["abs_rel"] == pytest.approx(0.1) and near["delta_1"] == 1.0
    assert image_errors(np.ones(2), np.array([np.nan, -1.0])) is None
    scores = depth_scores([2 * true, true], [true, true])
    assert scores["absolute"]["abs_rel"] == pytest.approx(0.5)  # the mean of the two images' errors
    assert scores["absolute"]["images_scored"] == 2 and len(scores["median_scaled"]["per_image"]) == 2
    # factors 0.5 and 1: median 0.75, spread sd(2/3, 4/3) = 1/3; one factor for all: no spread
    assert scores["median_scaled"]["scale_median"] == pytest.approx(0.75)
    assert scores["median_scaled"]["scale_spread"] == pytest.approx(1 / 3)
    assert depth_scores([2 * true, 4 * true], [true, 2 * true])["median_scaled"]["scale_spread"] == pytest.approx(0)


def test_silog_ignores_scale_at_lambda_one_and_l1_counts_units():
    true = torch.tensor([[[[1.0, 2.0], [4.0, float("nan")]]]])
    log_true = torch.log(torch.nan_to_num(true, nan=1.0))
    assert depth_loss(log_true + math.log(3), true, "silog", 1.0).item() == pytest.approx(0.0, abs=1e-6)
    half = depth_loss(log_true + math.log(3), true, "silog", 0.5).item()
    assert half == pytest.approx(0.5 * math.log(3) ** 2, rel=1e-5)
    assert depth_loss(log_true + math.log(3), true, "l1", 0.5).item() == pytest.approx((2 + 4 + 8) / 3, rel=1e-5)
    assert depth_loss(log_true + math.log(3), true, "l1", 0.5, max_depth=2.0).item() == pytest.approx(3.0, rel=1e-5)
    empty = torch.full((2, 1, 2, 2), float("nan"))
    for loss in ("silog", "l1"):
        assert depth_loss(torch.zeros(2, 1, 2, 2, requires_grad=True), empty, loss, 0.5).item() == 0.0
    one_empty = torch.cat([true, torch.full_like(true, float("nan"))])
    assert depth_loss(torch.cat([log_true, log_true]) + math.log(3), one_empty, "silog", 1.0).item() == pytest.approx(
        0.0, abs=1e-6
    )  # an image without valid depth does not count in the mean over images


def test_resizing_ignores_invalid_depth_and_symmetries_move_image_and_depth_together():
    depth = torch.tensor([[[1.0, float("nan")], [3.0, 5.0]]])
    assert resize_depth(depth, 1).item() == pytest.approx(3.0)  # the mean of the valid three
    assert torch.isnan(resize_depth(torch.full((1, 4, 4), float("nan")), 2)).all()
    values = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    image = values.expand(3, -1, -1) * 2  # the image says where each depth pixel came from
    pairs = DepthPairs([image], [values + 1], mean=(0, 0, 0), std=(1 / 255,) * 3, seed=0, jitter=0.0)
    seen = set()
    for epoch in range(12):
        x, d = pairs[(epoch, 0)]
        assert torch.allclose(x[0], (d[0] - 1) * 2, atol=1e-3)
        seen.add(tuple(d[0, 0, :2].tolist()))
    assert len(seen) > 2  # several of the 8 symmetries were drawn
    assert torch.equal(pairs[(5, 0)][1], pairs[(5, 0)][1])  # seeded by (epoch, index)


def test_a_replayed_pool_is_drawn_anew_each_epoch_and_stays_last_when_joined():
    def constant_set(values: range) -> DepthSet:
        images = [torch.full((3, 4, 4), v, dtype=torch.uint8) for v in values]
        return DepthSet(images, [torch.full((1, 4, 4), float(v)) for v in values], [str(v) for v in values])

    joined = constant_set(range(3)).joined(constant_set(range(10, 16)))
    joined.replay = (6, 2)
    pairs = DepthPairs(joined.images, joined.depths, (0.0,) * 3, (1.0,) * 3, seed=0, replay=joined.replay)
    assert len(pairs) == 5 and joined.seen_per_epoch() == 5

    def epoch(number: int) -> list[int]:
        return [int(pairs[(number, index)][1][0, 0, 0]) for index in range(len(pairs))]

    draws = [epoch(number) for number in range(6)]
    assert all(d[:3] == [0, 1, 2] and len(set(d[3:])) == 2 and set(d[3:]) <= set(range(10, 16)) for d in draws)
    assert len({tuple(d[3:]) for d in draws}) > 1 and epoch(4) == draws[4]  # a draw per epoch, seeded
    with_val = joined.joined(constant_set(range(20, 22)))
    assert with_val.ids[:5] == ["0", "1", "2", "20", "21"] and with_val.ids[5:] == [str(v) for v in range(10, 16)]
    assert with_val.replay == (6, 2)


def _pair(folder: Path, name: str, depth: np.ndarray, image_size: tuple[int, int] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    h, w = image_size or depth.shape
    Image.fromarray(np.full((h, w, 3), 120, dtype=np.uint8)).save(folder / f"{name}.png")
    np.save(folder / f"{name}_depth.npy", depth.astype(np.float32))


def test_depth_folders_load_and_bad_inputs_are_named(tmp_path, caplog):
    good = tmp_path / "good"
    _pair(good, "a", np.full((6, 8), 10.0))
    Image.fromarray(np.full((6, 8, 3), 90, dtype=np.uint8)).save(good / "b.png")
    Image.fromarray((np.full((6, 8), 2500)).astype(np.uint16)).save(good / "b_depth.png")  # 25 mm at 0.01 mm/count
    bad_values = np.full((6, 8), 10.0)
    bad_values[0, :3] = [np.nan, -1.0, 0.0]
    _pair(good, "c", bad_values)
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(good / "lonely.png")
    with caplog.at_level(logging.WARNING, logger="fewlabel.data"):
        loaded = load_depth(str(good))
    assert len(loaded) == 3 and float(loaded.depths[1].max()) == pytest.approx(25.0)
    assert torch.isnan(loaded.depths[2][0, 0, :3]).all() and loaded.source["invalid_pixels"] == 3
    assert "skipped 1 image(s)" in caplog.text and "lonely.png" in caplog.text and "3 pixel(s)" in caplog.text
    with pytest.raises(FewlabelError, match="--strict: 1 image.*lonely.png"):
        load_depth(str(good), strict=True)
    mismatched = tmp_path / "mismatched"
    _pair(mismatched, "x", np.full((6, 8), 10.0), image_size=(5, 8))
    with pytest.raises(FewlabelError, match=r"x_depth.npy' is 8x6 but its image 'x.png' is 8x5"):
        load_depth(str(mismatched))
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(nothing / "y.png")
    with pytest.raises(FewlabelError, match="no image has a depth map"):
        load_depth(str(nothing))
    (nothing / "y_depth.npy").write_bytes(b"not numpy")
    with pytest.raises(FewlabelError, match="y_depth.npy' cannot be read"):
        load_depth(str(nothing))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth")
    write_renders(root / "synthetic", "synthetic", 10, seed=0, size=48, test_share=0.2)
    write_renders(root / "cinematic", "cinematic", 10, seed=1, size=48, test_share=0.2)
    return root


@pytest.fixture(scope="module")
def trained(rendered, tmp_path_factory):
    return api.train_depth(str(rendered / "synthetic"), tmp_path_factory.mktemp("runs") / "syn", **DEPTH)


def test_the_depth_task_trains_evaluates_and_reports(trained, rendered):
    run, metrics = trained.run_dir, trained.metrics
    record = json.loads((rendered / "synthetic" / "render.json").read_text())
    assert record["train"] == 8 and record["test_held_out"] == 2 and record["units"] == "mm"
    assert metrics["eval_data"] == "test" and metrics["n_samples"] == 2 and metrics["units"] == "mm"
    for key in ("abs_rel", "rmse", "log_rmse", "delta_1", "delta_2", "delta_3"):
        assert math.isfinite(metrics[key]) and math.isfinite(metrics["median_scaled"][key])
    assert len(metrics["per_image"]) == 2 and "parent" not in metrics
    factors = [image["scale"] for image in metrics["per_image"]]
    assert metrics["median_scaled"]["scale_median"] == pytest.approx(float(np.median(factors)))
    card = fewlabel.load(run).card
    low, high = card.extras["train_depth_range"]
    assert 0 < low < high <= FAR_MM and card.extras["units"] == "mm" and card.extras["depth_loss"] == "silog"
    assert card.extras["log_depth_offset"] == pytest.approx(
        math.log(load_depth(str(rendered / "synthetic")).median_depth()), rel=0.1
    )
    assert undocumented(run) == []
    report = (run / "report.html").read_text()
    assert "<h2>Depth</h2>" in report and "depth examples" in report and "scaling factor, sd / median" in report
    again = fewlabel.evaluate(run, f"{rendered / 'synthetic'}:test")
    assert again["abs_rel"] == pytest.approx(metrics["abs_rel"])


def test_fine_tuning_from_a_depth_run_is_compared_with_its_parent(trained, rendered, tmp_path):
    tuned = api.train_depth(
        str(rendered / "cinematic"), tmp_path / "ft", init=trained.run_dir, **DEPTH | {"task_options": {"images": 4}}
    )
    card = fewlabel.load(tuned.run_dir).card
    assert card.extras["parent_run"] == str(Path(trained.run_dir).resolve())
    assert card.extras["log_depth_offset"] == fewlabel.load(trained.run_dir).card.extras["log_depth_offset"]
    parent = tuned.metrics["parent"]
    on_cinematic = fewlabel.evaluate(trained.run_dir, f"{rendered / 'cinematic'}:test")
    assert parent["abs_rel"] == pytest.approx(on_cinematic["abs_rel"])  # the parent on the same images
    assert parent["test_symmetries"] is False
    averaged = fewlabel.evaluate(tuned.run_dir, f"{rendered / 'cinematic'}:test", test_symmetries=True)["parent"]
    parent_averaged = fewlabel.evaluate(trained.run_dir, f"{rendered / 'cinematic'}:test", test_symmetries=True)
    assert averaged["test_symmetries"] is True  # the parent is scored as the run is
    assert averaged["abs_rel"] == pytest.approx(parent_averaged["abs_rel"]) != pytest.approx(parent["abs_rel"])
    assert json.loads((tuned.run_dir / "splits.json").read_text())["summary"]["train"] == 4
    assert "parent run" in (tuned.run_dir / "report.html").read_text()
    with pytest.raises(FewlabelError, match="depth network with encoder test_efficientnet, 4 stages"):
        api.train_depth(
            str(rendered / "cinematic"),
            tmp_path / "other",
            **DEPTH | {"pretrained": str(trained.run_dir / "model.safetensors"), "task_options": {"stages": 3}},
        )
    with pytest.raises(FewlabelError, match="augment/vflip: the depth task augments its own way"):
        api.train_depth(str(rendered / "cinematic"), tmp_path / "aug", **DEPTH | {"augment": "randaugment"})
    with pytest.raises(FewlabelError, match="task_options: max_depht: unknown key"):
        api.train_depth(str(rendered / "cinematic"), tmp_path / "key", **DEPTH | {"task_options": {"max_depht": 1}})


def test_rehearsal_adds_a_seeded_draw_of_another_set_to_training_only(trained, rendered, tmp_path):
    synthetic = str(rendered / "synthetic")

    def tune(name: str, **options):
        one_epoch = DEPTH | {"epochs": 1, "task_options": {"images": 4, "rehearse": synthetic} | options}
        return api.train_depth(str(rendered / "cinematic"), tmp_path / name, init=trained.run_dir, **one_epoch)

    runs = [tune(f"ft{k}", rehearse_images=3) for k in range(2)]
    splits = [json.loads((run.run_dir / "splits.json").read_text()) for run in runs]
    assert splits[0]["summary"]["train"] == 7 and splits[0]["summary"]["rehearsal"] == {"data": synthetic, "images": 3}
    rehearsed = [i for i in splits[0]["labeled"] if Path(i).parent == rendered / "synthetic" / "train"]
    assert len(rehearsed) == 3 and splits[0]["labeled"] == splits[1]["labeled"]  # seeded, the same draw again
    assert splits[0]["val"] and all(Path(i).parent == rendered / "cinematic" / "train" for i in splits[0]["val"])
    assert runs[0].metrics["n_samples"] == 2  # scored on DATA's own test split
    each = tune("each", rehearse_images=3, rehearse_each_epoch=True)
    summary = json.loads((each.run_dir / "splits.json").read_text())["summary"]
    assert summary["train"] == 7 and summary["rehearsal"]["drawn_each_epoch_from"] == 8  # the whole synthetic train
    one_to_one = tune("all")
    assert json.loads((one_to_one.run_dir / "splits.json").read_text())["summary"]["rehearsal"]["images"] == 4
    with pytest.raises(FewlabelError, match="--rehearse: DATA '.*nowhere': no such file or folder"):
        tune("bad", rehearse=str(tmp_path / "nowhere"))
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_test_symmetries_average_the_8_views_turned_back_onto_the_image(trained, rendered, tmp_path):
    predictor = fewlabel.load(trained.run_dir)
    image = load_depth(f"{rendered / 'cinematic'}:test").images[0]
    turned = torch.rot90(image.flip(-1), 1, (-2, -1))

    def turn(depth: np.ndarray) -> np.ndarray:
        return np.rot90(np.flip(depth, -1), 1, (-2, -1))

    plain = predictor.depth(image)
    assert not np.allclose(predictor.depth(turned), turn(plain), rtol=1e-3)  # the network alone is not equivariant
    predictor.symmetries = True
    averaged = predictor.depth(image)
    np.testing.assert_allclose(predictor.depth(turned), turn(averaged), rtol=1e-4)
    views = []
    predictor.symmetries = False
    for flip in (False, True):
        for turns in range(4):
            seen = torch.rot90(image.flip(-1) if flip else image, turns, (-2, -1))
            back = np.rot90(predictor.depth(seen), -turns, (-2, -1))
            views.append(np.flip(back, -1) if flip else back)
    np.testing.assert_allclose(averaged, np.exp(np.log(views).mean(0)), rtol=1e-4)  # their geometric mean
    data = f"{rendered / 'synthetic'}:test"
    assert fewlabel.evaluate(trained.run_dir, data, test_symmetries=True)["abs_rel"] != pytest.approx(
        fewlabel.evaluate(trained.run_dir, data)["abs_rel"]
    )
    with pytest.raises(FewlabelError, match="test_symmetries: averaging over the square's 8 symmetries needs"):
        api.train_depth(
            str(rendered / "cinematic"),
            tmp_path / "no-up",
            **DEPTH | {"task_options": {"symmetries": False, "test_symmetries": True}},
        )
    with pytest.raises(FewlabelError, match="rehearse_each_epoch: draws from --rehearse DATA each epoch"):
        api.train_depth(
            str(rendered / "cinematic"), tmp_path / "no-pool", **DEPTH | {"task_options": {"rehearse_each_epoch": True}}
        )
    no_up = replace(predictor.card, extras=predictor.card.extras | {"symmetries": False, "test_symmetries": True})
    with pytest.raises(FewlabelError, match="test_symmetries: averaging over the square's 8 symmetries needs"):
        DepthPredictor(predictor.model, no_up)


def test_depth_commands_render_train_predict_and_eval(trained, rendered, tmp_path):
    from typer.testing import CliRunner

    from fewlabel.cli import app

    runner = CliRunner()
    out = tmp_path / "frames"
    render_args = ["depth", "render", "--style", "synthetic", "--n", "3", "--size", "40", "--outside", "lighting"]
    made = runner.invoke(app, [*render_args, "--out", str(out)])
    assert made.exit_code == 0, made.output
    record = json.loads((out / "render.json").read_text())
    held_out = record["scenes"]["test/00002"]
    assert record["outside"] == "lighting" and 20 <= held_out["radius_mm"] <= 30  # the anatomy from its ranges
    wrong = runner.invoke(app, ["depth", "render", "--outside", "camera", "--out", str(tmp_path / "no")])
    assert wrong.exit_code == 2 and "camera" in wrong.output and not (tmp_path / "no").exists()
    again = runner.invoke(app, ["depth", "render", "--n", "2", "--out", str(out)])
    assert isinstance(again.exception, FewlabelError) and "exists; pass --overwrite" in str(again.exception)
    assert len(list((out / "train").glob("*.png"))) == 2  # nothing overwritten
    frame = sorted((out / "train").glob("*.png"))[0]
    predicted = runner.invoke(
        app, ["depth", "predict", str(trained.run_dir), str(frame), "--out", str(tmp_path / "f.png")]
    )
    assert predicted.exit_code == 0, predicted.output
    depth = np.load(tmp_path / "f.npy")
    assert depth.shape == (40, 40) and np.isfinite(depth).all() and depth.min() > 0
    assert np.array(Image.open(tmp_path / "f.png")).shape == (40, 40, 3)
    predict_args = ["depth", "predict", str(trained.run_dir), str(frame), "--out"]
    averaged = runner.invoke(app, [*predict_args, str(tmp_path / "g.png"), "--test-symmetries"])
    assert averaged.exit_code == 0, averaged.output
    assert np.load(tmp_path / "g.npy").shape == (40, 40) and not np.allclose(np.load(tmp_path / "g.npy"), depth)
    scored = runner.invoke(app, ["depth", "eval", str(trained.run_dir), f"{rendered / 'synthetic'}:test"])
    assert scored.exit_code == 0 and "median-scaled" in scored.output and "abs_rel" in scored.output
    assert "median scaling multiplied the predictions by" in scored.output
    written = tmp_path / "tta.json"
    args = ["depth", "eval", str(trained.run_dir), f"{rendered / 'synthetic'}:test", "--test-symmetries"]
    assert runner.invoke(app, [*args, "--out", str(written)]).exit_code == 0
    assert json.loads(written.read_text())["abs_rel"] == pytest.approx(
        fewlabel.evaluate(trained.run_dir, f"{rendered / 'synthetic'}:test", test_symmetries=True)["abs_rel"]
    )
    trained_cli = runner.invoke(
        app,
        [
            "depth",
            "train",
            str(rendered / "cinematic"),
            "--out",
            str(tmp_path / "cli-ft"),
            "--init",
            str(trained.run_dir),
            "--labels",
            "3",
            "--epochs",
            "1",
            "--img-size",
            "32",
            "--batch-size",
            "4",
            "--no-progress",
        ],
    )
    assert trained_cli.exit_code == 0, trained_cli.output
    assert json.loads((tmp_path / "cli-ft" / "splits.json").read_text())["summary"]["train"] == 3
    nuclei_run = runner.invoke(app, ["depth", "predict", str(tmp_path / "cli-ft"), str(tmp_path / "f.npy")])
    assert isinstance(nuclei_run.exception, FewlabelError) and "nothing written" in str(nuclei_run.exception)
    assert "f.npy" in str(nuclei_run.exception)  # the unreadable file is named


def test_the_render_cinematic_target_recipe_chains_whole_networks(rendered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_renders(Path("data/colon-target"), "cinematic", 2, seed=7, size=16)  # the shipped recipe's target DATA
    shipped = read_recipe(Path(__file__).parents[1] / "examples" / "depth-render-cinematic.yaml")
    assert [s.name for s in shipped.stages] == ["render", "cinematic", "target"]
    build = lambda style: {"method": "depth-render", "options": {"style": style, "n": 5, "size": 32}}  # noqa: E731
    recipe = {
        "name": "depth",
        "defaults": {"task": "depth", **DEPTH, "epochs": 1},
        "stages": [
            {"name": "render", "build": build("synthetic")},
            {"name": "cinematic", "build": build("cinematic")},
            {"name": "target", "data": str(rendered / "cinematic"), "task_options": {"images": 3}},
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_recipe(path, tmp_path / "out")
    assert [s["task"] for s in summary["stages"]] == ["depth"] * 3 and summary["metric_keys"][0] == "abs_rel"
    target = fewlabel.load(tmp_path / "out" / "seed-0" / "target").card
    assert target.extras["parent_run"] == str((tmp_path / "out" / "seed-0" / "cinematic").resolve())
    assert "abs rel" in (tmp_path / "out" / "report.html").read_text()
    with pytest.raises(FewlabelError, match="--compare direct: the paired comparison is of accuracy"):
        run_recipe(path, tmp_path / "out2", compare="direct")
    bad = dict(
        recipe,
        stages=[{"name": "render", "build": {"method": "depth-render", "options": {"colour": 1}}}, recipe["stages"][2]],
    )
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(FewlabelError, match=r"\['colour'\]: depth-render accepts style, n, size, test_share"):
        run_recipe(path, tmp_path / "out3")


def test_an_interrupted_depth_run_resumes_to_the_same_result(rendered, tmp_path):
    from test_methods import EpochCounter

    options = DEPTH | {"epochs": 3}
    reference = api.train_depth(str(rendered / "cinematic"), tmp_path / "ref", **options)
    with pytest.raises(RuntimeError, match="power cut"):
        api.train_depth(str(rendered / "cinematic"), tmp_path / "cut", callbacks=[EpochCounter(crash_at=2)], **options)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = api.train_depth(str(rendered / "cinematic"), tmp_path / "cut", resume=True, **options)
    assert resumed.metrics["abs_rel"] == pytest.approx(reference.metrics["abs_rel"], rel=1e-5)
    assert resumed.metrics["median_scaled"] == pytest.approx(reference.metrics["median_scaled"], rel=1e-5)


def test_layer_decay_and_partial_reach_inside_the_encoder_decoder():
    from fewlabel.models.dense import build_encoder_decoder
    from fewlabel.train.functional import decayed_param_groups, freeze_all_but_last_blocks, layer_groups

    model = build_encoder_decoder("depth", "test_efficientnet", "none")[0]
    groups = layer_groups(model, coarse=True)
    assert groups[0][0] == "encoder.model.conv_stem.weight" and "out.weight" in groups[-1]
    assert all(name.startswith("encoder.") for group in groups[:-1] for name in group)
    rates = {p: g["lr"] for g in decayed_param_groups(model, 1.0, 0.5, True, 0.0) for p in g["params"]}
    named = dict(model.named_parameters())
    assert rates[named["out.weight"]] == 1.0 and rates[named["encoder.model.conv_stem.weight"]] == 0.5 ** (
        len(groups) - 1
    )
    frozen = freeze_all_but_last_blocks(model, 1)
    assert "encoder.model.conv_stem.weight" in frozen and named["ups.0.0.weight"].requires_grad

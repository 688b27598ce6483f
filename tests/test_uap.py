"""Universal adversarial perturbations (issue 13): the batched FGSM loop, the ball, the radius
relative to the images' norm and the random control on a model whose universal direction is
known; against ART's UniversalPerturbation; and the audit (natural photos, white-box, targeted,
transfer to another run, bad inputs, the command)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel.audit.uap import (
    check_zeta,
    folded_for_inference,
    lp_norms,
    pixel_forward,
    predict,
    project,
    radius_for,
    random_control,
    sphere_rate,
    universal_perturbation,
)
from fewlabel.errors import FewlabelError


def _left_right_model() -> nn.Module:
    """Two classes by which half of an 8 x 8 image is brighter: class 0 left, class 1 right.
    Brightening the right half and darkening the left one moves every image towards class 1."""
    weights = torch.zeros(2, 1, 8, 8)
    weights[0, :, :, :4], weights[1, :, :, 4:] = 1.0, 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2, bias=False))
    model[1].weight.data = weights.flatten(1)
    return model.eval()


def _images(n: int = 200, seed: int = 0) -> torch.Tensor:
    return 0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_norms_radius_ball_and_random_control():
    half = torch.full((4, 3, 4, 4), 0.5)  # not centred (the paper's code): L2 norm 0.5 sqrt(48), not 0
    assert radius_for(half, "l2", 0.04) == pytest.approx(0.04 * 0.5 * math.sqrt(48))
    assert radius_for(half, "linf", 0.1) == pytest.approx(0.05)
    mixed = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])  # the mean of the images' norms
    assert radius_for(mixed, "l2", 0.1) == pytest.approx(0.1 * math.sqrt(48) / 2)
    v = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert float(project(v, "l2", 0.5).norm()) == pytest.approx(0.5)
    assert float(project(v, "linf", 0.1).abs().max()) == pytest.approx(0.1)
    small = v * 1e-3
    assert torch.equal(project(small, "l2", 0.5), small)
    generator = torch.Generator().manual_seed(1)
    assert float(random_control((3, 4, 4), "l2", 0.7, generator).norm()) == pytest.approx(0.7)
    assert torch.allclose(random_control((3, 4, 4), "linf", 0.2, generator).abs(), torch.full((3, 4, 4), 0.2))
    assert lp_norms(torch.stack([v, 2 * v]), "l2")[1] == pytest.approx(2 * float(v.norm()))
    with pytest.raises(ValueError, match="norm must be one of l2, linf"):
        project(v, "l1", 1.0)


def test_a_targeted_uap_sends_most_images_to_the_target_and_the_random_control_does_not():
    forward, images = pixel_forward(_left_right_model(), [0.0], [1.0]), _images()
    uap = universal_perturbation(forward, images, norm="l2", zeta=0.2, step=0.002, target=1, delta=0.05)
    assert float(uap.perturbation.norm()) <= uap.radius + 1e-6
    assert uap.fooling_rate >= 0.9 and uap.fooling_rate == sphere_rate(forward, images, uap.perturbation, target=1)
    assert all(seen < 0.95 for seen in uap.history[:-1]) and len(uap.history) == uap.passes  # the stop read what
    assert uap.history[-1] <= uap.fooling_rate + 1e-6  # each pass saw: it trails the final perturbation's rate
    left, right = uap.perturbation[..., :4].mean(), uap.perturbation[..., 4:].mean()
    assert right > 0 > left  # the known universal direction
    control = random_control(uap.perturbation.shape, "l2", uap.radius, torch.Generator().manual_seed(0))
    natural = float((predict(forward, images) == 1).float().mean())
    assert sphere_rate(forward, images, control, target=1) < natural + 0.1 < uap.fooling_rate
    held_out = _images(seed=1)  # universal: it transfers to images it was not built from
    assert sphere_rate(forward, held_out, uap.perturbation, target=1) >= 0.85


@pytest.mark.parametrize(("norm", "zeta"), [("l2", 1.0), ("linf", 0.5)])
def test_an_untargeted_uap_fools_far_more_than_the_random_control_at_the_same_norm(norm, zeta):
    forward = pixel_forward(_left_right_model(), [0.0], [1.0])
    images = _images()
    images[..., :4] += 0.2  # all predicted class 0: one direction (to class 1) fools them all
    assert bool((predict(forward, images) == 0).all())
    uap = universal_perturbation(forward, images, norm=norm, zeta=zeta, step=0.004, delta=0.05, max_passes=5)
    control = random_control(uap.perturbation.shape, norm, uap.radius, torch.Generator().manual_seed(0))
    assert float(lp_norms(uap.perturbation[None], norm)[0]) <= uap.radius + 1e-6
    assert uap.fooling_rate >= 0.9
    assert sphere_rate(forward, images, control) <= 0.1
    perturbed = (images + uap.perturbation).clamp(0, 1)
    assert perturbed.min() >= 0 and perturbed.max() <= 1


def test_the_folded_copy_computes_the_same_logits_and_gradients_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2), model[1].weight.data.uniform_(0.5, 2)
    model.train()
    folded = folded_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(model[1], nn.BatchNorm2d) and model.training  # the original is untouched
    x = torch.rand(5, 1, 8, 8, requires_grad=True)
    model.eval()
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    (fast,) = torch.autograd.grad(folded(x).sum(), x)
    assert torch.allclose(plain, fast, atol=1e-5)


def test_the_batched_loop_fools_as_many_as_the_per_image_loop():
    forward, images = pixel_forward(_left_right_model(), [0.0], [1.0]), _images(100)
    options = dict(norm="l2", zeta=0.2, step=0.002, target=1, delta=0.0, max_passes=2)
    batched = universal_perturbation(forward, images, batch_size=50, **options)
    one_by_one = universal_perturbation(forward, images, batch_size=1, **options)  # ART's loop
    assert batched.fooling_rate >= one_by_one.fooling_rate - 0.02


def test_zeta_outside_its_range_is_refused():
    assert check_zeta(0.04) == 0.04
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"zeta must be in \(0, 1\]"):
            check_zeta(bad)


@pytest.mark.parametrize(("zeta", "fgsm_eps"), [(0.5, 0.1), (0.7, 0.002)])
def test_at_the_same_norm_budget_ours_fools_at_least_as_many_images_as_arts_universal_perturbation(zeta, fgsm_eps):
    """ART's UniversalPerturbation with its FGSM attacker (one image per attack call), on the
    same model, images, radius, FGSM step, passes and stopping rule. ART folds a step in only
    when that one step flips the image: with large steps both fool the same share, with a step
    as small as the paper's (0.002 here) ART's perturbation never moves."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    model = _left_right_model()
    images = _images(120)
    images[..., :4] += 0.2  # all predicted class 0
    forward = pixel_forward(model, [0.0], [1.0])
    ours = universal_perturbation(forward, images, norm="l2", zeta=zeta, step=2 * fgsm_eps, delta=0.05, max_passes=3)
    classifier = PyTorchClassifier(
        model, nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=2, clip_values=(0.0, 1.0)
    )
    attack = UniversalPerturbation(
        classifier, attacker="fgsm", attacker_params={"eps": fgsm_eps, "norm": np.inf}, delta=0.05, max_iter=3,
        eps=ours.radius, norm=2, verbose=False,
    )  # fmt: skip
    np.random.seed(0)
    attack.generate(images.numpy())
    art_noise = torch.from_numpy(attack.noise[0]).float()
    assert float(art_noise.norm()) <= ours.radius + 1e-4  # the same budget
    assert ours.fooling_rate >= sphere_rate(forward, images, art_noise) and ours.fooling_rate >= 0.7


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):

    root = tmp_path_factory.mktemp("uap")
    data = root / "data"
    make_image_folder(data / "train", per_class=8, seed=1)
    make_image_folder(data / "test", per_class=4, seed=2)
    fewlabel.train(str(data), root / "run", strategy="full", **FAST)
    return root, data


def _photos(folder, seed: int = 0):
    """Photos of any size and mode, one smaller than the model's input, and one corrupt file."""

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (70, 50), dtype=np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), mode="RGBA").save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_the_audit_writes_uap_json_and_the_perturbation_from_natural_photos(trained_run, caplog):

    root, data = trained_run
    photos = _photos(root / "photos")
    with caplog.at_level(logging.INFO, logger="fewlabel.data"):
        record = fewlabel.audit_uap(root / "run", natural=photos, images=24, zeta=0.08, step=0.01, max_passes=2)
    assert "broken.jpg" in caplog.text and "enlarged" in caplog.text
    saved = json.loads((root / "run" / "audit" / "uap" / "uap.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert record["building_images"] == 24 and record["eval_images"] == 12 and record["eval_data"] == f"{data}:test"
    for split in ("building", "evaluation"):
        assert {"fooling_rate", "random_control_fooling_rate"} == set(record[split])
        assert all(0.0 <= rate <= 1.0 for rate in record[split].values())
    assert set(record["per_class"]) == {"red", "green", "blue"}
    test_pixels = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR))).permute(2, 0, 1)
         for f in sorted((data / "test").rglob("*.png"))]
    ).float() / 255  # fmt: skip
    # the radius comes from the target domain (the evaluation images), not from the photos
    assert record["radius_pixels"] == pytest.approx(radius_for(test_pixels, "l2", 0.08), rel=0.05)
    v = np.load(root / "run" / "audit" / "uap" / "perturbation.npy")
    assert v.shape == (3, 32, 32) and float(np.linalg.norm(v)) <= record["radius_pixels"] + 1e-5
    assert (root / "run" / "audit" / "uap" / "uap.png").read_bytes()[:4] == b"\x89PNG"
    report = (root / "run" / "report.html").read_text()  # the run's report gained its robustness section
    assert "Robustness: universal adversarial perturbation" in report
    assert f"{record['evaluation']['fooling_rate']:.3f}" in report and 'alt="universal perturbation"' in report


def test_a_perturbation_left_inside_its_ball_is_recorded_and_warned_about(trained_run, tmp_path, caplog):

    root, data = trained_run
    options = dict(source=f"{data}:train", zeta=0.1, max_passes=1)
    with caplog.at_level(logging.WARNING, logger="fewlabel.audit"):
        weak = fewlabel.audit_uap(root / "run", step=1e-5, out=tmp_path / "weak", **options)
    assert weak["ball_filled"] < 0.1 and "reached" in caplog.text and "understate" in caplog.text
    assert weak["perturbation_norm_pixels"] == pytest.approx(weak["ball_filled"] * weak["radius_pixels"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fewlabel.audit"):
        full = fewlabel.audit_uap(root / "run", step=0.5, out=tmp_path / "full", **options)
    assert full["ball_filled"] == pytest.approx(1.0, abs=1e-4) and "understate" not in caplog.text


def test_the_white_box_variant_and_a_target_class(trained_run, tmp_path):

    root, data = trained_run
    record = fewlabel.audit_uap(
        root / "run", source=f"{data}:train", target="blue", zeta=0.1, step=0.01, max_passes=2, out=tmp_path / "t"
    )
    assert record["built_from"] == f"DATA {data}:train" and record["building_images"] == 24
    assert "targeted_success_rate" in record["evaluation"] and (tmp_path / "t" / "uap.json").is_file()


def test_bad_audit_inputs_are_one_clear_line(trained_run, tmp_path):

    root, _ = trained_run
    photos = _photos(tmp_path / "photos")
    cases = [
        (dict(natural=photos, zeta=0.0), r"--zeta: zeta must be in \(0, 1\]"),
        (dict(natural=photos, zeta=3.0), r"--zeta: zeta must be in \(0, 1\]"),
        (dict(natural=photos, target="purple"), r"--target 'purple' is not a class of this model; its classes: blue, "),
        (dict(natural=tmp_path / "nowhere"), r"Photo folder '.*nowhere' does not exist"),
        (dict(), r"either --natural PHOTOS \(a folder\) or --source DATA"),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "x.png").write_bytes(b"junk")
    cases += [
        (dict(natural=tmp_path / "empty"), r"holds no image files"),
        (dict(natural=tmp_path / "unreadable"), r"none of its 1 image files could be read"),
    ]
    for options, message in cases:
        with pytest.raises(FewlabelError, match=message) as info:
            fewlabel.audit_uap(root / "run", out=tmp_path / "out", **options)
        assert "\n" not in str(info.value)
    (tmp_path / "incomplete").mkdir()
    with pytest.raises(FewlabelError):
        fewlabel.audit_uap(tmp_path / "incomplete", natural=photos)
    assert not (tmp_path / "out").exists()  # nothing written by a refused audit


def test_the_audit_command_prints_the_rates(trained_run, tmp_path, monkeypatch, capsys):
    from fewlabel.cli import main

    root, _ = trained_run
    photos = _photos(tmp_path / "photos")
    args = ["audit", "uap", str(root / "run"), "--natural", str(photos), "--images", "8", "--max-passes", "1",
            "--out", str(tmp_path / "cli")]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["fewlabel", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "random control" in out and "evaluation" in out and (tmp_path / "cli" / "uap.json").is_file()
    assert "of its radius after 1 passes over 8 images" in out


def test_compare_scores_the_same_perturbation_against_another_architecture(trained_run, tmp_path):

    root, data = trained_run
    options = FAST | {"model": "resnet10t", "img_size": 48}
    other = fewlabel.train(str(data), tmp_path / "other", strategy="full", **options)
    photos = _photos(tmp_path / "photos")
    record = fewlabel.audit_uap(
        root / "run", natural=photos, images=16, max_passes=1, out=tmp_path / "a", compare=[other.run_dir]
    )
    transfer = record["compare"][str(other.run_dir)]
    assert transfer["arch"] == "resnet10t" and "resized to 48 px" in transfer["resized"]
    assert 0 <= transfer["fooling_rate"] <= 1 and 0 <= transfer["random_control_fooling_rate"] <= 1
    assert json.loads((tmp_path / "a" / "uap.json").read_text())["compare"] == json.loads(json.dumps(record["compare"]))
    assert np.load(tmp_path / "a" / "perturbation.npy").shape == (3, 32, 32)  # this run's perturbation, unchanged


def test_images_stored_smaller_than_the_model_input_are_resized_as_the_model_sees_them():
    from fewlabel.audit.uap_audit import model_pixels
    from fewlabel.data.augment import BatchTransform

    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = model_pixels(images, 32)
    assert pixels.shape == (3, 1, 32, 32) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    seen = BatchTransform("none", 32, [0.0] * 3, [1.0] * 3, train=False)(images)  # the model's own transform
    assert torch.allclose(pixels.expand(-1, 3, -1, -1), seen, atol=1e-5)

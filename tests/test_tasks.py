"""The task interface: classification is one implementation; a per-pixel regression task written
in the tests (tests/dense_task.py) keeps its images uncropped and aligned with their targets,
trains through the same engine, saves, reloads and runs under two-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fewlabel
from dense_task import NAME, load_pixels, rule, write_pixel_images
from fewlabel import FewlabelError
from fewlabel.config import make_config
from fewlabel.tasks import get_task, list_tasks

DENSE = {
    "task": NAME,
    "model": "test_efficientnet",
    "pretrained": "none",
    "strategy": "full",
    "img_size": 24,
    "epochs": 4,
    "batch_size": 4,
    "lr": 1e-2,
    "freeze_bn": "yes",  # then two processes with half the batch take exactly one process's steps
    "dropout": 0.0,
    "progress": False,
}


@pytest.fixture(scope="module")
def pixels(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pixels")
    write_pixel_images(root / "train", 16, seed=0)
    write_pixel_images(root / "test", 4, seed=1)
    return root


def unnormalise(image: torch.Tensor, info) -> torch.Tensor:
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    return ((image * std + mean) * 255).round()


def test_images_stay_uncropped_and_augmentation_moves_targets_with_their_pixels(pixels):
    task = get_task(NAME)
    cfg = make_config({"data": str(pixels)} | DENSE)
    data = task.prepare_data(cfg, seed=0)
    assert data.train.images[0].shape == (3, 40, 56)  # as written: neither resized nor cropped square
    _, info = task.build_model(cfg, data)
    train_set = task.dataset(data.train, info, cfg, True, seed=0)
    crops = set()
    for key in [(epoch, index) for epoch in range(3) for index in range(len(train_set))]:
        image, target = train_set[key]
        assert image.shape == (3, 24, 24) and target.shape == (1, 24, 24)
        assert torch.allclose(rule(unnormalise(image, info)), target, atol=1e-5)  # the target is still on its pixel
        crops.add(target.sum().item())
    assert len(crops) > len(train_set)  # crops and flips differ between epochs
    image, target = task.dataset(data.eval, info, cfg, False, seed=0)[0]
    assert image.shape == (3, 40, 56) and torch.equal(target, data.eval.targets[0])  # evaluation: whole images


def test_a_dense_task_trains_through_the_engine_saves_and_reloads(pixels, tmp_path):
    result = fewlabel.train(str(pixels), tmp_path / "run", **DENSE | {"epochs": 8})
    run = result.run_dir
    baseline = torch.cat([t.flatten() for t in load_pixels(pixels / "test").targets]).pow(2).mean()
    assert result.metrics["mse"] < 0.2 * float(baseline)  # learnt the rule: far better than predicting zero
    assert json.loads((run / "model.json").read_text())["task"] == NAME
    assert [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]] == ["finetune"] * 8
    assert "Per-pixel regression" in (run / "report.html").read_text()
    predictor = fewlabel.load(run)
    test = load_pixels(pixels / "test")
    maps = predictor.predict(test)
    assert maps[0].shape == (1, 40, 56)
    errors = json.loads((run / "pixel_errors.json").read_text())
    assert [float((m - t).pow(2).mean()) for m, t in zip(maps, test.targets, strict=True)] == pytest.approx(
        [errors[i] for i in test.ids], rel=1e-5
    )
    metrics = fewlabel.evaluate(run, str(pixels / "test"))
    assert metrics["mse"] == pytest.approx(result.metrics["mse"], rel=1e-5)
    from fewlabel.api import load_classifier

    with pytest.raises(FewlabelError, match=f"is a {NAME} run; predict and serve take classification runs"):
        load_classifier(run)


def test_dense_task_under_two_process_ddp_matches_one_process(pixels, tmp_path):
    single = fewlabel.train(str(pixels), tmp_path / "single", **DENSE)
    options = DENSE | {"batch_size": 2, "devices": "2", "distributed": "ddp", "accelerator": "cpu"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).parent / "dense_task.py"), str(pixels), str(tmp_path / "ddp"), json.dumps(options),
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["mse"] == pytest.approx(single.metrics["mse"], rel=1e-3)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )


def test_task_and_method_mismatches_are_refused(pixels, tmp_path):
    assert "classification" in list_tasks() and make_config({"data": "x"}).task == "classification"
    with pytest.raises(FewlabelError, match=r"task: Unknown task 'segmentaton'. Available: classification"):
        make_config({"data": "x", "task": "segmentaton"})
    with pytest.raises(
        FewlabelError, match=f"method 'trinet' does not train task '{NAME}' .it supports: classification"
    ):
        make_config({"data": "x", "task": NAME, "method": "trinet"})
    with pytest.raises(FewlabelError, match=f"freeze-unfreeze trains a head on cached features, which task '{NAME}'"):
        fewlabel.train(str(pixels), tmp_path / "run", **DENSE | {"strategy": "freeze-unfreeze"})

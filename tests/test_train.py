"""Training: every strategy end to end on tiny data, seeds, resume, NaN, run-directory rules."""

from __future__ import annotations

import json

import lightning as L
import pytest
import timm
import torch
from safetensors.torch import load_file

import fewlabel
from conftest import FAST
from fewlabel.data.datasets import EpochSampler
from fewlabel.errors import FewlabelError
from fewlabel.rundir import LAST_CHECKPOINT as CHECKPOINT
from fewlabel.train.functional import decayed_param_groups, freeze_all_but_last_blocks, layer_groups

RUN_FILES = (
    "config.yaml",
    "model.safetensors",
    "model.json",
    "metrics.json",
    "history.csv",
    "report.html",
    "checkpoints/last.ckpt",
)
METRIC_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auroc_macro",
    "ece",
    "nll",
    "n_samples",
    "class_names",
    "confusion_matrix",
    "per_class",
    "train_seconds",
    "train_images_per_second",
)


def history_phases(run_dir) -> list[str]:
    return [line.split(",")[0] for line in (run_dir / "history.csv").read_text().splitlines()[1:]]


@pytest.mark.parametrize(
    ("strategy", "phases"),
    [
        ("linear-probe", ["head"] * 2),
        ("freeze-unfreeze", ["head"] * 2 + ["finetune"] * 2),
        ("full", ["finetune"] * 2),
        ("layer-decay", ["finetune"] * 2),
        ("partial:2", ["finetune"] * 2),
    ],
)
def test_each_strategy_writes_a_complete_run_directory(split_folder, tmp_path, strategy, phases):
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy=strategy, **FAST)
    for name in RUN_FILES:  # a fit on cached features writes no per-epoch checkpoint
        assert (result.run_dir / name).is_file() == (name != "checkpoints/last.ckpt" or "finetune" in phases), name
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert all(key in metrics for key in METRIC_KEYS)
    assert metrics["n_samples"] == 12 and metrics["eval_data"] == "test"
    assert history_phases(result.run_dir) == phases
    predictor = fewlabel.load(result.run_dir)
    top = predictor.predict([str(next((split_folder / "test" / "red").iterdir()))], top_k=2)[0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]


def test_full_fine_tuning_learns_the_task(split_folder, tmp_path):
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="full", **FAST | {"epochs": 8})
    assert result.metrics["accuracy"] >= 0.75  # three colour classes: chance is 0.33


def test_partial_trains_only_the_last_blocks(split_folder, tmp_path):
    before = timm.create_model("test_efficientnet", num_classes=3)
    torch.manual_seed(0)
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="partial:1", **FAST | {"seed": 0})
    after = load_file(str(result.run_dir / "model.safetensors"))
    L.seed_everything(0, verbose=False)
    initial = timm.create_model("test_efficientnet", num_classes=3, drop_rate=0.2).state_dict()
    changed = {k for k in after if not torch.equal(after[k], initial[k])}
    last_block = set(layer_groups(before, coarse=False)[-2]) | set(layer_groups(before, coarse=False)[-1])
    assert changed and changed <= last_block | {k for k in after if "running" in k or "num_batches" in k}


def test_layer_decay_groups_train_slower_towards_the_stem():
    model = timm.create_model("test_efficientnet", num_classes=3)
    groups = decayed_param_groups(model, lr=1.0, decay=0.5, coarse=False, weight_decay=0.1)
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == 1.0 and min(lrs) == 0.5 ** (len(layer_groups(model, False)) - 1)
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim == 1 for p in g["params"]))
    frozen = freeze_all_but_last_blocks(model, 0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    assert len(frozen) == len(list(model.parameters())) - 2


def test_same_seed_same_metrics_other_seed_other_split(split_folder, tmp_path):
    options = FAST | {"strategy": "freeze-unfreeze", "labels_per_class": 6}
    a = fewlabel.train(str(split_folder), tmp_path / "a", seed=3, **options)
    b = fewlabel.train(str(split_folder), tmp_path / "b", seed=3, **options)
    c = fewlabel.train(str(split_folder), tmp_path / "c", seed=4, **options)
    assert a.metrics["nll"] == b.metrics["nll"] and a.metrics["confusion_matrix"] == b.metrics["confusion_matrix"]
    split = lambda r: json.loads((r.run_dir / "splits.json").read_text())  # noqa: E731
    assert split(a)["labeled"] == split(b)["labeled"] != split(c)["labeled"]
    assert len(split(a)["labeled"]) == 18 and len(split(a)["unlabeled"]) == 6


class Crash(L.Callback):
    """Simulates an interruption at the end of a given epoch of the fine-tuning phase."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.phase == "finetune" and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated power cut")


def test_resume_after_an_interruption_matches_an_uninterrupted_run(split_folder, tmp_path):
    options = FAST | {"strategy": "freeze-unfreeze", "epochs": 4}
    reference = fewlabel.train(str(split_folder), tmp_path / "ref", **options)
    with pytest.raises(RuntimeError, match="power cut"):
        fewlabel.train(str(split_folder), tmp_path / "run", callbacks=[Crash(1)], **options)
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = fewlabel.train(str(split_folder), tmp_path / "run", resume=True, **options)
    assert resumed.metrics["nll"] == pytest.approx(reference.metrics["nll"], rel=1e-6)
    assert resumed.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]
    assert history_phases(resumed.run_dir) == ["head"] * 2 + ["finetune"] * 4


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(split_folder, tmp_path):
    class Poison(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(float("nan"))

    with pytest.raises(FewlabelError, match=r"loss became nan in phase 'finetune' at epoch 1, step \d+") as err:
        fewlabel.train(str(split_folder), tmp_path / "run", strategy="full", callbacks=[Poison()], **FAST)
    assert "\n" not in str(err.value)
    assert f"Kept: {tmp_path / 'run' / CHECKPOINT}." in str(err.value) and "start a new --out" in str(err.value)
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())


def test_existing_run_directory_is_refused_unless_overwrite_or_resume(split_folder, tmp_path):
    fewlabel.train(str(split_folder), tmp_path / "run", strategy="linear-probe", **FAST)
    with pytest.raises(FewlabelError, match="exists; pass --overwrite.*--resume"):
        fewlabel.train(str(split_folder), tmp_path / "run", strategy="linear-probe", **FAST)
    with pytest.raises(
        FewlabelError, match="started with another config .*model: 'test_efficientnet' -> 'test_resnet'"
    ):
        fewlabel.train(
            str(split_folder), tmp_path / "run", resume=True, strategy="linear-probe", **FAST | {"model": "test_resnet"}
        )
    again = fewlabel.train(str(split_folder), tmp_path / "run", overwrite=True, strategy="linear-probe", **FAST)
    assert (again.run_dir / "model.safetensors").is_file()


def test_seeds_report_mean_sd_and_interval(split_folder, tmp_path):
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="linear-probe", seeds=[0, 1, 2], **FAST)
    metrics = result.metrics
    per_seed = [metrics["per_seed"][s]["accuracy"] for s in ("0", "1", "2")]
    assert metrics["accuracy"] == pytest.approx(sum(per_seed) / 3)
    assert metrics["accuracy_ci95"][0] <= metrics["accuracy"] <= metrics["accuracy_ci95"][1]
    assert all((result.run_dir / f"seed-{s}" / "model.safetensors").is_file() for s in range(3))
    assert fewlabel.load(result.run_dir).class_names == ["blue", "green", "red"]


def test_config_yaml_reruns_the_same_training(split_folder, tmp_path):
    first = fewlabel.train(str(split_folder), tmp_path / "a", strategy="freeze-unfreeze", **FAST)
    second = fewlabel.train(out=tmp_path / "b", config=first.run_dir / "config.yaml")
    assert second.config == first.config and second.metrics["nll"] == first.metrics["nll"]


def test_image_size_too_small_for_the_backbone(split_folder, tmp_path):
    with pytest.raises(FewlabelError, match="--img-size 16 is too small for 'test_efficientnet'.*at least 32"):
        fewlabel.train(str(split_folder), tmp_path / "run", **FAST | {"img_size": 16})


def test_plain_folder_holds_out_a_validation_split(image_folder, tmp_path):
    result = fewlabel.train(str(image_folder), tmp_path / "run", strategy="linear-probe", **FAST)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    assert result.metrics["eval_data"] == "validation" and len(splits["val"]) == 6


def test_balanced_sampler_evens_out_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    sampler = EpochSampler(labels, seed=0, balanced=True)
    drawn = labels[list(iter(sampler))]
    assert 35 <= int((drawn == 1).sum()) <= 65
    sampler.set_epoch(1)
    assert list(iter(sampler)) != list(iter(EpochSampler(labels, seed=0, balanced=True)))


def test_early_stopping_and_imbalance_options_run(split_folder, tmp_path):
    result = fewlabel.train(
        str(split_folder),
        tmp_path / "run",
        strategy="full",
        early_stopping=1,
        imbalance="class-weights",
        label_smoothing=0.1,
        augment="randaugment",
        schedule="onecycle",
        **FAST | {"epochs": 25, "lr": 0.05},
    )
    assert len(history_phases(result.run_dir)) < 25


def test_worker_processes_give_the_same_metrics(split_folder, tmp_path):
    options = FAST | {"strategy": "full", "augment": "standard"}
    single = fewlabel.train(str(split_folder), tmp_path / "a", workers=0, **options)
    multi = fewlabel.train(str(split_folder), tmp_path / "b", workers=2, **options)
    assert single.metrics["nll"] == multi.metrics["nll"]


def test_predictor_accepts_paths_pil_images_and_arrays(split_folder, tmp_path):
    import numpy as np
    from PIL import Image

    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="linear-probe", **FAST)
    predictor = fewlabel.load(result.run_dir)
    path = next((split_folder / "test" / "green").iterdir())
    pil = Image.open(path)
    probs = predictor.predict_proba([str(path), pil, np.asarray(pil), np.asarray(pil.convert("L"))])
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4))
    assert torch.allclose(probs[0], probs[1]) and torch.allclose(probs[1], probs[2])
    with pytest.raises(FewlabelError, match="Cannot read image 'missing.png'"):
        predictor.predict(["missing.png"])


def test_tensorboard_logger_writes_event_files(split_folder, tmp_path):
    result = fewlabel.train(str(split_folder), tmp_path / "run", strategy="full", logger="tensorboard", **FAST)
    assert list((result.run_dir / "logs" / "finetune").rglob("events.out.tfevents.*"))


def test_missing_logger_package_is_one_clear_line(split_folder, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a)
    )
    with pytest.raises(
        FewlabelError, match=r"--logger mlflow needs the 'mlflow' package: pip install 'fewlabel\[mlflow\]'"
    ):
        fewlabel.train(str(split_folder), tmp_path / "run", strategy="full", logger="mlflow", **FAST)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["partial", "partial:x", "full:2", "freze-unfreeze"])
def test_strategy_names_are_parsed_from_the_registry(bad):
    from fewlabel.train.strategies import list_strategies, parse_strategy

    assert parse_strategy("partial:3") == ("partial", 3) and parse_strategy("full") == ("full", None)
    assert "partial:N" in list_strategies()
    with pytest.raises(ValueError, match=f"unknown strategy '{bad}'; accepted: auto, linear-probe.*partial:N"):
        parse_strategy(bad)

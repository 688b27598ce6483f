"""A run ends with its best validated weights over all fits, says which, and warns when it
learned nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import fewlabel
from conftest import FAST
from fewlabel.evaluate.notices import chance_warnings, feature_map_warning, selection_sentence
from fewlabel.train.callbacks import RunSelection


def test_run_selection_keeps_the_best_score_breaks_ties_by_loss_and_copies_weights():
    net = nn.Linear(2, 1)
    selection = RunSelection("val_acc", higher=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
    selection.observe({"fit": "head", "epoch": 0, "val_acc": 0.7, "val_loss": 0.9}, net)
    with torch.no_grad():
        net.weight.fill_(2.0)
    selection.observe({"fit": "head", "epoch": 1, "val_acc": 0.7, "val_loss": 0.8}, net)  # tie, lower loss: wins
    with torch.no_grad():
        net.weight.fill_(3.0)
    selection.observe({"fit": "finetune", "epoch": 0, "val_acc": 0.5, "val_loss": 0.1}, net)
    assert selection.best["epoch"] == 1 and selection.last["fit"] == "finetune"
    assert torch.equal(selection.weights["weight"], torch.full((1, 2), 2.0))  # a copy, not the live tensor
    lower = RunSelection("val_loss", higher=False)
    lower.observe({"fit": "a", "epoch": 0, "val_loss": 0.5}, net)
    lower.observe({"fit": "a", "epoch": 1, "val_loss": 0.6}, net)
    assert lower.best["epoch"] == 0


def test_the_best_of_many_scores_must_lead_by_more_than_one_standard_error():
    from fewlabel.train.callbacks import best_of_many_margin

    assert best_of_many_margin(0.05, 1) == best_of_many_margin(0.05, 2) == 0.05  # one comparison: one error
    assert best_of_many_margin(0.05, 70) == pytest.approx(0.05 * 2.915, abs=1e-3)  # sqrt(2 ln 70)
    widths = [best_of_many_margin(0.05, n) for n in range(3, 200)]
    assert widths == sorted(widths) and widths[0] > 0.05
    # the expected best of n independent N(0, 1) draws stays below sqrt(2 ln n) (checked by sampling)
    draws = torch.randn(2000, 70, generator=torch.Generator().manual_seed(0))
    assert draws.max(1).values.mean() < best_of_many_margin(1.0, 70)


def test_selection_sentences():
    best = {"fit": "head", "epoch": 3, "val_acc": 0.77, "val_loss": 0.7}
    last = {"fit": "finetune", "epoch": 9, "val_acc": 0.5, "val_loss": 1.4}
    common = {"monitor": "val_acc", "best": best, "last": last, "val_images": 12}
    restored = selection_sentence(common | {"restored_best": True, "keep_best": True})
    assert "fit 'head', epoch 3" in restored and "restored" in restored and "0.5000" in restored
    assert "12 validation images (few: the choice is noisy)" in restored
    off = selection_sentence(common | {"restored_best": False, "keep_best": False, "val_images": 500})
    assert "--no-keep-best" in off and "noisy" not in off and "0.7700" in off
    same = selection_sentence(common | {"last": best, "restored_best": False, "keep_best": True})
    assert "fit 'head', epoch 3, also the best" in same
    close = selection_sentence(common | {"restored_best": False, "keep_best": True, "margin": 0.3})
    assert "within noise of it (±0.3000)" in close and "later weights were kept" in close


def test_chance_and_feature_map_warnings_by_hand():
    # 1000 images in 10 equal classes: chance 10%, two standard errors 1.9%
    assert len(chance_warnings(0.11, 2.3, [100] * 10)) == 2
    assert chance_warnings(0.125, 1.0, [100] * 10) == []
    majority = chance_warnings(0.8, 0.5, [800, 100, 100])  # 80% is the majority share
    assert len(majority) == 1 and "80.0%" in majority[0]
    (flat,) = chance_warnings(0.9, 0.99 * math.log(3), [10, 10, 10])  # right ranking, flat probabilities
    assert "ln(3)" in flat and "underconfident" in flat and "nothing was learned" not in flat
    assert "--img-size 64" in feature_map_warning(1, 32)[0]
    assert feature_map_warning(2, 64) == [] and feature_map_warning(None, 8) == []


@pytest.fixture
def run_options():
    return FAST | {"strategy": "freeze-unfreeze", "val_split": 0.3, "head_epochs": 3, "epochs": 2, "refit": False}


def test_a_run_that_fine_tuning_wrecks_ends_with_the_head_phase_weights(split_folder, tmp_path, run_options):
    wrecking = run_options | {"lr": 50.0}  # fine-tuning at this rate destroys the network
    result = fewlabel.train(str(split_folder), tmp_path / "keep", **wrecking)
    selection = result.metrics["model_selection"]
    assert selection["monitor"] == "val_acc" and selection["val_images"] > 0
    history = (result.run_dir / "history.csv").read_text().splitlines()
    rows = [dict(zip(history[0].split(","), line.split(","), strict=True)) for line in history[1:]]
    best_row = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"])))
    assert (selection["best"]["fit"], selection["best"]["epoch"]) == (best_row["phase"], int(best_row["epoch"]))
    assert selection["last"] == {"fit": rows[-1]["phase"], "epoch": int(rows[-1]["epoch"])} | {
        k: pytest.approx(float(rows[-1][k]), abs=1e-5) for k in ("val_acc", "val_loss")
    }
    gap = selection["best"]["val_acc"] - selection["last"]["val_acc"]
    assert selection["restored_best"] == (gap > selection["margin"] > 0)
    n, acc, epochs = selection["val_images"], selection["last"]["val_acc"], len(rows)
    one_error = math.sqrt(acc * (1 - acc) / n)  # one binomial standard error, widened for the epochs compared
    assert selection["margin"] == pytest.approx(one_error * math.sqrt(2 * math.log(epochs)))
    report = (result.run_dir / "report.html").read_text()
    assert selection_sentence(selection).split(";")[0].replace("'", "&#39;") in report
    off = fewlabel.train(str(split_folder), tmp_path / "last", keep_best=False, **wrecking)
    assert off.metrics["model_selection"]["restored_best"] is False
    if selection["restored_best"]:  # the restored weights score as the best epoch did
        assert result.metrics["nll"] < off.metrics["nll"]


def test_a_run_built_to_learn_nothing_says_so(split_folder, tmp_path, monkeypatch, capsys, run_options):
    from fewlabel.cli import main

    args = ["train", str(split_folder), "--out", str(tmp_path / "nothing"), "--model", "test_efficientnet",
            "--pretrained", "none", "--img-size", "32", "--head-epochs", "0", "--epochs", "0", "--no-progress",
            "--feature-cache", "memory"]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["fewlabel", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "nothing" / "metrics.json").read_text())
    assert any("uniform guess" in w for w in metrics["warnings"])  # an untrained head
    assert any("feature map is" in w for w in metrics["warnings"])  # 32 px through a stride-32 backbone: 1 x 1
    assert "WARNING: " in out and "uniform guess" in out.replace("\n", " ")
    assert "Warning:" in (tmp_path / "nothing" / "report.html").read_text()

"""``--strategy auto`` (candidates within a budget, the best on validation), ``--refit`` (the
chosen plan retrained on all labelled images) and the validation split they rest on."""

from __future__ import annotations

import json
import logging
import math
import sys

import lightning as L
import pytest
import torch

import fewlabel
from conftest import FAST
from fewlabel.api import build_config
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.notices import refit_sentence, search_sentence
from fewlabel.tasks.classification import prepare_classification_data
from fewlabel.train.finetune import phase_chains, refit_plan
from fewlabel.train.search import PARTIAL_BLOCKS, PREFERENCE, _fine_tuning_helped, candidates, choose
from fewlabel.train.strategies import Phase

AUTO = FAST | {"epochs": 2, "head_epochs": 3}


def test_candidates_run_cheapest_first_and_partial_only_where_the_backbone_has_the_blocks():
    cfg = build_config("x", head_lr=0.01, lr=3e-4, epochs=5, head_epochs=7)
    names = [(c.strategy, c.phase.lr, c.phase.epochs, c.from_probe) for c in candidates(cfg, PARTIAL_BLOCKS + 1)]
    assert names == [
        ("linear-probe", pytest.approx(0.003), 7, False),
        ("linear-probe", 0.01, 7, False),
        ("linear-probe", 0.03, 7, False),
        ("freeze-unfreeze", 3e-4, 5, True),
        ("freeze-unfreeze", pytest.approx(1e-4), 5, True),
        (f"partial:{PARTIAL_BLOCKS}", 3e-4, 5, True),
    ]
    assert all(not c.phase.on_features for c in candidates(cfg, PARTIAL_BLOCKS + 1)[3:])
    assert [c.strategy for c in candidates(cfg, PARTIAL_BLOCKS)][-1] == "freeze-unfreeze"
    dense = candidates(cfg, PARTIAL_BLOCKS + 1, feature_head=False)  # no probes: full from the initial network
    assert [c.strategy for c in dense] == ["full", "full", f"partial:{PARTIAL_BLOCKS}"]
    assert all(c.phase.layer_decay == 1.0 for c in dense)


def test_refit_plan_is_the_chain_of_the_held_fit_cut_at_the_held_epoch():
    phases = [Phase("head", True, 30, 0.01), Phase("finetune", False, 10, 3e-4)]
    chains = phase_chains(phases)
    assert [p["epochs"] for p in refit_plan(chains, {"fit": "finetune", "epoch": 3}, "finetune")] == [30, 4]
    assert [p["epochs"] for p in refit_plan(chains, {"fit": "head", "epoch": 11}, "finetune")] == [12]
    assert [p["epochs"] for p in refit_plan(chains, None, "finetune")] == [30, 10]  # nothing validated
    assert refit_plan(chains, None, None) == []


def test_the_preferred_candidate_wins_among_those_within_noise_of_the_top_score():
    from fewlabel.train.callbacks import RunSelection

    selection = RunSelection("val_acc", higher=True)
    rows = [
        {"fit": "probe", "rank": 5, "score": {"val_acc": 0.70, "val_loss": 0.9}},
        {"fit": "fu", "rank": 0, "score": {"val_acc": 0.62, "val_loss": 1.0}},
        {"fit": "partial", "rank": 4, "score": {"val_acc": 0.50, "val_loss": 1.1}},
        {"fit": "skipped", "rank": 1},
    ]
    assert choose(rows, selection, lambda record: 0.1)["fit"] == "fu"  # 0.62 is within 0.1 of 0.70
    assert choose(rows, selection, lambda record: 0.05)["fit"] == "probe"  # clearly better now
    assert choose(rows, selection, lambda record: 0.0)["fit"] == "probe"
    assert choose(rows[3:], selection, lambda record: 0.1) is None


def _history(run_dir) -> list[dict]:
    lines = (run_dir / "history.csv").read_text().splitlines()
    return [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]


def test_auto_tries_every_candidate_keeps_the_preferred_within_noise_and_reports_them(split_folder, tmp_path):
    result = fewlabel.train(str(split_folder), tmp_path / "auto", refit=False, gentle_candidates="always", **AUTO)
    search, selection = result.metrics["strategy_search"], result.metrics["model_selection"]
    ran = [c for c in search["candidates"] if c["status"] in ("ran", "winner")]
    assert len(ran) == 6 and [c["strategy"] for c in ran][:3] == ["linear-probe"] * 3
    assert [PREFERENCE[c["rank"]].split("@")[0] for c in ran] == ["probe"] * 3 + ["freeze-unfreeze"] * 2 + ["partial"]
    rows = _history(result.run_dir)
    for candidate in ran:  # each candidate's score is its own last validated epoch
        own = [r for r in rows if r["phase"] == candidate["fit"]]
        assert candidate["score"]["val_acc"] == pytest.approx(float(own[-1]["val_acc"]), abs=1e-4)
        assert candidate["score"]["epoch"] == int(own[-1]["epoch"])
    top = max(c["score"]["val_acc"] for c in ran)
    margin = math.sqrt(top * (1 - top) / search["val_images"]) * math.sqrt(2 * math.log(len(ran)))
    close = [c for c in ran if c["score"]["val_acc"] >= top - margin - 1e-9]
    winner = next(c for c in ran if c["status"] == "winner")
    assert search["winner"] == winner["fit"] == min(close, key=lambda c: c["rank"])["fit"]
    held = selection["best"] if selection["restored_best"] else selection["last"]
    assert selection["last"] == winner["score"] and held["fit"] in {c["fit"] for c in ran}
    assert {r["phase"] for r in rows} == {c["fit"] for c in ran}  # no other fit ran
    report = (result.run_dir / "report.html").read_text()
    assert "Strategy search (auto)" in report and all(c["fit"] in report for c in ran)
    assert search_sentence(search).split(";")[0] in report


def test_the_gentle_candidates_are_needed_unless_fine_tuning_clearly_beat_its_probe():
    from fewlabel.train.callbacks import RunSelection

    selection, margin = RunSelection("val_acc", higher=True), lambda record: 0.05
    probe = {"fit": "probe", "strategy": "linear-probe", "rank": PREFERENCE.index("probe@1"), "score": {"val_acc": 0.6}}

    def rows(fu_score, rank="freeze-unfreeze@1"):
        tuned = {"fit": "fu", "strategy": "freeze-unfreeze", "rank": PREFERENCE.index(rank)}
        return [probe, tuned | ({"score": {"val_acc": fu_score}} if fu_score is not None else {})]

    assert _fine_tuning_helped(rows(0.70), probe, selection, margin)  # 10 points above: clearly
    assert not _fine_tuning_helped(rows(0.63), probe, selection, margin)  # within noise of the probe
    assert not _fine_tuning_helped(rows(0.40), probe, selection, margin)  # fine-tuning harmed the features
    assert not _fine_tuning_helped(rows(None), probe, selection, margin)  # skipped for the budget
    assert not _fine_tuning_helped(rows(0.70, "freeze-unfreeze@0.333"), probe, selection, margin)
    assert not _fine_tuning_helped(rows(0.70), None, selection, margin)  # no probe (a dense task)


def test_auto_leaves_out_the_gentle_candidates_when_not_needed_and_says_so(split_folder, tmp_path, monkeypatch):
    def fine_tuned_and_helped(rows, *args):  # as if freeze-unfreeze, once it ran, clearly beat its probe
        return any(r["strategy"] != "linear-probe" for r in rows)

    monkeypatch.setattr(sys.modules["fewlabel.train.search"], "_fine_tuning_helped", fine_tuned_and_helped)
    result = fewlabel.train(str(split_folder), tmp_path / "auto", refit=False, **AUTO)
    search = result.metrics["strategy_search"]
    statuses = [(c["strategy"], c["status"]) for c in search["candidates"]][3:]
    assert statuses[0][0] == "freeze-unfreeze" and statuses[0][1] in ("ran", "winner")
    assert statuses[1:] == [("freeze-unfreeze", "not needed"), (f"partial:{PARTIAL_BLOCKS}", "not needed")]
    assert {r["phase"] for r in _history(result.run_dir)} == {c["fit"] for c in search["candidates"][:4]}
    sentence = search_sentence(search)
    assert "tried 4 candidates" in sentence and "--gentle-candidates always" in sentence
    with pytest.raises(FewlabelError, match="gentle_candidates: only --strategy auto uses it"):
        build_config(str(split_folder), strategy="full", gentle_candidates="always")


def test_auto_holds_out_validation_even_when_data_has_a_test_split(tmp_path):
    from conftest import make_image_folder

    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=8, seed=1)
    make_image_folder(root / "test", per_class=3, seed=2)
    result = fewlabel.train(str(root), tmp_path / "auto", refit=False, **AUTO)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    assert len(splits["val"]) == 6 and len(splits["labeled"]) == 18  # 20% of 8 per class, 3 classes
    assert result.metrics["eval_data"] == "test"
    fixed = fewlabel.train(str(root), tmp_path / "fixed", strategy="freeze-unfreeze", **AUTO)
    assert json.loads((fixed.run_dir / "splits.json").read_text())["val"] == []  # unchanged for fixed strategies


def test_a_budget_too_small_runs_the_probes_anyway_and_says_so(split_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fewlabel.train"):
        result = fewlabel.train(str(split_folder), tmp_path / "tiny", budget_minutes=1e-6, refit=False, **AUTO)
    search = result.metrics["strategy_search"]
    statuses = {c["strategy"]: c["status"] for c in search["candidates"]}
    assert [c["status"] for c in search["candidates"] if c["strategy"] == "linear-probe"].count("skipped") == 0
    assert statuses["freeze-unfreeze"] == "skipped" and statuses[f"partial:{PARTIAL_BLOCKS}"] == "skipped"
    assert all(c["estimated_seconds"] > 0 for c in search["candidates"] if c["status"] == "skipped")
    assert search["probes_exceeded_budget"] and "ran anyway" in caplog.text
    assert search["winner"].startswith("probe-") and "too small even for the linear probes" in search_sentence(search)
    assert {r["phase"] for r in _history(result.run_dir)} == {f"probe-lr{lr:.3g}" for lr in (0.003, 0.01, 0.03)}


def test_auto_holds_the_winners_last_weights_unless_an_earlier_epoch_is_clearly_better(split_folder, tmp_path):
    for keep_best in (True, False):
        result = fewlabel.train(str(split_folder), tmp_path / str(keep_best), keep_best=keep_best, refit=False, **AUTO)
        search, selection = result.metrics["strategy_search"], result.metrics["model_selection"]
        winner = next(c for c in search["candidates"] if c["status"] == "winner")
        held = selection["best"] if selection["restored_best"] else winner["score"]
        assert keep_best or not selection["restored_best"]
        predictor = fewlabel.load(result.run_dir)
        data = prepare_classification_data(result.config, 0)
        val_acc = float((predictor.predict_proba(data.val).argmax(1) == data.val.labels).float().mean())
        assert val_acc == pytest.approx(held["val_acc"], abs=1e-6)


def test_budget_minutes_belongs_to_auto_only(split_folder, tmp_path):
    with pytest.raises(FewlabelError, match="budget_minutes: only --strategy auto uses it"):
        fewlabel.train(str(split_folder), tmp_path / "x", strategy="linear-probe", budget_minutes=5, **AUTO)


def test_refit_retrains_the_chosen_plan_on_all_labelled_images(image_folder, tmp_path):
    result = fewlabel.train(str(image_folder), tmp_path / "refit", **AUTO)  # 8 per class, no test: val is eval
    refit = result.metrics["refit"]
    assert refit["refit"] and refit["asked"] is None and "below 50" in refit["why"]
    assert refit["images"] == 24 and refit["eval_trained_on"]
    plan, selection = refit["plan"], result.metrics["model_selection"]
    held = selection["best"] if selection["restored_best"] else selection["last"]
    assert plan[-1]["name"] == held["fit"] and plan[-1]["epochs"] == held["epoch"] + 1
    rows = _history(result.run_dir)
    refit_rows = [r for r in rows if r["phase"].startswith("refit-")]
    assert [r["phase"] for r in refit_rows] == [f"refit-{p['name']}" for p in plan for _ in range(p["epochs"])]
    assert all(r["val_acc"] == "" for r in refit_rows)  # no validation left to score on
    assert 0.0 <= refit["pre_refit"]["accuracy"] <= 1.0 and refit["pre_refit"]["eval_data"] == "validation"
    sentence = refit_sentence(refit)
    assert "not an unbiased estimate" in sentence and "24 labelled images" in sentence
    assert sentence.split(";")[0] in (result.run_dir / "report.html").read_text()
    off = fewlabel.train(str(image_folder), tmp_path / "off", refit=False, **AUTO)
    assert not off.metrics["refit"]["refit"] and "--no-refit" in off.metrics["refit"]["why"]
    assert not any(r["phase"].startswith("refit-") for r in _history(off.run_dir))


def test_refit_with_a_validation_folder_trains_on_the_training_images_only(tmp_path):
    from conftest import make_image_folder

    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=6, seed=1)
    make_image_folder(root / "val", per_class=3, seed=2)
    result = fewlabel.train(str(root), tmp_path / "run", refit=True, **AUTO)
    refit = result.metrics["refit"]
    assert not refit["refit"] and "own val split" in refit["why"] and "as --refit asks" in refit["why"]
    assert not any(r["phase"].startswith("refit-") for r in _history(result.run_dir))


def test_refit_is_refused_for_a_method_that_cannot(image_folder, tmp_path):
    with pytest.raises(FewlabelError, match="refit: method 'supervised' cannot"):
        fewlabel.train(str(image_folder), tmp_path / "x", method="supervised", refit=True, **FAST)


def test_a_validation_split_of_less_than_one_image_per_class_is_refused(image_folder, tmp_path):
    with pytest.raises(FewlabelError, match=r"--val-split 0.05 holds out 0.4 of the 8 labelled image\(s\) of class"):
        fewlabel.train(str(image_folder), tmp_path / "x", val_split=0.05, **AUTO)
    with pytest.raises(FewlabelError, match=r"default validation split \(0.2\).*--val-split 0.25 or more.*val/"):
        fewlabel.train(str(image_folder), tmp_path / "y", labels_per_class=2, **AUTO)


class CrashIn(L.Callback):
    """An interruption at the end of the first epoch of the fit ``fit``."""

    def __init__(self, fit: str) -> None:
        self.fit = fit

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.phase == self.fit:
            raise RuntimeError("simulated power cut")


@pytest.mark.parametrize("fit", ["freeze-unfreeze-lr0.0001", "refit-probe-lr0.03"])
def test_auto_and_refit_resume_to_the_same_model(image_folder, tmp_path, fit):
    options = AUTO | {"lr": 1e-4 * 3, "head_lr": 0.01}
    reference = fewlabel.train(str(image_folder), tmp_path / "ref", **options)
    plan = reference.metrics["refit"]["plan"]
    if fit.startswith("refit-") and fit != f"refit-{plan[0]['name']}":
        fit = f"refit-{plan[0]['name']}"
    with pytest.raises(RuntimeError, match="power cut"):
        fewlabel.train(str(image_folder), tmp_path / "run", callbacks=[CrashIn(fit)], **options)
    resumed = fewlabel.train(str(image_folder), tmp_path / "run", resume=True, **options)
    assert resumed.metrics["strategy_search"]["winner"] == reference.metrics["strategy_search"]["winner"]
    assert resumed.metrics["nll"] == pytest.approx(reference.metrics["nll"], rel=1e-5)
    assert resumed.metrics["refit"]["pre_refit"]["nll"] == pytest.approx(
        reference.metrics["refit"]["pre_refit"]["nll"], rel=1e-5
    )


def test_timing_one_step_changes_nothing_in_the_model(split_folder, tmp_path):
    from types import SimpleNamespace

    from fewlabel.tasks import get_task
    from fewlabel.tasks.base import RunContext
    from fewlabel.train.search import time_one_step

    cfg = build_config(str(split_folder), **AUTO | {"augment": "none"})
    task = get_task("classification")
    data = task.prepare_data(cfg, 0)
    model, info = task.build_model(cfg, data)
    for p in model.classifier.parameters():
        p.requires_grad = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    engine = SimpleNamespace(device=torch.device("cpu"))
    seconds = time_one_step(RunContext(cfg, 0, tmp_path, data, task, engine), model, info)
    assert seconds > 0 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())

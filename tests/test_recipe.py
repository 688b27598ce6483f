"""Recipes of stages: validation, the head rule, the chain of weights, resume and the comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import FAST, make_image_folder
from fewlabel import FewlabelError, train
from fewlabel.models.backbones import classifier_keys, create_backbone, keeps_head
from fewlabel.stepwise.recipe import paired_comparison, read_recipe, run_recipe

DEFAULTS = {k: v for k, v in FAST.items()} | {"epochs": 1, "head_epochs": 1}


def write_recipe(path: Path, stages: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"defaults": DEFAULTS, "stages": stages} | top), encoding="utf-8")
    return path


@pytest.fixture
def two_stage_recipe(tmp_path, image_folder, split_folder) -> Path:
    """Intermediate: pseudo-classes of the split folder's training images; target: the split folder."""
    stages = [
        {"name": "clusters", "build": {"method": "clusters", "pool": str(image_folder), "k": 3}},
        {"name": "target", "data": str(split_folder)},
    ]
    return write_recipe(tmp_path / "recipe.yaml", stages)


@pytest.mark.parametrize(
    ("stages", "top", "message"),
    [
        ([], {}, "stages: List should have at least 1 item"),
        ([{"name": "a", "data": "D"}, {"name": "a", "data": "D"}], {}, "duplicate stage name"),
        ([{"name": "a", "data": "D", "epochz": 3}], {}, r"stages.0 \(a\): epochz: unknown key"),
        ([{"name": "a", "data": "D"}], {"stagez": []}, "stagez: unknown key; accepted keys: name, defaults"),
        ([{"name": "a", "build": {"method": "clusters", "kk": 3}}], {}, "build.kk: unknown key; accepted keys: method"),
        ([{"name": "a", "data": "D", "build": {"method": "clusters"}}], {}, "exactly one of data"),
        ([{"name": "a"}], {}, "exactly one of data"),
        ([{"name": "a", "build": {"method": "synthetic"}}], {}, "synthetic needs generator"),
        ([{"name": "direct", "data": "D"}], {}, "stages.0.name"),
        ([{"name": "a", "data": "D", "seeds": [1]}], {}, "set seeds once"),
        ([{"name": "a", "data": "D"}, {"name": "b", "data": "D", "pretrained": "none"}], {}, "previous stage's"),
        ([{"name": "a", "data": "D"}, {"name": "b", "build": {"method": "clusters"}}], {}, "last stage is the target"),
        ([{"name": "a", "data": "no/such/folder"}], {}, r"stages.0 \(a\): DATA 'no/such/folder': no such file"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(tmp_path, image_folder, stages, top, message):
    for stage in stages:  # "D" stands for existing data
        if stage.get("data") == "D":
            stage["data"] = str(image_folder)
    path = write_recipe(tmp_path / "bad.yaml", stages, **top)
    with pytest.raises(FewlabelError, match=message) as info:
        read_recipe(path)
    assert str(path) in str(info.value)


def test_a_stage_on_an_empty_folder_is_refused_before_training(tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    path = write_recipe(tmp_path / "r.yaml", [{"name": "target", "data": str(tmp_path / "empty")}])
    with pytest.raises(FewlabelError, match="holds no image files"):
        read_recipe(path)


def test_unknown_defaults_key_is_named(tmp_path, image_folder):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"lrr": 1}, "stages": [{"name": "a", "data": str(image_folder)}]}))
    with pytest.raises(FewlabelError, match="defaults.lrr: not a training option"):
        read_recipe(path)


@pytest.mark.parametrize(
    ("source", "target", "rule", "kept"),
    [
        (["a", "b"], ["a", "b"], "auto", True),
        (["a", "b"], ["b", "a"], "auto", False),  # same names, other order: outputs mean other classes
        (["a", "b"], ["a", "b", "c"], "auto", False),
        (None, ["a", "b"], "auto", False),
        (["a", "b"], ["a", "b"], "new", False),
        (["a", "b"], ["a", "b"], "keep", True),
    ],
)
def test_head_rule(source, target, rule, kept):
    assert keeps_head(source, target, rule, "w") is kept


def test_keeping_the_head_with_another_class_set_is_refused():
    with pytest.raises(FewlabelError, match="head: keep, but the classes of w"):
        keeps_head(["a", "b"], ["a", "c"], "keep", "w")


def test_a_later_stage_keeps_or_swaps_the_trained_head(tmp_path, image_folder):
    run = train(str(image_folder), tmp_path / "first", **FAST).run_dir
    weights = run / "model.safetensors"
    trained = load_file(str(weights))
    classes = ["blue", "green", "red"]

    def head_of(model):
        state = model.state_dict()
        return {k: state[k] for k in classifier_keys(model)}

    kept, _ = create_backbone("test_efficientnet", str(weights), 3, class_names=classes, head="auto")
    assert all(torch.equal(v, trained[k]) for k, v in head_of(kept).items())
    new, _ = create_backbone("test_efficientnet", str(weights), 3, class_names=classes, head="new")
    assert not any(torch.equal(v, trained[k]) for k, v in head_of(new).items() if v.ndim == 2)
    body = [k for k in trained if k not in classifier_keys(new)]
    assert all(torch.equal(new.state_dict()[k], trained[k]) for k in body)
    with pytest.raises(FewlabelError, match="head: keep"):
        create_backbone("test_efficientnet", str(weights), 3, class_names=["x", "y", "z"], head="keep")


def test_recipe_chains_stages_and_writes_summary_and_report(two_stage_recipe, tmp_path):
    out = tmp_path / "out"
    summary = run_recipe(two_stage_recipe, out, seeds=[0, 1], compare="direct")
    for seed in (0, 1):
        target_cfg = yaml.safe_load((out / f"seed-{seed}" / "target" / "config.yaml").read_text())
        assert target_cfg["pretrained"] == str(out / f"seed-{seed}" / "clusters" / "model.safetensors")
        assert target_cfg["seed"] == seed
        direct_cfg = yaml.safe_load((out / f"seed-{seed}" / "direct" / "config.yaml").read_text())
        assert direct_cfg["pretrained"] == "none" and direct_cfg["epochs"] == 2  # 1 + 1 stage epochs
        clusters = json.loads((out / f"seed-{seed}" / "data-clusters" / "clusters.json").read_text())
        assert clusters["params"]["seed"] == seed and clusters["pool_size"] == 24
    assert [s["name"] for s in summary["stages"]] == ["clusters", "target"]
    assert summary["stages"][0]["eval_data"] == "validation" and summary["stages"][1]["eval_data"] == "test"
    comparison = summary["comparison"]
    per_seed = comparison["per_seed"]
    metrics_0 = json.loads((out / "seed-0" / "target" / "metrics.json").read_text())
    assert per_seed["0"]["stepwise"]["accuracy"] == metrics_0["accuracy"]
    clean = [json.loads((out / f"seed-{s}" / "target" / "robustness.json").read_text())["clean"] for s in (0, 1)]
    assert summary["stages"][1]["robustness"]["clean"] == pytest.approx(sum(clean) / 2)
    assert "<h2>Robustness</h2>" in (out / "report.html").read_text()
    differences = [per_seed[s]["stepwise"]["accuracy"] - per_seed[s]["direct"]["accuracy"] for s in ("0", "1")]
    assert comparison["metrics"]["accuracy"]["difference"]["mean"] == pytest.approx(sum(differences) / 2)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    html = (out / "report.html").read_text()
    assert comparison["statement"] in html
    assert html.count('alt="examples of cluster-') == 3
    assert 'href="seed-0/target/report.html"' in html


def test_rerun_skips_finished_stages_and_an_interrupted_stage_resumes(two_stage_recipe, tmp_path):
    out = tmp_path / "out"
    first = run_recipe(two_stage_recipe, out)
    clusters_weights = out / "seed-0" / "clusters" / "model.safetensors"
    built = out / "seed-0" / "data-clusters" / "clusters.json"
    stamps = clusters_weights.stat().st_mtime_ns, built.stat().st_mtime_ns
    # Interrupt the target stage after its checkpoint: no stage.json, no metrics.
    target = out / "seed-0" / "target"
    history = (target / "history.csv").read_text()
    (target / "stage.json").unlink()
    (target / "metrics.json").unlink()
    again = run_recipe(two_stage_recipe, out)
    assert (clusters_weights.stat().st_mtime_ns, built.stat().st_mtime_ns) == stamps
    assert again["stages"][1]["per_seed"] == first["stages"][1]["per_seed"]
    assert (target / "stage.json").is_file()
    assert (target / "history.csv").read_text() == history  # resumed after its last epoch: none retrained


def test_a_changed_finished_stage_needs_overwrite(two_stage_recipe, tmp_path):
    out = tmp_path / "out"
    run_recipe(two_stage_recipe, out)
    recipe = yaml.safe_load(two_stage_recipe.read_text())
    recipe["stages"][1]["lr"] = 0.5
    two_stage_recipe.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FewlabelError, match=r"stage 'target' \(seed 0\): .*another config \(lr: 0.01 -> 0.5\)"):
        run_recipe(two_stage_recipe, out)
    weights = out / "seed-0" / "clusters" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    run_recipe(two_stage_recipe, out, overwrite=True)
    assert weights.stat().st_mtime_ns != before
    assert yaml.safe_load((out / "seed-0" / "target" / "config.yaml").read_text())["lr"] == 0.5


def test_keep_head_with_a_changed_class_set_fails_at_that_stage(tmp_path, image_folder):
    other = make_image_folder(tmp_path / "other", classes=("cyan", "magenta", "yellow"))
    stages = [{"name": "first", "data": str(image_folder)}, {"name": "second", "data": str(other), "head": "keep"}]
    with pytest.raises(FewlabelError, match=r"stage 'second' \(seed 0\): head: keep, but the classes"):
        run_recipe(write_recipe(tmp_path / "r.yaml", stages), tmp_path / "out")
    assert (tmp_path / "out" / "seed-0" / "first" / "stage.json").is_file()  # the finished stage is kept


def test_k_larger_than_the_pool_names_the_stage(tmp_path, image_folder):
    stages = [
        {"name": "clusters", "build": {"method": "clusters", "pool": str(image_folder), "k": 99}},
        {"name": "target", "data": str(image_folder)},
    ]
    with pytest.raises(FewlabelError, match=r"stage 'clusters' \(seed 0\): --k 99 must be between 2 and the pool"):
        run_recipe(write_recipe(tmp_path / "r.yaml", stages), tmp_path / "out")


def test_out_folder_of_something_else_is_refused(two_stage_recipe, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FewlabelError, match="busy. exists; pass --overwrite"):
        run_recipe(two_stage_recipe, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def _result(acc: float) -> dict:
    return {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc}


def test_paired_comparison_by_hand():
    stepwise = {0: _result(0.80), 1: _result(0.82), 2: _result(0.84)}
    direct = {0: _result(0.78), 1: _result(0.80), 2: _result(0.80)}
    acc = paired_comparison(stepwise, direct)["metrics"]["accuracy"]
    # differences 0.02, 0.02, 0.04: mean 0.02667, sd 0.011547, t(0.975, 2) = 4.3027
    half = 4.302653 * 0.0115470 / math.sqrt(3)
    assert acc["difference"]["mean"] == pytest.approx(0.026667, abs=1e-6)
    assert acc["difference"]["ci95"] == pytest.approx([0.026667 - half, 0.026667 + half], abs=1e-5)
    assert acc["within_noise"] is True  # the interval reaches below zero
    clear = paired_comparison(stepwise, {0: _result(0.70), 1: _result(0.71), 2: _result(0.73)})
    assert clear["metrics"]["accuracy"]["within_noise"] is False
    assert "stepwise is better beyond the seed-to-seed noise" in clear["statement"]
    one = paired_comparison({0: _result(0.8)}, {0: _result(0.7)})
    assert "one seed gives no interval" in one["statement"]


@pytest.mark.parametrize("name", ["stepwise-fashion.yaml", "render-then-real.yaml"])
def test_shipped_example_recipes_validate(name):
    recipe = read_recipe(Path(__file__).parents[1] / "examples" / name)
    assert recipe.stages[-1].data == "fashion-mnist-small" and recipe.stages[0].build is not None


def test_a_trinet_target_stage_starts_from_the_intermediate_weights(tmp_path, image_folder):
    target = make_image_folder(tmp_path / "target", per_class=10, seed=4)
    semi = {"rounds": 1, "round_epochs": 1, "sample_first": 10, "threshold_start": 0.4, "threshold_min": 0.3}
    stages = [
        {"name": "intermediate", "data": str(image_folder)},
        {"name": "target", "data": str(target), "method": {"name": "trinet", **semi}, "labels_per_class": 4},
    ]
    summary = run_recipe(write_recipe(tmp_path / "r.yaml", stages), tmp_path / "out")
    run = tmp_path / "out" / "seed-0" / "target"
    assert json.loads((run / "model.json").read_text())["method"] == "trinet"
    assert json.loads((run / "rounds.json").read_text())["rounds"][0]["round"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["pretrained"].endswith("intermediate/model.safetensors")
    assert summary["stages"][1]["classes"] == 3


def test_flags_apply_to_the_stages_whose_method_takes_them(tmp_path, image_folder):
    from fewlabel.stepwise.recipe import stage_config

    stages = [
        {"name": "a", "data": str(image_folder)},
        {"name": "b", "data": str(image_folder), "method": "pseudo-label", "labels_per_class": 4},
    ]
    path = write_recipe(tmp_path / "r.yaml", stages)
    flags = {"rounds": 1, "epochs": 2, "strategy": "full"}
    recipe = read_recipe(path, flags)
    first, second = (stage_config(recipe, i, tmp_path, 0, overrides=flags) for i in (0, 1))
    assert first.method.name == "finetune" and first.method.strategy == "full" and first.epochs == 2
    assert second.method.name == "pseudo-label" and second.method.rounds == 1 and second.epochs == 2
    with pytest.raises(FewlabelError, match=r"--threshold-start: no stage's method takes it .*finetune, pseudo-label"):
        read_recipe(path, {"threshold_start": 0.5})
    with pytest.raises(FewlabelError, match=r"--pretrained differs per stage"):
        run_recipe(path, tmp_path / "out", options={"pretrained": "none"})

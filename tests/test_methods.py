"""The method registry and a battery every registered method must pass: it trains a tiny model,
saves it, reloads it and predicts what the run predicted; an interrupted run resumes to the
same result; its config round-trips through YAML; options it does not take are refused.
Parametrized over the registry, so a newly registered method cannot go untested."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import lightning as L
import pytest
import torch
import yaml
from pydantic import Field

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel import FewlabelError
from fewlabel.config import make_config
from fewlabel.evaluate.predictions import read_predictions
from fewlabel.methods import Method, get_method, list_methods, option_owners, register_method, unregister_method
from fewlabel.options import MethodOptions

# Small values of method options (each method takes those it has): every round sees a few pool
# images, the thresholds let the tiny models' pseudo-labels through.
TINY = {
    "rounds": 2,
    "round_epochs": 2,
    "sample_first": 12,
    "threshold": 0.4,
    "threshold_start": 0.4,
    "threshold_min": 0.3,
    "strategy": "freeze-unfreeze",
}
OPTIONS = FAST | {"labels_per_class": 5, "lr": 1e-3}


def tiny(method: str, teacher: str = "teacher-run") -> dict:
    """The method's section with TINY's values; a method that learns from a teacher gets
    ``teacher`` and every distillation term, on the unlabeled rest of the data; one that starts
    from a trained run starts from the teacher's weights."""
    registered = get_method(method)
    own = registered.options.model_fields
    section = {"name": method, **{k: v for k, v in TINY.items() if k in own}}
    if registered.trains_from_run:
        return {"method": section, "pretrained": str(Path(teacher) / "model.safetensors")}
    if not registered.takes_teacher:
        return {"method": section}
    return {"method": section | {"teacher": str(teacher), "unlabeled": "rest"}, "loss": "lgg+kd+rkd"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("methods") / "data", per_class=10)


@pytest.fixture(scope="module")
def teacher(folder, tmp_path_factory):
    """A tiny trained run for the methods that learn from one."""
    out = tmp_path_factory.mktemp("methods") / "teacher"
    fewlabel.train(str(folder), out, **FAST, strategy="full", robustness_images=0)
    return out


class EpochCounter(L.Callback):
    def __init__(self, crash_at: int | None = None) -> None:
        self.epochs = 0
        self.crash_at = crash_at

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs += 1
        if self.epochs == self.crash_at:
            raise RuntimeError("simulated power cut")


@pytest.mark.parametrize("method", list_methods())
def test_method_trains_saves_reloads_and_predicts_identically(method, folder, teacher, tmp_path):
    result = fewlabel.train(str(folder), tmp_path / "run", **OPTIONS | tiny(method, teacher))
    assert result.metrics["method"] == method
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["method"] == method and card["task"] == "classification"
    saved = read_predictions(tmp_path / "run" / "predictions.csv")
    reloaded = fewlabel.load(tmp_path / "run").predict_proba(saved.ids)
    assert torch.allclose(reloaded, saved.probs.float(), atol=1e-5)
    assert result.metrics["train_images"] > 0 and result.metrics["train_images_per_second"] > 0


@pytest.mark.parametrize("method", list_methods())
def test_an_interrupted_run_resumes_to_the_same_result(method, folder, teacher, tmp_path):
    options = OPTIONS | tiny(method, teacher)
    counter = EpochCounter()
    reference = fewlabel.train(str(folder), tmp_path / "ref", callbacks=[counter], **options)
    crash = EpochCounter(crash_at=counter.epochs - 1)  # in the middle of the last fit (it has 2 epochs)
    with pytest.raises(RuntimeError, match="power cut"):
        fewlabel.train(str(folder), tmp_path / "cut", callbacks=[crash], **options)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = fewlabel.train(str(folder), tmp_path / "cut", resume=True, **options)
    assert resumed.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]
    assert resumed.metrics["nll"] == pytest.approx(reference.metrics["nll"], rel=1e-5)
    assert resumed.metrics["train_images"] == reference.metrics["train_images"]  # throughput counts every epoch
    history = lambda run: [line.split(",")[:2] for line in (run / "history.csv").read_text().splitlines()]  # noqa: E731
    assert history(tmp_path / "cut") == history(tmp_path / "ref")
    if (tmp_path / "ref" / "rounds.json").exists():
        rounds = lambda run: json.loads((run / "rounds.json").read_text())["rounds"]  # noqa: E731
        strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
        assert strip(rounds(tmp_path / "cut")) == strip(rounds(tmp_path / "ref"))


@pytest.mark.parametrize("method", list_methods())
def test_method_config_round_trips_through_yaml(method):
    cfg = make_config({"data": "x", **tiny(method)})
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_yaml_dict())))
    assert again == cfg and again.method.name == method


@pytest.mark.parametrize("method", list_methods())
def test_an_option_the_method_does_not_take_is_refused_naming_both(method):
    own = set(get_method(method).options.model_fields)
    foreign = next(key for key, owners in option_owners().items() if key not in own)
    with pytest.raises(FewlabelError, match=rf"{foreign}: method '{method}' does not use it; it is an option of"):
        make_config({"data": "x", "method": method, foreign: 1})
    with pytest.raises(FewlabelError, match=rf"method.{foreign}: method '{method}' does not use it; it is an option"):
        make_config({"data": "x", "method": {"name": method, foreign: 1}})
    with pytest.raises(FewlabelError, match=rf"method.nosuchkey: unknown option of method '{method}'; its options"):
        make_config({"data": "x", "method": {"name": method, "nosuchkey": 1}})
    for key, why in get_method(method).ignores.items():
        with pytest.raises(FewlabelError, match=rf"{key}: method '{method}' does not use it \({re.escape(why)}"):
            make_config({"data": "x", "method": method, key: "keep" if key == "head" else 0.5})


def test_unknown_methods_are_refused_listing_the_registered_ones(folder, tmp_path):
    with pytest.raises(FewlabelError, match=r"unknown method 'trinte'; registered: finetune, .*Did you mean 'trinet'"):
        make_config({"data": "x", "method": "trinte"})
    fewlabel.train(str(folder), tmp_path / "run", strategy="linear-probe", **FAST)
    card = tmp_path / "run" / "model.json"
    card.write_text(card.read_text().replace('"finetune"', '"nosuchmethod"'))
    with pytest.raises(
        FewlabelError, match=r"model.json of this model: Unknown method 'nosuchmethod'. Available: .*trinet"
    ):
        fewlabel.load(tmp_path / "run")


class ProbeTwiceOptions(MethodOptions):
    name: Literal["probe-twice"] = "probe-twice"
    passes: int = Field(2, ge=1)


def train_probe_twice(ctx):
    """A throw-away method: the head on cached features, ``passes`` times."""
    from functools import partial

    from fewlabel.train.finetune import phase_fit
    from fewlabel.train.strategies import Phase

    model, info = ctx.task.build_model(ctx.cfg, ctx.data)
    ctx.engine.start(model)
    for i in range(ctx.cfg.method.passes):
        phase = Phase(f"probe-{i}", True, ctx.cfg.epochs, ctx.cfg.head_lr)
        ctx.engine.fit(phase.name, phase.epochs, partial(phase_fit, ctx, phase, model, info), on_features=True)
    return model, info


def test_a_method_registered_from_outside_trains_through_the_same_machinery(folder, tmp_path):
    register_method(Method("probe-twice", ProbeTwiceOptions, train=f"{__name__}:train_probe_twice", summary="test"))
    try:
        result = fewlabel.train(str(folder), tmp_path / "run", method="probe-twice", passes=3, **FAST)
        phases = [line.split(",")[0] for line in (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]]
        assert phases == ["probe-0"] * 2 + ["probe-1"] * 2 + ["probe-2"] * 2
        assert result.metrics["method"] == "probe-twice" and fewlabel.load(tmp_path / "run").class_names
        with pytest.raises(ValueError, match="already registered"):
            register_method(Method("probe-twice", ProbeTwiceOptions, train="x:y", summary="again"))
    finally:
        unregister_method("probe-twice")
    assert "probe-twice" not in list_methods()

"""Semi-supervised methods: their math by hand, tri-net's network, the pool checks, runs on the
engine (history, loggers, callbacks), resume after an interruption, the command line."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import timm
import torch
import yaml

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel import FewlabelError
from fewlabel.config import make_config
from fewlabel.semi.functional import (
    agreeing_pseudo_labels,
    confident_pseudo_labels,
    diversity_due,
    ensemble_log_probs,
    first_full_round,
    fixmatch_loss,
    hard_targets,
    sample_size_at,
    smear_labels,
    smooth_targets,
    soft_cross_entropy,
    stable_pseudo_labels,
    threshold_at,
    threshold_from_validation,
)
from fewlabel.semi.loop import network_groups, trained_heads
from fewlabel.semi.trinet import TriNet, split_backbone
from fewlabel.train.engine import eval_mode_modules

SEMI = {
    "rounds": 2,
    "round_epochs": 1,
    "sample_first": 12,
    "threshold_start": 0.4,
    "threshold_min": 0.3,
}
OPTIONS = FAST | {"epochs": 1, "lr": 1e-3, "labels_per_class": 4}


def method_options(method: str, **extra) -> dict:
    """SEMI's values that ``method`` takes (pseudo-label's and FixMatch's threshold is 0.4)."""
    owned = make_config({"data": "x", "method": method}).method.model_fields
    values = {k: v for k, v in (SEMI | {"threshold": 0.4} | extra).items() if k in owned}
    return {"method": {"name": method, **values}}


def test_smeared_targets_are_distributions_that_keep_the_true_class_on_top():
    labels = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(0))
    true_mass = {}
    for std in (0.05, 0.1, 0.3):
        smeared = smear_labels(labels, 10, std, torch.Generator().manual_seed(1))
        assert (smeared >= 0).all()
        assert torch.allclose(smeared.sum(1), torch.ones(len(labels)))
        if std <= 0.1:  # the default std (0.05) and twice it: noise never outgrows the true class
            assert torch.equal(smeared.argmax(1), labels)
        true_mass[std] = float(smeared.gather(1, labels[:, None]).mean())
    assert true_mass[0.05] > true_mass[0.1] > true_mass[0.3] > 0.4  # more noise, less mass on the truth
    # relu(N(0, std²)) has mean std/sqrt(2 pi): nine other classes take about 9 * 0.05 * 0.4 = 0.18
    assert true_mass[0.05] == pytest.approx(1 / (1 + 9 * 0.05 / math.sqrt(2 * math.pi)), abs=0.02)
    other = smear_labels(labels, 10, 0.1, torch.Generator().manual_seed(2))
    assert not torch.equal(other, smear_labels(labels, 10, 0.1, torch.Generator().manual_seed(1)))
    assert torch.equal(smear_labels(labels[:4], 10, 0.0, torch.Generator()), torch.eye(10)[labels[:4]])


def test_schedules():
    assert [threshold_at(r, 0.95, 0.05, 0.8) for r in range(5)] == pytest.approx([0.95, 0.9, 0.85, 0.8, 0.8])
    assert [sample_size_at(r, 100, 2.0, 500) for r in range(4)] == [100, 200, 400, 500]
    assert [diversity_due(r, 2) for r in range(6)] == [False, False, True, False, True, False]
    assert not any(diversity_due(r, 0) for r in range(6))


def test_paper_diversity_rule_starts_when_the_sample_covers_the_pool():
    assert first_full_round(1000, 2.0, 5000, 12) == 3  # 1000, 2000, 4000, then all 5000
    assert first_full_round(1000, 2.0, 10**9, 4) == 4  # never within the rounds
    assert [diversity_due(r, 1, 3) for r in range(6)] == [False, False, False, True, True, True]
    assert [diversity_due(r, 2, 3) for r in range(6)] == [False, False, False, True, False, True]


def _agreeing_probs(confidences: list[float], correct: list[bool], classes: int = 4) -> tuple:
    """3 x N x C probabilities on which all three modules predict the same class with the given
    confidence; the class is the true one (0) where ``correct``, else class 1."""
    n = len(confidences)
    probs = torch.zeros(3, n, classes)
    for i, (c, ok) in enumerate(zip(confidences, correct, strict=True)):
        probs[:, i, :] = (1 - c) / (classes - 1)
        probs[:, i, 0 if ok else 1] = c
    return probs, torch.zeros(n, dtype=torch.long)


def test_threshold_from_validation_by_hand():
    # 20 images at 0.9 all right, 10 at 0.7 half right, 10 at 0.55 all wrong; all modules agree
    confidences = [0.9] * 20 + [0.7] * 10 + [0.55] * 10
    correct = [True] * 20 + [True, False] * 5 + [False] * 10
    probs, truth = _agreeing_probs(confidences, correct)
    candidates = torch.tensor([0.5, 0.6, 0.65, 0.75, 0.95])
    # at 0.5: (60 + 15) / 120 right; at 0.6 and 0.65: 75 / 90; at 0.75: 60 / 60
    threshold, record = threshold_from_validation(probs, truth, 0.95, candidates, 10)
    assert threshold == pytest.approx(0.75) and record == {"validation_precision": 1.0, "validation_support": 60}
    threshold, _ = threshold_from_validation(probs, truth, 0.8, candidates, 10)
    assert threshold == pytest.approx(0.6)
    assert threshold_from_validation(probs, truth, 0.95, candidates, 100)[0] is None  # 90 < 100 from 0.6 on


def test_protocols_set_defaults_and_keep_what_is_given():
    paper = make_config({"data": "x", "method": {"name": "trinet", "protocol": "paper", "edit_passes": 3}}).method
    assert (paper.rounds, paper.threshold_mode, paper.diversity_start, paper.stage_dropout) == (
        12,
        "validation",
        "full-pool",
        0.1,
    )
    assert paper.edit_passes == 3 and paper.edit_min_agreement == pytest.approx(2 / 3)
    cpu = make_config({"data": "x", "accelerator": "cpu", "method": "trinet"}).method
    assert cpu.protocol == "cpu" and cpu.rounds == 4 and cpu.threshold_mode == "schedule"
    assert make_config({"data": "x", "accelerator": "gpu", "method": "trinet"}).method.protocol == "paper"
    fixmatch = make_config({"data": "x", "method": {"name": "fixmatch", "protocol": "paper"}}).method
    assert fixmatch.rounds == 12  # the baselines share the budget
    with pytest.raises(FewlabelError, match="protocol"):
        make_config({"data": "x", "method": {"name": "trinet", "protocol": "fast"}})


def test_stage_dropout_acts_in_training_only_and_leaves_model_files_alone():
    torch.manual_seed(0)
    plain = TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, 16, 0.0, 1)
    dropped = TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, 16, 0.0, 1, stage_dropout=0.5)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), dropped.eval()
    assert torch.allclose(plain(x), dropped(x), atol=1e-6)
    tail = dropped.heads[0].tail
    tail.dropout.train()
    features = dropped.shared_features(x)
    assert not torch.allclose(tail(features), tail(features))


def test_two_confident_agreeing_modules_label_the_third():
    # 3 modules x 4 images x 2 classes
    probs = torch.tensor(
        [
            [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]],
            [[0.95, 0.05], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]],
            [[0.99, 0.01], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8]],
        ]
    )
    labels, mask = agreeing_pseudo_labels(probs, threshold=0.85)
    # image 0: all agree, all confident -> a pseudo-label for every module
    # image 1: modules 0 and 2 agree on class 0 (0.9, 0.9) -> for module 1 only
    # image 2: only module 2 is confident -> nobody
    # image 3: modules 0 and 1 agree on class 1 at 0.9; module 2 at 0.8 is not confident
    assert mask.tolist() == [[True, False, False, False], [True, True, False, False], [True, False, False, True]]
    assert labels[1, 1] == 0 and labels[2, 3] == 1


def test_confident_pseudo_labels_by_hand():
    probs = torch.tensor([[[0.96, 0.04], [0.3, 0.7], [0.02, 0.98]]])
    labels, mask = confident_pseudo_labels(probs, 0.95)
    assert labels.tolist() == [[0, 1, 1]] and mask.tolist() == [[True, False, True]]


def test_editing_removes_labels_unstable_under_dropout():
    labels = torch.tensor([[1, 1], [1, 1], [1, 1]])  # pseudo-label 1 for each module, two images
    passes = torch.tensor(
        [
            [[1, 1], [1, 0], [1, 1]],
            [[1, 1], [1, 1], [1, 1]],
            [[1, 0], [1, 1], [1, 1]],
            [[1, 1], [1, 1], [1, 1]],
        ]
    )  # 4 passes x 3 modules x 2 images; image 1 flips once in module 0 and once in module 1
    stable = stable_pseudo_labels(passes, labels, min_agreement=0.8)
    # image 0 always agrees; image 1 agrees in 3 of 4 passes (0.75 < 0.8) in modules 0 and 1:
    # unstable for module 2 (labelled by 0 and 1), for module 1 (0 and 2), for module 0 (1 and 2)
    assert stable.tolist() == [[True, False], [True, False], [True, False]]
    assert stable_pseudo_labels(passes, labels, min_agreement=0.75).all()


def test_soft_cross_entropy_by_hand():
    logits = torch.zeros(2, 2, 3)  # uniform predictions: CE = log 3 for any one-hot target
    targets = torch.eye(3)[[0, 1]].unsqueeze(1).expand(-1, 2, -1)
    mask = torch.tensor([[True, False], [True, True]])
    # module 0 trains on both images, module 1 on image 1 only: mean log 3 each, summed
    assert soft_cross_entropy(logits, targets, mask).item() == pytest.approx(2 * math.log(3))
    # one module, confident logits [2, 0, 0]: CE on class 0 is log(1 + 2 e^-2), on class 1 2 + log(1 + e^2 + 1)
    one = torch.tensor([[[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    onehot = torch.eye(3)[[0, 1]].unsqueeze(1)
    both = torch.ones(2, 1, dtype=torch.bool)
    ce0, ce1 = math.log(1 + 2 * math.exp(-2)), math.log(math.exp(2) + 2)
    assert soft_cross_entropy(one, onehot, both).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-5)
    # class weights 1 and 3: a weighted mean, as torch's weighted cross-entropy
    weights = torch.tensor([1.0, 3.0, 1.0])
    assert soft_cross_entropy(one, onehot, both, weights).item() == pytest.approx((ce0 + 3 * ce1) / 4, rel=1e-5)
    expected = torch.nn.functional.cross_entropy(one[0], torch.tensor([0, 1]), weight=weights)
    assert soft_cross_entropy(one, onehot, both, weights).item() == pytest.approx(expected.item(), rel=1e-5)
    # label smoothing of soft targets is torch's label smoothing of hard ones
    smoothed = soft_cross_entropy(one, smooth_targets(onehot, 0.1), both)
    assert smoothed.item() == pytest.approx(
        torch.nn.functional.cross_entropy(one[0], torch.tensor([0, 1]), label_smoothing=0.1).item(), rel=1e-5
    )


def test_fixmatch_loss_by_hand_weak_view_labels_the_strong_view():
    weak = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [1.0, 1, 0], [0, 0, 0.5]], requires_grad=True)
    strong = torch.tensor([[0.0, 2, 0], [1.0, 1, 1], [3.0, 0, 0], [0.0, 0, 0]], requires_grad=True)
    loss, mask = fixmatch_loss(weak, strong, threshold=0.9)
    # weak views 0 and 1 are confident (softmax 0.987) in classes 0 and 1; 2 and 3 are not.
    # strong view 0 against class 0: log(2 + e^2); strong view 1 against class 1: log 3; the rest count 0
    assert mask.tolist() == [True, True, False, False]
    assert loss.item() == pytest.approx((math.log(2 + math.exp(2)) + math.log(3)) / 4, rel=1e-6)
    swapped, _ = fixmatch_loss(strong, weak, threshold=0.9)
    assert swapped.item() != pytest.approx(loss.item(), rel=1e-3)  # the views are not interchangeable
    loss.backward()
    assert weak.grad is None or not weak.grad.any()  # no gradient through the weak view's labels
    assert strong.grad[:2].abs().sum() > 0 and not strong.grad[2:].any()  # only confident images train


def test_ensemble_is_the_log_of_the_mean_probability():
    logits = torch.randn(3, 5, 4)
    assert torch.allclose(ensemble_log_probs(logits).exp(), logits.softmax(-1).mean(0), atol=1e-6)
    assert hard_targets(torch.tensor([2, 0]), 3, 2).shape == (2, 2, 3)


def test_trinet_prediction_is_the_mean_of_its_modules():
    net = TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, hidden=8).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = net.module_logits(x).softmax(-1).mean(0)
    assert torch.allclose(net(x).softmax(-1), expected, atol=1e-6)


@pytest.mark.parametrize(("name", "stages"), [("test_efficientnet", 1), ("test_efficientnet", 2), ("test_resnet", 1)])
def test_trunk_then_module_stages_reproduce_the_backbone(name, stages):
    import copy

    backbone = timm.create_model(name, num_classes=0).eval()
    original = copy.deepcopy(backbone)
    trunk, tail = split_backbone(backbone, stages, name)
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        expected = original.forward_head(original.forward_features(x), pre_logits=True)
        feature_map = trunk.forward_features(x)
        got = tail.forward_head(tail.forward_features(feature_map), pre_logits=True)
    assert feature_map.dim() == 4 and feature_map.shape[1] != expected.shape[1]  # a map from below the cut
    assert torch.allclose(got, expected, atol=1e-5)
    trunk_count = sum(p.numel() for p in trunk.parameters())
    tail_count = sum(p.numel() for p in tail.parameters())
    assert trunk_count + tail_count == sum(p.numel() for p in original.parameters())  # cut, nothing lost


def test_module_stages_the_backbone_cannot_give_are_refused():
    with pytest.raises(FewlabelError, match=r"module_stages 99: test_efficientnet has \d+ stages.*0 to"):
        TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, 8, 0.3, 99, "test_efficientnet")
    with pytest.raises(FewlabelError, match="test_vit cannot be cut.*module_stages 0"):
        TriNet(timm.create_model("test_vit", num_classes=0), 3, 8, 0.3, 1, "test_vit")
    vit = TriNet(timm.create_model("test_vit", num_classes=0), 3, 8, module_stages=0).eval()
    assert vit(torch.randn(1, 3, 160, 160)).shape == (1, 3)


def test_each_trinet_module_owns_its_stages_and_their_batchnorm_stays_frozen():
    net = TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, hidden=8, module_stages=1)
    tails = [m.tail for m in net.heads]
    with torch.no_grad():
        next(tails[0].parameters()).add_(1.0)
    assert not torch.equal(next(tails[0].parameters()), next(tails[1].parameters()))
    ids = [set(map(id, t.parameters())) for t in tails]
    assert not (ids[0] & ids[1]) and not (ids[0] & set(map(id, net.shared.parameters())))
    frozen = {id(m) for m in eval_mode_modules(net, True, trained_heads(net))}
    norms = lambda part: [m for m in part.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]  # noqa: E731
    assert all(id(m) in frozen for part in net.pretrained_parts() for m in norms(part))
    assert not any(id(m) in frozen for module in net.heads for m in norms(module.mlp))
    cfg = make_config({"data": "x", "lr": 1e-3, "layer_decay": 0.5, "method": "trinet"})
    lrs = {id(p): g["lr"] for g in network_groups(net, cfg) for p in g["params"]}
    assert {lrs[id(p)] for m in net.heads for p in m.mlp.parameters()} == {1e-3}
    assert {lrs[id(p)] for m in net.heads for p in m.tail.parameters()} == {5e-4}
    assert max(lrs[id(p)] for p in net.shared.parameters()) == pytest.approx(2.5e-4)
    assert len(lrs) == sum(1 for _ in net.parameters())  # every parameter trains


@pytest.fixture
def semi_folder(tmp_path):
    return make_image_folder(tmp_path / "semi", per_class=10)


@pytest.mark.parametrize("method", ["trinet", "pseudo-label", "fixmatch", "supervised"])
def test_each_method_records_its_rounds_and_trains_on_the_engine(semi_folder, tmp_path, method):
    options = OPTIONS | method_options(method, audit=True, diversity_every=1)  # tri-net: round 2 starts with it
    result = fewlabel.train(str(semi_folder), tmp_path / method, **options)
    run = result.run_dir
    rounds = json.loads((run / "rounds.json").read_text())
    assert result.metrics["method"] == method
    assert rounds["pool_size"] == (0 if method == "supervised" else 18)  # 30 images, 12 labelled
    history = (run / "history.csv").read_text().splitlines()
    rows = [dict(zip(history[0].split(","), line.split(","), strict=True)) for line in history[1:]]
    assert all(r["val_loss"] and r["lr"] for r in rows)  # every fit validates (20% held out) and logs its lr
    phases = [r["phase"] for r in rows]
    expected = {
        "trinet": ["head", "head", "initial", "round-1", "diversity-2", "round-2"],
        "pseudo-label": ["head", "head", "initial", "round-1", "round-2"],
        "fixmatch": ["head", "head", "initial", "fixmatch", "fixmatch"],
        "supervised": ["head", "head", "initial", "supervised", "supervised"],
    }[method]
    assert phases == expected
    if method in ("trinet", "pseudo-label"):
        assert [r["round"] for r in rounds["rounds"]] == [1, 2]
        modules = rounds["rounds"][0]["modules"]
        assert len(modules) == (3 if method == "trinet" else 1)
        if method == "trinet":
            assert [r["diversity_fine_tune"] for r in rounds["rounds"]] == [False, True]
        for m in modules:
            assert m["kept"] == m["candidates"] - m["removed_by_editing"]
            if m["kept"]:
                assert m["accuracy_kept"] is not None
        assert "Pseudo-labels per round" in (run / "report.html").read_text()
    evaluations = rounds["evaluations"]
    expected_after = ["initial fit", "round 1", "round 2"] if method in ("trinet", "pseudo-label") else None
    assert [e["after"] for e in evaluations] == (expected_after or ["initial fit", "2 more epochs"])
    assert evaluations[0]["set"] == "validation" and evaluations[0]["images"] == 3
    assert ("module_accuracy" in evaluations[0]) == (method == "trinet")
    assert "Accuracy after each round" in (run / "report.html").read_text()
    if method == "fixmatch":
        share = rounds["rounds"][0]["fixmatch_confident_share"]
        assert f"FixMatch: {100 * share:.1f}% of unlabeled images" in (run / "report.html").read_text()


def test_semi_fits_take_callbacks_the_tensorboard_logger_and_onecycle(semi_folder, tmp_path):
    fits = []

    class Count(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            fits.append(pl_module.phase)

    options = OPTIONS | method_options("pseudo-label") | {"logger": "tensorboard", "schedule": "onecycle"}
    fewlabel.train(str(semi_folder), tmp_path / "run", callbacks=[Count()], **options)
    assert fits == ["head", "initial", "round-1", "round-2"]
    assert list((tmp_path / "run" / "logs" / "round-2").rglob("events.out.tfevents.*"))


def test_semi_fits_take_label_smoothing_class_weights_and_early_stopping(semi_folder, tmp_path):
    seen = []

    class Inspect(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen.append((pl_module.phase, pl_module.label_smoothing, pl_module.class_weights is not None))

    options = OPTIONS | method_options("pseudo-label", round_epochs=30) | {"label_smoothing": 0.1}
    options |= {"imbalance": "class-weights", "early_stopping": 1, "lr": 0.05}
    fewlabel.train(str(semi_folder), tmp_path / "run", callbacks=[Inspect()], **options)
    assert seen and all(smoothing == 0.1 and weighted for _, smoothing, weighted in seen)
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    assert 0 < sum(row.startswith("round-1,") for row in rows) < 30  # validation loss stopped the round early


def test_a_flat_folder_pool_and_the_overlap_check(split_folder, tmp_path):
    flat = tmp_path / "pool"
    flat.mkdir()
    for i, path in enumerate(sorted((split_folder / "test").rglob("*.png"))):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    options = OPTIONS | method_options("pseudo-label", unlabeled=str(flat)) | {"labels_per_class": None}
    with pytest.raises(FewlabelError, match=r"pool holds 12 image\(s\) identical to evaluation images"):
        fewlabel.train(str(split_folder), tmp_path / "leak", **options)
    assert not (tmp_path / "leak" / "model.safetensors").exists()
    options["method"]["allow_overlap"] = True
    result = fewlabel.train(str(split_folder), tmp_path / "ok", **options)
    assert json.loads((result.run_dir / "rounds.json").read_text())["pool_size"] == 12


def test_bad_semi_inputs(semi_folder, tmp_path, image_folder):
    with pytest.raises(FewlabelError, match="unlabeled pool is empty"):
        fewlabel.train(str(image_folder), tmp_path / "a", **(OPTIONS | {"method": "trinet", "labels_per_class": None}))
    lonely = make_image_folder(tmp_path / "lonely", per_class=1)
    with pytest.raises(FewlabelError, match="fewer than 2 labelled images"):
        fewlabel.train(
            str(lonely),
            tmp_path / "b",
            **(OPTIONS | method_options("trinet", unlabeled=str(semi_folder)) | {"labels_per_class": None}),
            eval_data=str(semi_folder),
        )
    with pytest.raises(FewlabelError, match="--img-size 8 is too small for 'test_efficientnet'"):
        fewlabel.train(str(semi_folder), tmp_path / "d", **(OPTIONS | {"method": "trinet", "img_size": 8}))
    with pytest.raises(FewlabelError, match="method.rounds: Input should be greater than or equal to 0"):
        fewlabel.train(str(semi_folder), tmp_path / "c", **(OPTIONS | {"method": "trinet", "rounds": -1}))
    flat_pool = str(make_image_folder(tmp_path / "other", seed=5) / "red")
    with pytest.raises(FewlabelError, match="--audit needs a pool with the labelled data's classes"):
        fewlabel.train(
            str(semi_folder), tmp_path / "e", **(OPTIONS | method_options("trinet", audit=True, unlabeled=flat_pool))
        )


def test_semi_command_line(monkeypatch, capsys, semi_folder, tmp_path):
    from test_cli import run_main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(OPTIONS | method_options("trinet", edit_passes=0)))
    code, captured = run_main(
        monkeypatch, capsys, "semi", str(semi_folder), "--config", str(tmp_path / "c.yaml"),
        "--rounds", "1", "--module-stages", "2", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, captured.err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"]["name"] == "trinet" and saved["method"]["rounds"] == 1
    assert saved["method"]["edit_passes"] == 0 and saved["method"]["module_stages"] == 2  # file kept, flags on top
    assert "dropout" not in saved  # an option tri-net does not use is not recorded
    assert json.loads((tmp_path / "run" / "model.json").read_text())["extras"]["module_stages"] == 2
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())["rounds"]
    assert len(rounds) == 1 and all(m["removed_by_editing"] == 0 for m in rounds[0]["modules"])


def test_semi_command_line_refuses_module_stages_the_backbone_lacks(monkeypatch, capsys, semi_folder, tmp_path):
    from test_cli import run_main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(OPTIONS))
    code, captured = run_main(
        monkeypatch, capsys, "semi", str(semi_folder), "--config", str(tmp_path / "c.yaml"),
        "--module-stages", "99", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code != 0
    message = [line for line in captured.err.splitlines() if "module_stages" in line]
    assert len(message) == 1 and "test_efficientnet has" in message[0] and "accepted: 0 to" in message[0]


def test_trinet_paper_protocol_chooses_thresholds_on_validation_and_edits_with_stage_dropout(
    semi_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr("fewlabel.semi.loop.MIN_VALIDATION_SUPPORT", 1)  # the tiny validation split: 3 images
    options = OPTIONS | {
        "method": {
            "name": "trinet",
            "protocol": "paper",
            "rounds": 3,
            "round_epochs": 1,
            "sample_first": 6,
            "edit_passes": 3,
            "target_precision": 0.1,
            "audit": True,
        }
    }
    result = fewlabel.train(str(semi_folder), tmp_path / "paper", **options)
    rounds = json.loads((result.run_dir / "rounds.json").read_text())["rounds"]
    assert [r["examined"] for r in rounds] == [6, 12, 18]  # 6 x 2^t up to the whole pool of 18
    assert [r["diversity_fine_tune"] for r in rounds] == [False, False, True]  # from the round that covers it
    for r in rounds:
        assert r["threshold_from"].startswith(("validation", "schedule (no candidate"))
        if r["threshold_from"].startswith("validation"):
            assert r["validation_precision"] >= 0.1 and r["validation_support"] >= 1
    assert any(r["threshold_from"] == "validation (3 images)" for r in rounds)
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["method"]["protocol"] == "paper" and config["method"]["stage_dropout"] == 0.1

"""Semi-supervised methods: tri-net's steps by hand, the pool checks, runs, resume by round."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel import FewlabelError
from fewlabel.config import TrainConfig
from fewlabel.semi.methods import SemiRun, module_loss, network_groups
from fewlabel.semi.trinet import (
    TriNet,
    agreeing_pseudo_labels,
    diversity_due,
    sample_size_at,
    smear_labels,
    split_backbone,
    stable_pseudo_labels,
    threshold_at,
)

SEMI = {
    "rounds": 2,
    "round_epochs": 1,
    "sample_first": 12,
    "threshold_start": 0.4,
    "threshold_min": 0.3,
    "pl_threshold": 0.4,
}
OPTIONS = FAST | {"epochs": 1, "lr": 1e-3, "labels_per_class": 4, "semi": SEMI}


def test_smearing_keeps_the_true_class_on_top_and_rows_normalised():
    labels = torch.tensor([0, 2, 1, 2])
    smeared = smear_labels(labels, 3, 0.1, torch.Generator().manual_seed(0))
    assert torch.allclose(smeared.sum(1), torch.ones(4))
    assert torch.equal(smeared.argmax(1), labels) and (smeared > 0).all() is not None
    assert (smeared.gather(1, labels[:, None]) > 0.6).all()
    other = smear_labels(labels, 3, 0.1, torch.Generator().manual_seed(1))
    assert not torch.equal(smeared, other)  # another seed, another smeared copy: diversity
    assert torch.equal(smear_labels(labels, 3, 0.0, torch.Generator()), torch.eye(3)[labels])


def test_schedules():
    assert [threshold_at(r, 0.95, 0.05, 0.8) for r in range(5)] == pytest.approx([0.95, 0.9, 0.85, 0.8, 0.8])
    assert [sample_size_at(r, 100, 2.0, 500) for r in range(4)] == [100, 200, 400, 500]
    assert [diversity_due(r, 2) for r in range(6)] == [False, False, True, False, True, False]
    assert not any(diversity_due(r, 0) for r in range(6))


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


def test_module_loss_by_hand():
    logits = torch.zeros(2, 2, 3)  # uniform predictions: CE = log 3 for any one-hot target
    targets = torch.eye(3)[[0, 1]].unsqueeze(1).expand(-1, 2, -1)
    mask = torch.tensor([[True, False], [True, True]])
    # module 0 trains on both images, module 1 on image 1 only: mean log 3 each, summed
    assert module_loss(logits, targets, mask).item() == pytest.approx(2 * torch.log(torch.tensor(3.0)).item())


def test_trinet_prediction_is_the_mean_of_its_modules():
    import timm

    net = TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, hidden=8).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = net.module_logits(x).softmax(-1).mean(0)
    assert torch.allclose(net(x).softmax(-1), expected, atol=1e-6)


@pytest.mark.parametrize(("name", "stages"), [("test_efficientnet", 1), ("test_efficientnet", 2), ("test_resnet", 1)])
def test_trunk_then_module_stages_reproduce_the_backbone(name, stages):
    import copy

    import timm

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
    import timm

    with pytest.raises(FewlabelError, match=r"semi.module_stages 99: test_efficientnet has \d+ stages.*0 to"):
        TriNet(
            timm.create_model("test_efficientnet", num_classes=0),
            3,
            8,
            module_stages=99,
            model_name="test_efficientnet",
        )
    with pytest.raises(FewlabelError, match="test_vit cannot be cut.*module_stages 0"):
        TriNet(timm.create_model("test_vit", num_classes=0), 3, 8, module_stages=1, model_name="test_vit")
    vit = TriNet(timm.create_model("test_vit", num_classes=0), 3, 8, module_stages=0).eval()
    assert vit(torch.randn(1, 3, 160, 160)).shape == (1, 3)


def test_each_trinet_module_owns_its_stages_and_their_batchnorm_stays_frozen():
    import timm

    net = TriNet(timm.create_model("test_efficientnet", num_classes=0), 3, hidden=8, module_stages=1)
    tails = [m.tail for m in net.heads]
    with torch.no_grad():
        next(tails[0].parameters()).add_(1.0)
    assert not torch.equal(next(tails[0].parameters()), next(tails[1].parameters()))
    ids = [set(map(id, t.parameters())) for t in tails]
    assert not (ids[0] & ids[1]) and not (ids[0] & set(map(id, net.shared.parameters())))
    cfg = TrainConfig(data="x", pretrained="imagenet", lr=1e-3, layer_decay=0.5, method="trinet")
    SemiRun(cfg, 0, torch.device("cpu"), (0.5,), (0.5,))._train_mode(net)
    norms = lambda part: [m for m in part.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]  # noqa: E731
    assert all(not m.training for part in net.pretrained_parts() for m in norms(part))
    assert all(m.training for module in net.heads for m in norms(module.mlp))
    lrs = {id(p): g["lr"] for g in network_groups(net, cfg) for p in g["params"]}
    assert {lrs[id(p)] for m in net.heads for p in m.mlp.parameters()} == {1e-3}
    assert {lrs[id(p)] for m in net.heads for p in m.tail.parameters()} == {5e-4}
    assert max(lrs[id(p)] for p in net.shared.parameters()) == pytest.approx(2.5e-4)
    assert len(lrs) == sum(1 for _ in net.parameters())  # every parameter trains


@pytest.fixture
def semi_folder(tmp_path):
    return make_image_folder(tmp_path / "semi", per_class=10)


@pytest.mark.parametrize("method", ["trinet", "pseudo-label", "fixmatch", "supervised"])
def test_each_method_trains_saves_and_reloads(semi_folder, tmp_path, method):
    options = OPTIONS | {"semi": SEMI | {"diversity_every": 1}}  # tri-net: round 2 starts with it
    result = fewlabel.train(str(semi_folder), tmp_path / method, method=method, audit_pseudo_labels=True, **options)
    run = result.run_dir
    assert result.metrics["method"] == method and 0.0 <= result.metrics["accuracy"] <= 1.0
    rounds = json.loads((run / "rounds.json").read_text())
    assert rounds["pool_size"] == 18  # 30 images, 12 labelled (4 per class): the other 18 are the pool
    predictor = fewlabel.load(run)
    probs = predictor.predict_proba([str(next(semi_folder.rglob("*.png")))])
    assert probs.shape == (1, 3) and torch.allclose(probs.sum(1), torch.ones(1))
    if method in ("trinet", "pseudo-label"):
        assert [r["round"] for r in rounds["rounds"]] == [1, 2]
        modules = rounds["rounds"][0]["modules"]
        assert len(modules) == (3 if method == "trinet" else 1)
        if method == "trinet":
            assert [r["diversity_fine_tune"] for r in rounds["rounds"]] == [False, True]
            phases = (run / "history.csv").read_text()
            assert "diversity-2" in phases and "diversity-1" not in phases
        for m in modules:
            assert m["kept"] == m["candidates"] - m["removed_by_editing"]
            assert m["accuracy_kept"] is None or 0.0 <= m["accuracy_kept"] <= 1.0
        assert "Pseudo-labels per round" in (run / "report.html").read_text()
    evaluations = rounds["evaluations"]
    expected_after = ["initial fit", "round 1", "round 2"] if method in ("trinet", "pseudo-label") else None
    assert [e["after"] for e in evaluations] == (expected_after or ["initial fit", "2 more epochs"])
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in evaluations)
    assert ("module_accuracy" in evaluations[0]) == (method == "trinet")
    assert "Accuracy after each round" in (run / "report.html").read_text()


def test_a_flat_folder_pool_and_the_overlap_check(semi_folder, split_folder, tmp_path):
    flat = tmp_path / "pool"
    flat.mkdir()
    for i, path in enumerate(sorted((split_folder / "test").rglob("*.png"))):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    options = OPTIONS | {"method": "pseudo-label", "unlabeled": str(flat), "labels_per_class": None}
    with pytest.raises(FewlabelError, match=r"pool holds 12 image\(s\) identical to evaluation images"):
        fewlabel.train(str(split_folder), tmp_path / "leak", **options)
    assert not (tmp_path / "leak" / "model.safetensors").exists()
    result = fewlabel.train(str(split_folder), tmp_path / "ok", **options, allow_overlap=True)
    assert json.loads((result.run_dir / "rounds.json").read_text())["pool_size"] == 12


def test_bad_semi_inputs(semi_folder, tmp_path, image_folder):
    with pytest.raises(FewlabelError, match="unlabeled pool is empty"):
        fewlabel.train(str(image_folder), tmp_path / "a", **(OPTIONS | {"method": "trinet", "labels_per_class": None}))
    lonely = make_image_folder(tmp_path / "lonely", per_class=1)
    with pytest.raises(FewlabelError, match="fewer than 2 labelled images"):
        fewlabel.train(
            str(lonely),
            tmp_path / "b",
            **(OPTIONS | {"method": "trinet", "labels_per_class": None, "unlabeled": str(semi_folder)}),
            eval_data=str(semi_folder),
        )
    with pytest.raises(FewlabelError, match="--img-size 8 is too small for 'test_efficientnet'"):
        fewlabel.train(str(semi_folder), tmp_path / "d", **(OPTIONS | {"method": "trinet", "img_size": 8}))
    with pytest.raises(FewlabelError, match="semi.rounds: Input should be greater than or equal to 0"):
        fewlabel.train(str(semi_folder), tmp_path / "c", **(OPTIONS | {"semi": {"rounds": -1}}))


def test_an_interrupted_trinet_resumes_after_its_last_round(semi_folder, tmp_path, monkeypatch):
    import fewlabel.semi.methods as methods

    whole = fewlabel.train(str(semi_folder), tmp_path / "whole", method="trinet", **OPTIONS)
    real_round = methods.train_on_targets
    calls = {"n": 0}

    def fail_in_round_two(run, net, images, targets, mask, labels, epochs, phase):
        if phase == "round-2":
            raise KeyboardInterrupt
        calls["n"] += 1
        real_round(run, net, images, targets, mask, labels, epochs, phase)

    monkeypatch.setattr(methods, "train_on_targets", fail_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        fewlabel.train(str(semi_folder), tmp_path / "cut", method="trinet", **OPTIONS)
    monkeypatch.setattr(methods, "train_on_targets", real_round)
    resumed = fewlabel.train(str(semi_folder), tmp_path / "cut", method="trinet", resume=True, **OPTIONS)
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"]
    assert resumed.metrics["nll"] == pytest.approx(whole.metrics["nll"], rel=1e-5)
    rounds = json.loads((tmp_path / "cut" / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]


def test_semi_command_line(monkeypatch, capsys, semi_folder, tmp_path):
    from test_cli import run_main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(OPTIONS | {"semi": SEMI | {"edit_passes": 0}}))
    code, captured = run_main(
        monkeypatch, capsys, "semi", str(semi_folder), "--method", "trinet", "--config", str(tmp_path / "c.yaml"),
        "--rounds", "1", "--module-stages", "2", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, captured.err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"] == "trinet" and saved["semi"]["rounds"] == 1 and saved["semi"]["edit_passes"] == 0
    assert saved["semi"]["module_stages"] == 2
    assert json.loads((tmp_path / "run" / "model.json").read_text())["module_stages"] == 2
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

"""Latent geometry graphs (hand-computed cases), layer pairing, the distill method end to end,
the geometry terms on any method, robustness under noise and FGSM, and their bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from conftest import FAST, make_image_folder
from fewlabel import FewlabelError, train
from fewlabel.audit.robustness import robustness_scores
from fewlabel.cli import app
from fewlabel.graphs import (
    geometry_target_loss,
    graph_distillation_loss,
    kd_loss,
    knn_mask,
    label_smoothness,
    latent_graph,
    rkd_distance_loss,
    smoothness_regularizer,
)
from fewlabel.models.layers import LayerTap, block_names, check_layer_names, layers_named, pair_by_depth, parse_pairs
from fewlabel.stepwise.recipe import read_recipe, run_recipe, stage_config
from fewlabel.train.module import ClassifierModule, GeometryTerms

A = 1 / math.sqrt(2)
CHAIN = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cos(0,1) = cos(1,2) = 1/sqrt(2), cos(0,2) = 0
DISTILL = FAST | {"method": "distill", "epochs": 1, "labels_per_class": 4}


# --- latent geometry graphs, computed by hand ---------------------------------------------------


def test_latent_graph_of_a_chain_by_hand():
    graph, mask = latent_graph(CHAIN)
    # W = [[0, a, 0], [a, 0, a], [0, a, 0]], degrees (a, 2a, a): W_ij / sqrt(d_i d_j) = 1/sqrt(2)
    expected = torch.tensor([[0, A, 0], [A, 0, A], [0, A, 0]])
    assert mask is None
    assert torch.allclose(graph, expected, atol=1e-6)


def test_a_node_without_edges_keeps_a_zero_row_and_negative_similarities_are_cut():
    graph, _ = latent_graph(torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]]))
    assert torch.allclose(graph, torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 0]]))
    assert torch.isfinite(graph).all()


def test_knn_mask_keeps_each_nodes_strongest_edges_either_end_chose():
    similarity = torch.tensor([[0, 0.9, 0.1, 0.2], [0.9, 0, 0.3, 0.1], [0.1, 0.3, 0, 0.8], [0.2, 0.1, 0.8, 0]])
    mask = knn_mask(similarity, 1)
    expected = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    asymmetric = torch.tensor([[0, 0.9, 0.1], [0.9, 0, 0.3], [0.1, 0.95, 0]])  # node 2 picks 1, 1 picks 0
    assert knn_mask(asymmetric, 1)[1, 2] and knn_mask(asymmetric, 1)[2, 1]


def test_graph_distillation_is_zero_for_the_same_geometry_and_uses_the_teachers_mask():
    teacher = torch.randn(6, 4, 3, 3).relu()
    assert graph_distillation_loss([teacher * 5], [teacher]) < 1e-10  # cosine: the scale does not matter
    student = torch.randn(6, 8).relu()
    assert graph_distillation_loss([student], [teacher]) > 0
    _, mask = latent_graph(teacher, k=2)
    student_graph, _ = latent_graph(student, mask=mask)
    target, _ = latent_graph(teacher, k=2)
    by_hand = (student_graph - target).pow(2).sum()
    assert torch.isclose(graph_distillation_loss([student], [teacher], k=2), by_hand)


def test_kd_is_the_tempered_kl_times_t_squared():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    t = 2.0
    p = torch.softmax(teacher / t, 1)
    by_hand = (p * (p.log() - torch.log_softmax(student / t, 1))).sum() * t**2
    assert torch.isclose(kd_loss(student, teacher, t), by_hand)
    assert kd_loss(teacher, teacher, t).abs() < 1e-6


def test_rkd_ignores_scale_and_sees_a_changed_geometry():
    teacher = torch.randn(5, 7)
    assert rkd_distance_loss(3 * teacher, teacher) < 1e-10
    assert rkd_distance_loss(torch.randn(5, 7), teacher) > 0


def test_kd_and_rkd_match_torchdistill():
    """torchdistill 1.1.5 (Matsubara), the reference implementations of the two baselines: its
    KDLoss is alpha CE + (1 - alpha) T^2 KL, ours the T^2 KL part; its RKD distance term averages
    the smooth-L1 over all B^2 entries of the distance matrices, the zero diagonal included, ours
    over the B(B-1) distinct pairs (Park et al.'s definition), so ours = theirs x B / (B - 1)."""
    from torchdistill.losses.mid_level import KDLoss, RKDLoss

    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    reference = KDLoss("s", "output", "t", "output", temperature=3.0, alpha=0.5)
    theirs = reference({"s": {"output": student}}, {"t": {"output": teacher}}, targets=labels)
    ours = 0.5 * torch.nn.functional.cross_entropy(student, labels) + 0.5 * kd_loss(student, teacher, 3.0)
    assert torch.isclose(ours, theirs)
    student_embedding, teacher_embedding = torch.randn(8, 16), torch.randn(8, 16)
    rkd = RKDLoss("s", "t", dist_factor=1.0, angle_factor=0.0, reduction="mean")
    theirs = rkd({"s": {"output": student_embedding}}, {"t": {"output": teacher_embedding}})
    assert torch.isclose(rkd_distance_loss(student_embedding, teacher_embedding), theirs * 8 / 7, rtol=1e-5)


def test_label_smoothness_by_hand():
    labels = torch.nn.functional.one_hot(torch.tensor([0, 0, 1]), 2)
    # only the edge 1-2 (weight a) joins two classes, and |y_1 - y_2|^2 = 2
    assert torch.isclose(label_smoothness(CHAIN, labels), torch.tensor(2 * A))
    # L^2: tr(Y^T L^2 Y) = |L Y|_F^2, by hand from L = D - W
    w = torch.tensor([[0, A, 0], [A, 0, A], [0, A, 0]])
    laplacian = torch.diag(w.sum(1)) - w
    assert torch.isclose(label_smoothness(CHAIN, labels, power=2), (laplacian @ labels.float()).pow(2).sum())


def test_smoothness_regularizer_is_the_mean_change_between_layers():
    labels = torch.nn.functional.one_hot(torch.tensor([0, 0, 1]), 2)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # no edge across classes: sigma 0
    layers = [CHAIN, same, CHAIN]
    assert torch.isclose(smoothness_regularizer(layers, labels), torch.tensor(2 * A))
    with pytest.raises(ValueError, match="two layers"):
        smoothness_regularizer([CHAIN], labels)


def test_the_geometry_target_is_met_by_class_indicator_outputs():
    labels = torch.tensor([0, 1, 0, 2, 1])
    targets = torch.nn.functional.one_hot(labels, 3)
    assert geometry_target_loss(targets.float() * 4, targets) < 1e-10
    assert geometry_target_loss(torch.rand(5, 3), targets) > 0


def test_a_batch_of_one_has_no_graph():
    with pytest.raises(ValueError, match="at least 2 images"):
        latent_graph(torch.ones(1, 4))


# --- layers -----------------------------------------------------------------------------------


def test_layers_pair_by_relative_depth():
    teacher = ["t1", "t2", "t3", "t4", "t5"]  # depths .2 .4 .6 .8 1
    assert pair_by_depth(teacher, ["s1", "s2", "s3"], 3) == [("t2", "s1"), ("t3", "s2"), ("t5", "s3")]
    assert pair_by_depth(teacher, ["s1", "s2", "s3"], 1) == [("t5", "s3")]
    assert parse_pairs("a.b:c, d:e") == [("a.b", "c"), ("d", "e")]
    with pytest.raises(FewlabelError, match="TEACHER_LAYER:STUDENT_LAYER"):
        parse_pairs("blocks.2")


def test_unknown_layer_names_list_the_stages():
    import timm

    net = timm.create_model("test_efficientnet", num_classes=3)
    with pytest.raises(FewlabelError, match=r"no layer 'blocks\.9'; its stages: blocks\.0, blocks\.1"):
        check_layer_names(net, ["blocks.9"], "the student")
    tap = LayerTap(net, ["blocks.1", "blocks.4"], side=2)
    with tap.recording():
        net(torch.randn(2, 3, 32, 32))
    shallow, deep = tap.taken()
    assert shallow.shape[-2:] == (2, 2) and deep.shape[0] == 2  # 8 x 8 pooled to 2 x 2


# --- the distill method -----------------------------------------------------------------------


@pytest.fixture
def teacher_run(split_folder, tmp_path):
    train(str(split_folder), tmp_path / "teacher", **FAST, strategy="full", robustness_images=0)
    return tmp_path / "teacher"


def test_distillation_with_every_term_on_a_pool_writes_its_record(split_folder, teacher_run, tmp_path):
    out = tmp_path / "student"
    options = DISTILL | {"loss": "lgg+kd+rkd", "unlabeled": "rest", "graph_k": 3, "model": "test_efficientnet"}
    result = train(str(split_folder), out, teacher=str(teacher_run), **options)
    record = json.loads((out / "distill.json").read_text())
    assert record["terms"] == ["ce", "lgg", "kd", "rkd"]
    assert [p["student"] for p in record["layer_pairs"]] == ["blocks.2", "blocks.3", "blocks.4", "pooled embedding"]
    assert record["teacher_parameters"] == record["student_parameters"]
    history = (out / "logs" / "distill" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert all(term in history for term in ("kd", "rkd", "lgg"))
    assert "Distillation" in (out / "report.html").read_text()
    assert result.metrics["method"] == "distill"
    robustness = json.loads((out / "robustness.json").read_text())
    assert set(robustness["gaussian"]) == {"0.05", "0.1", "0.2"} and robustness["images"] == 12
    assert robustness["clean"] == pytest.approx(result.metrics["accuracy"])  # all 12 test images: the same score


def test_the_distillation_terms_change_what_the_student_learns(split_folder, teacher_run, tmp_path):
    weights = {}
    variants = {
        "ce": {"loss": "ce"},
        "lgg": {"loss": "lgg", "graph_embedding": False},
        "lgg-emb": {"loss": "lgg"},
        "lgg-emb-out": {"loss": "lgg", "graph_logits": True},
    }
    for name, options in variants.items():
        train(str(split_folder), tmp_path / name, teacher=str(teacher_run), **DISTILL, **options, robustness_images=0)
        weights[name] = (tmp_path / name / "model.safetensors").read_bytes()
    assert len(set(weights.values())) == 4  # the pooled embeddings' graph and the outputs' are terms of their own
    pairs = {name: json.loads((tmp_path / name / "distill.json").read_text())["layer_pairs"] for name in variants}
    assert pairs["lgg-emb"][-1] == {"teacher": "pooled embedding", "student": "pooled embedding"}
    assert pairs["lgg-emb-out"][-2:] == [pairs["lgg-emb"][-1], {"teacher": "outputs", "student": "outputs"}]


def test_given_layer_pairs_are_used_and_checked(split_folder, teacher_run, tmp_path):
    options = DISTILL | {"loss": "lgg", "robustness_images": 0}
    given = dict(layers="blocks.4:blocks.3", graph_embedding=False)
    train(str(split_folder), tmp_path / "s", teacher=str(teacher_run), **given, **options)
    record = json.loads((tmp_path / "s" / "distill.json").read_text())
    assert record["layer_pairs"] == [{"teacher": "blocks.4", "student": "blocks.3"}] and record["layers_given"]
    with pytest.raises(FewlabelError, match="the student has no layer 'blocks.7'; its stages: blocks.0"):
        train(str(split_folder), tmp_path / "bad", teacher=str(teacher_run), layers="blocks.4:blocks.7", **options)


def test_a_teacher_with_another_class_set_is_named(tmp_path, teacher_run):
    other = make_image_folder(tmp_path / "other", classes=("cat", "dog"))
    with pytest.raises(FewlabelError, match="predicts classes blue, green, red; the data has cat, dog"):
        train(str(other), tmp_path / "s", teacher=str(teacher_run), **DISTILL | {"labels_per_class": None})


def test_bad_distillation_input_is_one_clear_line(split_folder, teacher_run, tmp_path):
    run = lambda **kw: train(str(split_folder), tmp_path / "s", overwrite=True, **DISTILL | kw)  # noqa: E731
    with pytest.raises(FewlabelError, match="needs a teacher: --teacher RUN"):
        run()
    (tmp_path / "no-run").mkdir()
    with pytest.raises(FewlabelError, match="no model.safetensors there"):
        run(teacher=str(tmp_path / "no-run"))
    with pytest.raises(FewlabelError, match="batches of 1 image.*at least 2"):
        run(teacher=str(teacher_run), batch_size=1, mu=1)
    with pytest.raises(FewlabelError, match="loss: term 'kd' needs a teacher; use method distill"):
        train(str(split_folder), tmp_path / "t", **FAST, loss="kd")
    with pytest.raises(FewlabelError, match="batch_size: --regularize and --loss lgg-target build a graph.*at least 2"):
        train(str(split_folder), tmp_path / "t", **FAST | {"batch_size": 1}, regularize="lgg-smooth")
    with pytest.raises(FewlabelError, match="unknown loss term 'lgg-targte'.*Did you mean 'lgg-target'"):
        train(str(split_folder), tmp_path / "t", **FAST, loss="lgg-targte")


def test_a_student_larger_than_the_teacher_is_allowed_and_warned(split_folder, teacher_run, tmp_path, caplog):
    options = DISTILL | {"model": "test_resnet", "loss": "kd", "robustness_images": 0}
    train(str(split_folder), tmp_path / "s", teacher=str(teacher_run), **options)
    record = json.loads((tmp_path / "s" / "distill.json").read_text())
    assert record["student_parameters"] > record["teacher_parameters"]
    assert "larger than the teacher" in record["warnings"][0] and "larger than the teacher" in caplog.text


def test_the_cli_distils_a_student(split_folder, teacher_run, tmp_path):
    out = tmp_path / "cli-student"
    args = ["distill", str(split_folder), "--teacher", str(teacher_run), "--student", "test_efficientnet"]
    args += ["--pretrained", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--loss", "kd", "--out", str(out), "--robustness-images", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model.json").read_text())["method"] == "distill"


# --- recipes ----------------------------------------------------------------------------------


def test_a_recipe_distils_an_earlier_stage(tmp_path, split_folder):
    defaults = {k: v for k, v in FAST.items()} | {"epochs": 1, "head_epochs": 1, "robustness_images": 0}
    stages = [
        {"name": "big", "data": str(split_folder), "strategy": "full"},
        {"name": "small", "data": str(split_folder), "method": "distill", "loss": "lgg"},
    ]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults, "stages": stages}))
    summary = run_recipe(path, tmp_path / "out")
    assert summary["stages"][0]["robustness"] is None  # robustness_images 0
    config = yaml.safe_load((tmp_path / "out" / "seed-0" / "small" / "config.yaml").read_text())
    assert config["method"]["teacher"].endswith("seed-0/big") and config["pretrained"] == "none"
    stages[1]["method"] = {"name": "distill", "teacher": "small"}
    path.write_text(yaml.safe_dump({"defaults": defaults, "stages": stages}))
    with pytest.raises(FewlabelError, match="'small' is not an earlier stage"):
        read_recipe(path)
    stages[1]["method"] = {"name": "distill", "teacher": str(tmp_path / "elsewhere")}
    path.write_text(yaml.safe_dump({"defaults": defaults, "stages": stages}))
    config = stage_config(read_recipe(path), 1, tmp_path / "seed-0", 0)
    assert config.method.teacher == str(tmp_path / "elsewhere")


# --- geometry terms on any method -------------------------------------------------------------


def test_the_smoothness_regulariser_adds_its_weighted_term_to_the_loss():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", num_classes=3)
    module = ClassifierModule(net, [{"params": list(net.parameters()), "lr": 1e-3}])
    batch = (torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2]))
    net.eval()  # the same outputs in both passes
    plain, _, _ = module.training_loss(batch)
    module.add_geometry(GeometryTerms(smooth_weight=0.5))
    module.log_dict = lambda *args, **kwargs: None
    with_term = module.training_step(batch, 0)
    with module._tap.recording():
        module.training_loss(batch)
    *stages, _ = module._tap.taken()
    regularizer = smoothness_regularizer(stages, torch.nn.functional.one_hot(batch[1], 3))
    assert regularizer > 0
    assert torch.isclose(with_term, plain + 0.5 * regularizer, rtol=1e-4)


def test_block_names_list_every_residual_block_and_nothing_inside_one():
    import timm

    resnet = timm.create_model("resnet18", num_classes=3)
    assert block_names(resnet) == [f"layer{stage}.{block}" for stage in range(1, 5) for block in (0, 1)]
    mobilenet = timm.create_model("mobilenetv3_small_050", num_classes=3)
    blocks = block_names(mobilenet)
    # stages 2 and 4 keep the resolution, so timm's feature info (the stages) skips them; blocks do not
    assert "blocks.2.1" in blocks and "blocks.4.2" in blocks and len(blocks) == 12
    assert layers_named(mobilenet, "stages") == ["bn1", "blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    assert layers_named(mobilenet, " blocks.0.0, blocks.5.0") == ["blocks.0.0", "blocks.5.0"]
    with pytest.raises(FewlabelError, match="has no layer 'blocks.9'; its stages: bn1, blocks.0"):
        layers_named(mobilenet, "blocks.0.0,blocks.9")
    convnext = timm.create_model("convnext_atto", num_classes=3)  # blocks inside stage modules: found there
    depths = (2, 2, 6, 2)
    assert block_names(convnext) == [f"stages.{i}.blocks.{j}" for i, depth in enumerate(depths) for j in range(depth)]
    densenet = timm.create_model("densenet121", num_classes=3)  # norm layers between blocks are not blocks
    assert block_names(densenet) == [f"features.denseblock{i}" for i in range(1, 5)]


def test_the_smoothness_regulariser_reads_the_layers_it_is_given():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", num_classes=3).eval()
    module = ClassifierModule(net, [{"params": list(net.parameters()), "lr": 1e-3}])
    module.log_dict = lambda *args, **kwargs: None
    batch = (torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2]))
    plain, _, _ = module.training_loss(batch)
    module.add_geometry(GeometryTerms(smooth_weight=0.5, power=2, layers="blocks"))
    with_term = module.training_step(batch, 0)
    with module._tap.recording():
        module.training_loss(batch)
    blocks = module._tap.taken(names=block_names(net))
    regularizer = smoothness_regularizer(blocks, torch.nn.functional.one_hot(batch[1], 3), power=2)
    assert len(blocks) == 12
    assert torch.isclose(with_term, plain + 0.5 * regularizer, rtol=1e-4)
    assert module._tap.names[:-1] == block_names(net)  # the blocks, then the output


def test_the_regulariser_and_lgg_distillation_keep_their_own_k():
    from fewlabel.config import make_config
    from fewlabel.train.engine import geometry_terms

    both = make_config({"data": "x", "regularize": "lgg-smooth", "graph_k": 3, "smooth_k": 5, "smooth_power": 2})
    assert geometry_terms(both).k == 5 and geometry_terms(both).power == 2
    assert geometry_terms(make_config({"data": "x", "regularize": "lgg-smooth", "graph_k": 3})).k is None


def test_a_regulariser_layer_the_network_lacks_is_named(split_folder, tmp_path):
    options = FAST | {"strategy": "full", "robustness_images": 0, "regularize": "lgg-smooth"}
    with pytest.raises(FewlabelError, match="has no layer 'blocks.99'"):
        train(str(split_folder), tmp_path / "r", **options, smooth_layers="blocks.0,blocks.99")
    with pytest.raises(FewlabelError, match="smooth_layers"):
        train(str(split_folder), tmp_path / "r2", **options, smooth_layers="")
    with pytest.raises(FewlabelError, match="smooth_layers 'blocks.0': .*at least 2; got 1"):
        train(str(split_folder), tmp_path / "r3", **options, smooth_layers="blocks.0")


@pytest.mark.parametrize("options", [{"regularize": "lgg-smooth", "reg_weight": 0.1}, {"loss": "lgg-target"}])
def test_geometry_terms_train_with_fine_tuning_tri_net_and_distillation(split_folder, teacher_run, tmp_path, options):
    key = "smoothness_reg" if "regularize" in options else "geometry_loss"
    train(str(split_folder), tmp_path / "ft", **FAST, strategy="full", robustness_images=0, **options)
    assert key in logged_columns(tmp_path / "ft", "finetune")
    semi = {"method": "trinet", "rounds": 1, "sample_first": 8, "labels_per_class": 5, "robustness_images": 0}
    train(str(split_folder), tmp_path / "tri", **FAST, **semi, **options)
    assert key in logged_columns(tmp_path / "tri", "initial")
    # the student runs its classifier apart from the network's forward: the terms must still see its logits
    train(str(split_folder), tmp_path / "student", teacher=str(teacher_run), **DISTILL, robustness_images=0, **options)
    assert key in logged_columns(tmp_path / "student", "distill")


def logged_columns(run, fit: str) -> list[str]:
    return (run / "logs" / fit / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")


# --- robustness -------------------------------------------------------------------------------


class MeanBrightness(nn.Module):
    """Class 0 when the mean pixel is above 0.5, else class 1 (logits: mean - 0.5, 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.mean((1, 2, 3)) - 0.5
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_fgsm_and_noise_accuracy_by_hand():
    images = torch.full((8, 3, 4, 4), 133, dtype=torch.uint8)  # 0.5216: class 0 by a margin of 0.0216
    labels = torch.zeros(8, dtype=torch.long)
    scores = robustness_scores(MeanBrightness(), images, labels, 4, (0, 0, 0), (1, 1, 1), sigmas=(0.01,))
    assert scores["clean"] == 1.0 and scores["gaussian"]["0.01"] == 1.0
    # each step lowers every pixel by epsilon: 4/255 = 0.0157 keeps class 0, 8/255 = 0.0314 does not
    assert scores["fgsm"] == {"1/255": 1.0, "2/255": 1.0, "4/255": 1.0, "8/255": 0.0}
    noisy = robustness_scores(MeanBrightness(), images, labels, 4, (0, 0, 0), (1, 1, 1), sigmas=(0.5,))
    assert noisy["gaussian"]["0.5"] < 1.0  # clipping at 0 and 1 moves the mean of 48 noisy pixels

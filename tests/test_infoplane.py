"""Information plane of the output (issue 14): estimators against closed forms, tracking through
the engine, and the comparison of runs."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel.audit.infoplane import bin_codes, binned_plane, knn_mutual_information, plane
from fewlabel.audit.infoplane_audit import transfer_groups
from fewlabel.errors import FewlabelError


def _mutual_information(joint: np.ndarray) -> float:
    """I in bits of a joint probability table."""
    rows, columns = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    mask = joint > 0
    return float((joint[mask] * np.log2(joint[mask] / (rows @ columns)[mask])).sum())


def _symmetric_channel(classes: int, error: float, n: int, seed: int = 0):
    """Labels uniform over ``classes``; the output is the label, or with probability ``error``
    one of the other classes at random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    wrong = rng.random(n) < error
    outputs = np.where(wrong, (labels + rng.integers(1, classes, n)) % classes, labels)
    channel = np.full((classes, classes), error / (classes - 1))
    np.fill_diagonal(channel, 1 - error)
    return labels, outputs, channel / classes  # the joint P(Y, T)


def test_a_noisy_symmetric_channel_matches_its_closed_form_with_both_estimators():
    classes, error = 4, 0.2
    labels, outputs, joint = _symmetric_channel(classes, error, 6000)
    exact = math.log2(classes) + (1 - error) * math.log2(1 - error) + error * math.log2(error / (classes - 1))
    assert _mutual_information(joint) == pytest.approx(exact)
    soft = np.eye(classes)[outputs] * 0.9 + 0.1 / classes  # a confident softmax: one code per output class
    binned = plane(soft, labels, classes)
    assert binned["I_TY"] == pytest.approx(exact, abs=0.04)
    assert binned["I_XT"] == pytest.approx(math.log2(classes), abs=0.01)  # H(T) of a uniform output
    noisy = np.eye(classes)[outputs] + 0.05 * np.random.default_rng(1).standard_normal((len(labels), classes))
    assert knn_mutual_information(noisy, labels) == pytest.approx(exact, abs=0.06)
    # one-vs-rest: the joint of (T, [Y == 0]) from the channel's joint
    one_vs_rest = np.stack([joint[1:].sum(0), joint[0]], axis=0)
    assert binned["per_class"][0] == pytest.approx(_mutual_information(one_vs_rest), abs=0.03)


def test_the_limits_a_constant_output_and_a_perfect_classifier():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    constant = np.full((2000, 5), 0.2)
    for estimator in ("binning", "knn"):
        point = plane(constant, labels, 5, estimator=estimator)
        assert point["I_TY"] == pytest.approx(0.0, abs=0.03)
        assert all(value == pytest.approx(0.0, abs=0.03) for value in point["per_class"])
    assert plane(constant, labels, 5)["I_XT"] == 0.0
    perfect = np.eye(5)[labels]
    binned = plane(perfect, labels, 5)
    assert binned["I_TY"] == pytest.approx(binned["H_Y"]) and binned["I_XT"] == pytest.approx(binned["H_Y"])
    knn = plane(perfect + 0.01 * rng.standard_normal(perfect.shape), labels, 5, estimator="knn")
    assert knn["I_TY"] == pytest.approx(knn["H_Y"], abs=0.05) and knn["I_XT"] is None


def test_codes_are_the_cells_of_the_simplex_or_the_top_class_and_its_bin_and_bad_settings_are_refused():
    outputs = np.array([[1.0, 0.0, 0.0], [0.35, 0.45, 0.2], [0.049, 0.0, 0.951]])
    assert bin_codes(outputs, bins=10, code="simplex").tolist() == [[9, 0, 0], [3, 4, 2], [0, 0, 9]]  # 1.0: last bin
    assert bin_codes(outputs, bins=10, code="top").tolist() == [[0, 9], [1, 4], [2, 9]]
    with pytest.raises(ValueError, match="code must be one of top, simplex"):
        bin_codes(outputs, 10, code="cells")
    # finer bins separate outputs that coarse bins merge: H(T) grows
    outputs = np.random.default_rng(0).dirichlet(np.ones(3), 500)
    labels = np.zeros(500, dtype=int)
    for code in ("top", "simplex"):
        assert binned_plane(outputs, labels, 20, code)["I_XT"] > binned_plane(outputs, labels, 2, code)["I_XT"]
    with pytest.raises(ValueError, match="bins must be at least 2"):
        bin_codes(outputs, 1)
    with pytest.raises(ValueError, match="estimator must be one of binning, knn"):
        plane(outputs, labels, 3, estimator="kde")


def _scattered_outputs(accuracy: float, n: int = 500, classes: int = 10, seed: int = 0):
    """An unconfident classifier: the right class on top with probability ``accuracy`` (else a
    random wrong one), its probability spread over the simplex by a flat Dirichlet."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    right = rng.random(n) < accuracy
    top = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    outputs = rng.dirichlet(np.ones(classes), n)
    outputs += np.eye(classes)[top] * (outputs.max(1, keepdims=True) + 0.01)  # the chosen class on top
    return outputs / outputs.sum(1, keepdims=True), labels


def test_the_top_code_ranks_scattered_outputs_by_what_they_say_where_the_simplex_code_saturates():
    weak, strong = _scattered_outputs(0.3), _scattered_outputs(0.8, seed=1)
    simplex = [binned_plane(*model, 10, "simplex")["I_TY"] for model in (weak, strong)]
    top = [binned_plane(*model, 10, "top")["I_TY"] for model in (weak, strong)]
    h_y = binned_plane(*weak, 10)["H_Y"]
    assert min(simplex) > 0.95 * h_y  # every image alone in its cell: both look perfect
    assert top[1] - top[0] > 1.0 and top[0] < 0.5 * h_y  # the strong model carries clearly more


@pytest.fixture(scope="module")
def tracked_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infoplane")
    data = make_image_folder(root / "data" / "train", per_class=10, seed=1).parent
    make_image_folder(data / "test", per_class=4, seed=2)
    runs = []
    for seed, strategy in ((0, "freeze-unfreeze"), (1, "full"), (2, "linear-probe")):
        options = FAST | {"seed": seed, "strategy": strategy, "track_infoplane": True, "infoplane_bins": 4}
        runs.append(fewlabel.train(str(data), root / f"run{seed}", **options).run_dir)
    return root, data, runs


def test_tracking_records_every_epoch_of_every_fit_and_the_report_says_what_it_cost(tracked_runs):
    _, _, runs = tracked_runs
    record = json.loads((runs[0] / "infoplane.json").read_text())
    binned = [(p["fit"], p["epoch"]) for p in record["points"] if p["estimator"] == "binning"]
    knn = [(p["fit"], p["epoch"]) for p in record["points"] if p["estimator"] == "knn"]
    fits = sorted({fit for fit, _ in binned})
    assert len(fits) == 2  # freeze-unfreeze: the head on features and the whole network
    assert all(sorted(e for f, e in binned if f == fit) == [0, 1] for fit in fits)  # FAST: 2 epochs each
    assert knn == [(fit, 1) for fit in dict.fromkeys(f for f, _ in binned)]  # k-NN at each fit's last epoch
    point = record["points"][-1]
    assert point["images"] == 6 and 0 <= point["I_TY"] <= point["H_Y"] + 1e-9  # 20% of 30 held out
    assert record["seconds"] > 0
    assert record["warning"].startswith("6 validation images for 4 bins x 3 classes")  # said while training
    report = (runs[0] / "report.html").read_text()
    assert "Information plane of the output" in report and "% of the training time" in report


def test_a_resumed_fit_drops_the_points_of_the_epochs_it_redoes(tmp_path):
    from fewlabel.train.callbacks import InfoPlaneTracker

    points = [{"fit": fit, "epoch": e, "estimator": "binning"} for fit in ("head", "finetune") for e in range(3)]
    (tmp_path / "infoplane.json").write_text(json.dumps({"points": points, "seconds": 1.5}))
    kept = InfoPlaneTracker(tmp_path, "finetune", bins=10)._load(epoch=1)
    assert [(p["fit"], p["epoch"]) for p in kept["points"]] == [("head", 0), ("head", 1), ("head", 2), ("finetune", 0)]
    assert kept["seconds"] == 1.5


def test_the_audit_ranks_runs_plots_per_class_and_leaves_each_run_its_place(tracked_runs, tmp_path, caplog):
    _, _, runs = tracked_runs
    with caplog.at_level(logging.WARNING, logger="fewlabel.audit"):
        result = fewlabel.audit_infoplane(runs, out=tmp_path / "plane", rank=True, per_class=True)
    assert f"information plane of '{runs[0]}': 6 validation images for 4 bins x 3 classes" in caplog.text
    assert "use --infoplane-bins 2" in caplog.text
    saved = json.loads((tmp_path / "plane" / "infoplane.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert (tmp_path / "plane" / "infoplane.png").read_bytes()[:4] == b"\x89PNG"
    order = result["rank"]["order"]
    assert sorted(row["run"] for row in order) == sorted(map(str, runs))
    assert [row["I_TY"] for row in order] == sorted((row["I_TY"] for row in order), reverse=True)
    correlation = result["rank"]["I_TY_vs_test_accuracy"]
    assert correlation["runs"] == 3 and (correlation["rho"] is None or -1 <= correlation["rho"] <= 1)
    per_class = result["per_class"][str(runs[0])]
    assert set(per_class) == {"red", "green", "blue"} and per_class["red"]["train_images"] == 8
    assert len(per_class["red"]["trajectory"]) == 4  # every tracked binning point
    comparison = json.loads((runs[0] / "audit" / "infoplane.json").read_text())
    assert comparison["runs"] == 3 and 1 <= comparison["position"] <= 3
    assert f"ranked {comparison['position']} of\n3 by validation I(T;Y)" in (runs[0] / "report.html").read_text()


def test_runs_differing_only_in_pretraining_get_epochs_to_reach_a_share_of_h_y():
    def record(pretrained: str, seed: int, information: list[float]) -> dict:
        points = [{"estimator": "binning", "I_TY": value, "H_Y": 2.0} for value in information]
        config = {"model": "m", "strategy": "full", "pretrained": pretrained, "seed": seed}
        return {"config": config, "points": points}

    records = {
        "imagenet": record("imagenet", 0, [1.2, 1.85, 1.9]),
        "scratch": record("none", 1, [0.2, 0.9, 1.5, 1.81]),
        "other-model": record("none", 0, [2.0]) | {"config": {"model": "n", "pretrained": "none"}},
    }
    (group,) = transfer_groups(records, reach=0.9)
    assert group["runs"]["imagenet"]["epochs_to_reach"] == 2 and group["runs"]["scratch"]["epochs_to_reach"] == 4
    assert "other-model" not in group["runs"]


def test_bad_inputs_untracked_runs_different_class_sets_and_different_codes(tracked_runs, tmp_path):
    _, data, runs = tracked_runs
    untracked = fewlabel.train(str(data), tmp_path / "untracked", **FAST).run_dir
    with pytest.raises(FewlabelError, match="trained without --track-infoplane .* retrain it with --track-infoplane"):
        fewlabel.audit_infoplane([runs[0], untracked], out=tmp_path / "out")
    other = make_image_folder(tmp_path / "other" / "train", per_class=6, classes=("cat", "dog"))
    two = fewlabel.train(str(other), tmp_path / "two", **FAST | {"track_infoplane": True}).run_dir
    with pytest.raises(FewlabelError, match=r"have different classes \(.*\): one plane holds runs of one class set"):
        fewlabel.audit_infoplane([runs[0], two], out=tmp_path / "out")
    simplex = fewlabel.train(
        str(data),
        tmp_path / "simplex",
        **FAST | {"track_infoplane": True, "infoplane_bins": 4, "infoplane_code": "simplex"},
    ).run_dir
    with pytest.raises(FewlabelError, match=r"binned differently \(4 bins, top code against 4 bins, simplex code\)"):
        fewlabel.audit_infoplane([runs[0], simplex], out=tmp_path / "out")
    with pytest.raises(FewlabelError, match=r"reach must be a share of H\(Y\) in \(0, 1\], got 1.5"):
        fewlabel.audit_infoplane([runs[0]], out=tmp_path / "out", reach=1.5)
    assert not (tmp_path / "out").exists()


def test_the_command_prints_the_plane_and_the_correlations(tracked_runs, tmp_path, monkeypatch, capsys):
    from fewlabel.cli import main

    _, _, runs = tracked_runs
    args = ["audit", "infoplane", *map(str, runs), "--rank", "--out", str(tmp_path / "cli")]
    monkeypatch.setattr("sys.argv", ["fewlabel", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "I(T;Y) k-NN" in out and "Spearman, I(T;Y) against test accuracy over 3 runs" in out
    assert (tmp_path / "cli" / "infoplane.json").is_file()


def test_semi_supervised_rounds_are_tracked_too(tmp_path):
    from fewlabel.rundir import read_history
    from test_semi import OPTIONS, method_options

    data = make_image_folder(tmp_path / "semi", per_class=10)
    options = OPTIONS | method_options("trinet") | {"track_infoplane": True, "infoplane_knn": "never"}
    run = fewlabel.train(str(data), tmp_path / "run", **options).run_dir
    points = json.loads((run / "infoplane.json").read_text())["points"]
    validated = [(row["phase"], int(row["epoch"])) for row in read_history(run) if row["val_acc"]]
    assert [(p["fit"], p["epoch"]) for p in points] == validated and len({fit for fit, _ in validated}) >= 3
    assert {p["estimator"] for p in points} == {"binning"}

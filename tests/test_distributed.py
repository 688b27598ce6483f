"""Real two-process DDP trainings on CPU (gloo), launched by torchrun through the command line,
against one process with twice the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fewlabel
from conftest import FAST, make_image_folder

# No dropout and frozen BatchNorm statistics: then two processes with batch 4 take exactly the
# steps of one process with batch 8 (same images per step, gradients averaged), up to rounding.
EXACT = FAST | {"strategy": "full", "epochs": 3, "dropout": 0.0, "freeze_bn": "yes"}
SEMI = {
    "pseudo-label": {"method": "pseudo-label", "rounds": 2, "round_epochs": 1, "sample_first": 12, "threshold": 0.9},
    "fixmatch": {"method": "fixmatch", "rounds": 1, "round_epochs": 2, "threshold": 0.9, "mu": 2},
}


def torchrun(command: str, data: Path, out: Path, options: dict) -> subprocess.CompletedProcess:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if k != "progress"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "fewlabel.cli", command, str(data), "--out", str(out), "--no-progress", "--devices=2"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launch, *args, "--accelerator=cpu", "--distributed=ddp", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_two_process_ddp_matches_one_process(split_folder, tmp_path):
    single = fewlabel.train(str(split_folder), tmp_path / "single", **EXACT | {"batch_size": 8})
    completed = torchrun("train", split_folder, tmp_path / "ddp", EXACT | {"batch_size": 4})
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["confusion_matrix"] == single.metrics["confusion_matrix"]
    assert ddp["nll"] == pytest.approx(single.metrics["nll"], rel=1e-3, abs=1e-4)
    assert [p.name for p in sorted(Path(tmp_path / "ddp").iterdir())] == sorted(
        p.name for p in Path(tmp_path / "single").iterdir()
    )


@pytest.mark.parametrize("method", ["pseudo-label", "fixmatch"])
def test_semi_supervised_rounds_under_two_process_ddp_match_one_process(method, tmp_path):
    """Pseudo-labels are computed in shares on both processes and gathered, so both train on the
    same set; only process 0 writes (its log names each round once)."""
    data = make_image_folder(tmp_path / "data", per_class=12)
    options = {k: v for k, v in EXACT.items() if k != "strategy"} | {"labels_per_class": 4} | SEMI[method]
    single = fewlabel.train(str(data), tmp_path / "single", **options | {"batch_size": 8})
    completed = torchrun("semi", data, tmp_path / "ddp", options | {"batch_size": 4})
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["confusion_matrix"] == single.metrics["confusion_matrix"]
    assert ddp["nll"] == pytest.approx(single.metrics["nll"], rel=1e-3, abs=1e-4)
    assert ddp["train_images"] == single.metrics["train_images"]
    rounds = json.loads((tmp_path / "ddp" / "rounds.json").read_text())
    expected = json.loads((single.run_dir / "rounds.json").read_text())
    if method == "pseudo-label":
        assert 0 < expected["rounds"][0]["modules"][0]["kept"] < 12  # the threshold takes some, not all
        assert [r["modules"] for r in rounds["rounds"]] == [r["modules"] for r in expected["rounds"]]
        assert completed.stderr.count("round 1: [") == 1  # logged by process 0 only
    else:
        share = rounds["rounds"][0]["fixmatch_confident_share"]
        assert 0 < share < 1 and share == pytest.approx(expected["rounds"][0]["fixmatch_confident_share"])
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in single.run_dir.iterdir())


def test_strategy_auto_and_refit_under_two_process_ddp_match_one_process(tmp_path):
    """The search's candidates, its choice (skips decided by process 0) and the refit run alike
    on two processes; only process 0 writes."""
    data = make_image_folder(tmp_path / "data", per_class=10)  # no val/ or test/: 20% held out, refit on
    options = {k: v for k, v in EXACT.items() if k != "strategy"} | {"epochs": 2, "head_epochs": 3}
    single = fewlabel.train(str(data), tmp_path / "single", **options | {"batch_size": 8})
    completed = torchrun("train", data, tmp_path / "ddp", options | {"batch_size": 4})
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for key in ("winner", "val_images"):
        assert ddp["strategy_search"][key] == single.metrics["strategy_search"][key]
    assert ddp["refit"]["refit"] and ddp["refit"]["plan"] == single.metrics["refit"]["plan"]
    assert ddp["confusion_matrix"] == single.metrics["confusion_matrix"]
    assert ddp["nll"] == pytest.approx(single.metrics["nll"], rel=1e-3, abs=1e-4)

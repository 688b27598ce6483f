"""A real two-process DDP training on CPU (gloo), launched by torchrun, against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fewlabel
from conftest import FAST

# No dropout and frozen BatchNorm statistics: then two processes with batch 4 take exactly the
# steps of one process with batch 8 (same images per step, gradients averaged), up to rounding.
EXACT = FAST | {"strategy": "full", "epochs": 3, "dropout": 0.0, "freeze_bn": "yes"}


def test_two_process_ddp_matches_one_process(split_folder, tmp_path):
    single = fewlabel.train(str(split_folder), tmp_path / "single", **EXACT | {"batch_size": 8})
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in (EXACT | {"batch_size": 4}).items() if k != "progress"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "fewlabel.cli",
        "train",
        str(split_folder),
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
        "--devices=2",
        "--accelerator=cpu",
        "--distributed=ddp",
        *flags,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["confusion_matrix"] == single.metrics["confusion_matrix"]
    assert ddp["nll"] == pytest.approx(single.metrics["nll"], rel=1e-3, abs=1e-4)
    assert [p.name for p in sorted(Path(tmp_path / "ddp").iterdir())] == sorted(
        p.name for p in Path(tmp_path / "single").iterdir()
    )

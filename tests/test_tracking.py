"""--logger mlflow: the run lands in a local MLflow store that the MLflow server opens."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

import fewlabel
from conftest import FAST
from fewlabel.errors import FewlabelError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_records_params_metrics_history_and_report(split_folder, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    result = fewlabel.train(
        str(split_folder), tmp_path / "run", strategy="freeze-unfreeze", logger="mlflow", mlflow_uri=uri, **FAST
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fewlabel").experiment_id])
    assert run.data.params["model"] == "test_efficientnet" and run.data.params["method.strategy"] == "freeze-unfreeze"
    assert run.data.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    history = client.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert len(history) == 4  # 2 head + 2 fine-tuning epochs
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "metrics.json", "config.yaml", "predictions.csv"} <= artifacts

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = None
        for _ in range(120):  # the UI server opens the same store
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                    data=json.dumps({"experiment_ids": [run.info.experiment_id]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                body = json.loads(urllib.request.urlopen(request, timeout=5).read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None and body["runs"][0]["info"]["run_id"] == run.info.run_id
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_bad_mlflow_uri_is_one_clear_line(split_folder, tmp_path):
    with pytest.raises(FewlabelError, match="mlflow_uri: not accepted: use sqlite:///.*got 'mysql:x'"):
        fewlabel.train(
            str(split_folder), tmp_path / "run", strategy="linear-probe", logger="mlflow", mlflow_uri="mysql:x", **FAST
        )

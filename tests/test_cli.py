"""The command line: each command end to end, and bad input as one line without a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import FAST
from fewlabel.cli import app, main

runner = CliRunner()
FAST_FLAGS = [
    "--model",
    FAST["model"],
    "--pretrained",
    "none",
    "--img-size",
    "32",
    "--epochs",
    "1",
    "--head-epochs",
    "2",
    "--batch-size",
    "8",
    "--no-progress",
]


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["fewlabel", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr()


def test_train_eval_predict(split_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(split_folder), "--out", str(out), "--strategy", "linear-probe", *FAST_FLAGS]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "report.html" in result.output
    result = runner.invoke(app, ["eval", str(out), f"{split_folder}:val", "--out", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["n_samples"] == 9
    image = next((split_folder / "test" / "blue").iterdir())
    result = runner.invoke(app, ["predict", str(out), str(image), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.output)
    assert len(predictions[0]["top"]) == 2 and predictions[0]["image"] == str(image)


def test_models_and_datasets_commands():
    result = runner.invoke(app, ["models", "efficientnet_lite*"])
    assert result.exit_code == 0 and "efficientnet_lite0" in result.output and "yes" in result.output
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0 and "fashion-mnist-small" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "fashion-mnits"], "Unknown dataset 'fashion-mnits'"),
        (["train", "fashion-mnist-small", "--model", "resnet999"], "Unknown model 'resnet999'"),
        (["train", "fashion-mnist-small", "--strategy", "freeze"], "strategy: unknown strategy 'freeze'"),
        (
            [
                "train",
                "fashion-mnist-small",
                "--labels-per-class",
                "500",
                "--pretrained",
                "none",
                "--model",
                "test_efficientnet",
            ],
            "larger than class",
        ),
        (["eval", "nowhere", "fashion-mnist-small:test"], "holds no model"),
        (["run", "no-recipe.yaml"], "Config file 'no-recipe.yaml' not found"),
        (["intermediate", "build", "--method", "synthetic", "--out", "x"], "needs --generator module:function"),
    ],
)
def test_bad_input_is_one_line_without_traceback(monkeypatch, capsys, tmp_path, args, message):
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "run")]
    code, captured = run_main(monkeypatch, capsys, *args)
    assert code == 1
    assert message in captured.err.replace("\n", " ") and "Traceback" not in captured.err


def test_wrong_yaml_key_names_the_key(monkeypatch, capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("data: fashion-mnist-small\nepochz: 3\n")
    code, captured = run_main(
        monkeypatch, capsys, "train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")
    )
    assert code == 1 and "c.yaml: epochz: unknown key; accepted keys: data," in captured.err.replace("\n", "")


def test_run_recipe_command(monkeypatch, capsys, tmp_path, image_folder):
    import yaml

    recipe = {
        "name": "cli",
        "defaults": FAST | {"epochs": 1, "head_epochs": 1},
        "stages": [
            {"name": "render", "build": {"method": "synthetic", "generator": "test_intermediate:two_colours"}},
            {"name": "target", "data": str(image_folder)},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, captured = run_main(monkeypatch, capsys, "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"))
    assert code == 0, captured.err
    assert "render" in captured.out and "target" in captured.out and "report:" in captured.out
    assert (tmp_path / "out" / "seed-0" / "data-render" / "labels.csv").is_file()

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
        (
            ["train", "fashion-mnist-small", "--rounds", "3"],
            "rounds: method 'finetune' does not use it; it is an option of supervised, pseudo-label, fixmatch, trinet",
        ),
        (["semi", "fashion-mnist-small", "--strategy", "full"], "strategy: method 'trinet' does not use it"),
        (["train", "fashion-mnist-small", "--method", "trinet", "--dropout", "0.5"], "dropout: method 'trinet' does"),
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
    code, captured = run_main(
        monkeypatch, capsys, "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "again"),
        "--no-progress", "--epochs", "2", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, captured.err
    for stage in ("render", "target"):  # a flag applies to every stage, over the recipe's own value
        saved = yaml.safe_load((tmp_path / "again" / "seed-0" / stage / "config.yaml").read_text())
        assert saved["epochs"] == 2 and saved["batch_size"] == 4 and saved["progress"] is False


def option_names(command: str) -> set[str]:
    import typer.main

    params = typer.main.get_command(app).commands[command].params
    return {name for p in params if p.param_type_name == "option" for name in [*p.opts, *p.secondary_opts]}


def test_every_training_command_takes_the_same_options():
    from fewlabel.config import PER_STAGE_KEYS, TrainConfig
    from fewlabel.methods import option_owners

    train, semi, run = option_names("train"), option_names("semi"), option_names("run")
    flags = {"--" + k.replace("_", "-") for k in [*TrainConfig.model_fields, *option_owners()] if k != "data"}
    assert flags <= train and train == semi
    per_stage = {"--" + k.replace("_", "-") for k in PER_STAGE_KEYS}
    assert (flags - per_stage) <= run and not (per_stage & run - {"--seeds"})
    assert {"--progress", "--no-progress", "--rounds", "--strategy", "--module-stages"} <= run


def test_a_log_written_to_a_file_keeps_each_message_on_one_line(tmp_path):
    """Not a terminal: one line per message, paths never wrapped, so grep finds a skipped file."""
    import subprocess
    import sys

    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "a-folder-with-a-rather-long-name-to-wrap" / "images")
    bad = folder / "red" / "notanimage-with-a-long-file-name-that-a-terminal-would-wrap.jpg"
    bad.write_bytes(b"not an image at all")
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:
        completed = subprocess.run(
            [sys.executable, "-m", "fewlabel.cli", "train", str(folder), "--out", str(tmp_path / "run"),
             "--strategy", "linear-probe", *FAST_FLAGS],
            stdout=subprocess.DEVNULL, stderr=stderr, timeout=300, check=False,
        )  # fmt: skip
    assert completed.returncode == 0, log.read_text()[-2000:]
    lines = [line for line in log.read_text().splitlines() if str(bad) in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING fewlabel.data: skipped 1 unreadable image(s)")

"""The run directory contract: every file a run, a semi run, a multi-seed run or a recipe writes is
listed in fewlabel.rundir.FILES, and the README lists every entry."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import fewlabel
from conftest import FAST
from fewlabel.rundir import FILES, read_history, write_history
from fewlabel.stepwise.recipe import run_recipe

README = Path(__file__).parents[1] / "README.md"


def pattern(entry_path: str) -> re.Pattern:
    """An entry's path as a regex over relative paths ("seed-<s>/", "<stage>", "logs/" prefixes)."""
    text = re.escape(entry_path.split(" ")[0]).replace("<s>", r"\d+").replace("<stage>", r"[^/]+")
    return re.compile(text + (".*" if entry_path.endswith("/") else "") + "$")


CONTAINERS = ("seed-<s>/", "seed-<s>/<stage>/")  # run directories inside run or recipe folders


def undocumented(root: Path) -> list[str]:
    """Files under ``root`` that no entry describes; inside a seed's or a stage's folder (a run
    directory itself) the path is also tried from that folder."""
    patterns = [pattern(e.path) for e in FILES if e.path not in CONTAINERS]
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        candidates = [relative]
        if seed := re.match(r"seed-\d+/(.*)", relative):
            candidates.append(seed.group(1))
            if (stage := re.match(r"seed-\d+/(?!data-)[^/]+/(.*)", relative)) and "/" in seed.group(1):
                candidates.append(stage.group(1))
        if not any(p.match(c) for p in patterns for c in candidates):
            found.append(relative)
    return found


def test_every_file_of_runs_semi_runs_and_recipes_is_listed(split_folder, image_folder, tmp_path):
    fewlabel.train(str(split_folder), tmp_path / "run", strategy="freeze-unfreeze", logger="tensorboard", **FAST)
    fewlabel.train(str(split_folder), tmp_path / "seeds", strategy="linear-probe", seeds=[0, 1], **FAST)
    fewlabel.train(
        str(split_folder), tmp_path / "semi", method="pseudo-label", rounds=1, round_epochs=1, labels_per_class=6,
        **FAST,
    )  # fmt: skip
    recipe = {
        "defaults": FAST | {"epochs": 1, "head_epochs": 1},
        "stages": [
            {"name": "clusters", "build": {"method": "clusters", "pool": str(image_folder), "k": 3}},
            {"name": "target", "data": str(split_folder)},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_recipe(tmp_path / "r.yaml", tmp_path / "recipe")
    for root in ("run", "seeds", "semi", "recipe"):
        assert undocumented(tmp_path / root) == [], root
    assert (tmp_path / "semi" / "rounds.json").is_file() and (tmp_path / "run" / "checkpoints" / "state.pt").is_file()


def test_the_readme_lists_every_file():
    text = README.read_text(encoding="utf-8")
    missing = [e.path for e in FILES if e.path.split(" ")[0] not in text]
    assert missing == []


def test_history_round_trips(tmp_path):
    rows = [{"phase": "head", "epoch": "0", "train_loss": "0.5", "lr": "0.01"}]
    write_history(tmp_path, rows)
    assert read_history(tmp_path) == [
        {"phase": "head", "epoch": "0", "train_loss": "0.5", "train_acc": "", "val_loss": "", "val_acc": "",
         "lr": "0.01", "seconds": ""}
    ]  # fmt: skip
    assert read_history(tmp_path / "nothing") == []

"""The semi-supervised section of report.html: pseudo-labels per round and the accuracy after
each round, from rounds.json."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..rundir import read_rounds


def section(run_dir: Path) -> str | None:
    """The section's HTML, or None for a run without rounds.json."""
    rounds = read_rounds(run_dir)
    if rounds is None:
        return None
    environment = Environment(loader=PackageLoader("fewlabel.semi", "templates"), autoescape=select_autoescape())
    return environment.get_template("rounds.html").render(rounds=rounds)

"""The semi-supervised section of report.html: pseudo-labels per round and the accuracy after
each round, from rounds.json."""

from __future__ import annotations

from pathlib import Path

from ..report.sections import record_section
from ..rundir import ROUNDS


def section(run_dir: Path) -> str | None:
    """The section's HTML, or None for a run without rounds.json."""
    return record_section(run_dir, ROUNDS, "fewlabel.semi", "rounds.html", "rounds")

"""User-facing errors: one line that names the input and what would be accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FewlabelError(Exception):
    """A problem with the user's input; the CLI prints its message alone, without a traceback."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> FewlabelError:
    """The error for a name that is not in a registry, listing what is available."""
    choices = sorted(choices)
    return FewlabelError(f"Unknown {kind} '{value}'. Available: {', '.join(choices)}.{did_you_mean(value, choices)}")

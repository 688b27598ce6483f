"""The Typer application every command registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train trustworthy image models when labels are scarce. Options: flags override --config, "
    "which overrides the defaults.",
)

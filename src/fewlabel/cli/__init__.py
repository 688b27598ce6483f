"""The ``fewlabel`` command: parses arguments, calls :mod:`fewlabel.api`, prints. No logic here.

Importing this module does not import torch or Lightning: each command imports what it needs
when it runs, so ``--help`` and argument errors answer at once. For the same reason help and
usage errors are Click's plain text (Typer's Rich panels cost 0.1-0.15 s more on this
project's 2-core machine); ``TYPER_USE_RICH=1`` brings the panels back.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TYPER_USE_RICH", "0")  # read once, when Typer is first imported (just below)

from ..distributed import is_rank_zero
from ..errors import FewlabelError
from . import commands, depth, intermediate, nuclei  # noqa: F401  (they register their commands on app)
from .app import app


class OneLineFormatter(logging.Formatter):
    """``LEVEL name: message`` on one line: a message's own line breaks become spaces."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", " ").replace("\n", " ")


def setup_logging(stream=None) -> None:
    """Rich output on a terminal; otherwise one plain line per message, never wrapped, so that
    tools (grep) find a file name a message names. Processes other than rank 0 log warnings only."""
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(file=stream), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO if is_rank_zero() else logging.WARNING)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_error(message: str) -> None:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    else:
        print(f"error: {message}", file=sys.stderr)


def main() -> None:
    setup_logging()
    try:
        app()
    except FewlabelError as exc:
        print_error(str(exc))
        raise SystemExit(1) from None
    except OSError as exc:  # a file the command reads or writes, not a bug: one line naming it
        if exc.filename is None:
            raise
        print_error(f"'{exc.filename}': {exc.strerror or exc}.")
        raise SystemExit(1) from None

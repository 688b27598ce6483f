"""report.html: one self-contained page per run directory, built only from its files."""

from .html import write_report

__all__ = ["write_report"]

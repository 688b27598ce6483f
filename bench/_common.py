"""Shared helpers of the benchmark scripts: machine description and the JSON result file."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fewlabel.fileio import write_json

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def command_line(script: str, args: argparse.Namespace) -> str:
    """The command that reproduces a bench run: every option with its value (lists spaced,
    an empty string quoted), switches only when on, options left unset (None) out."""
    words = [f"python bench/{script}"]
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words.append(" ".join([flag, *map(str, value)]))
        elif value is not None and value is not False:  # 0 is a value, not an unset option
            words.append(f"{flag} {value!r}" if value == "" else f"{flag} {value}")
    return " ".join(words)


def save(name: str, result: dict, partial: bool = False) -> Path:
    """results/NAME.json; ``partial`` (a bench still running) writes NAME.partial.json instead, so an
    interrupted run never replaces a complete result; the complete one removes the partial file."""
    path = RESULTS / f"{name}.partial.json" if partial else RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine(), **result})
    if not partial:
        (RESULTS / f"{name}.partial.json").unlink(missing_ok=True)
    print(f"wrote {path}")
    return path

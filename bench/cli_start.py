"""How long the command line takes to answer without training: ``fewlabel --help``,
``fewlabel train --help`` and an argument error, against ``python -c pass`` (the interpreter's
own start), each run ``--repeats`` times in turn. Writes bench/results/cli_start.json with the
median seconds of each and their ratio to ``python -c pass``; goal: at most 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import save

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "fewlabel --help": [sys.executable, "-m", "fewlabel.cli", "--help"],
    "fewlabel train --help": [sys.executable, "-m", "fewlabel.cli", "train", "--help"],
    "fewlabel train --no-such-option (error)": [sys.executable, "-m", "fewlabel.cli", "train", "--no-such-option"],
}


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    baseline = statistics.median(times["python -c pass"])
    results = {
        name: {"median_seconds": statistics.median(values), "ratio_to_python": statistics.median(values) / baseline}
        for name, values in times.items()
    }
    for name, result in results.items():
        print(f"{name}: {result['median_seconds']:.3f} s ({result['ratio_to_python']:.1f}x python -c pass)")
    save("cli_start", {"repeats": args.repeats, "results": results, "seconds": times, "goal": "at most 0.5 s"})


if __name__ == "__main__":
    main()

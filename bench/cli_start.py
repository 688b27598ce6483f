"""How long the command line takes to answer without training: ``fewlabel --help``,
``fewlabel train --help`` and an argument error, against ``python -c pass`` (the interpreter's
own start), each run ``--repeats`` times in turn. With ``--compare-src DIR`` the same commands
also run from another source tree (e.g. a checkout of an earlier commit), interleaved.
Writes bench/results/cli_start.json with the median seconds of each and their ratio to
``python -c pass``; goal: at most 0.5 s.
"""

from __future__ import annotations

import argparse
import os
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


def seconds(command: list[str], src: str | None = None) -> float:
    env = os.environ | ({"PYTHONPATH": src} if src else {})
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compare-src", default=None, help="another src/ folder to time the same commands from")
    args = parser.parse_args()
    trees = {"": None} | ({" (compared tree)": args.compare_src} if args.compare_src else {})
    times: dict[str, list[float]] = {name + tag: [] for tag in trees for name in COMMANDS}
    for _ in range(args.repeats):
        for tag, src in trees.items():
            for name, command in COMMANDS.items():
                times[name + tag].append(seconds(command, src))
    baseline = statistics.median(times["python -c pass"])
    results = {
        name: {"median_seconds": statistics.median(values), "ratio_to_python": statistics.median(values) / baseline}
        for name, values in times.items()
    }
    for name, result in results.items():
        print(f"{name}: {result['median_seconds']:.3f} s ({result['ratio_to_python']:.1f}x python -c pass)")
    config = {"repeats": args.repeats, "compare_src": args.compare_src}
    save("cli_start", {"config": config, "results": results, "seconds": times, "goal": "at most 0.5 s"})


if __name__ == "__main__":
    main()

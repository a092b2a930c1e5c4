"""How long `convox` takes to start, against a bare Python start measured side by side in the same run.

Runs `convox --version`, `convox racks --help` and `python -c pass` in turn, ROUNDS times each, and prints
the median of each, what the CLI adds over a bare interpreter, and the ratio. Goal: under 0.1 s added
(Convox's compiled CLI starts in about 0.04 s). Exits non-zero when the goal is missed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"
ROUNDS = 30
GOAL = 0.1

COMMANDS = {
    "python -c pass": [str(BIN / "python"), "-c", "pass"],
    "convox --version": [str(BIN / "convox"), "--version"],
    "convox racks --help": [str(BIN / "convox"), "racks", "--help"],
}


def once(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> int:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(ROUNDS):  # interleaved, so a busy moment of the machine falls on all alike
        for name, argv in COMMANDS.items():
            times[name].append(once(argv))
    base = statistics.median(times["python -c pass"])
    worst = 0.0
    print(f"{'command':<22} {'median s':>9} {'added s':>8} {'ratio':>6}")
    for name, values in times.items():
        median = statistics.median(values)
        worst = max(worst, median - base)
        print(f"{name:<22} {median:9.3f} {median - base:8.3f} {median / base:6.2f}")
    ok = worst < GOAL
    print(f"goal: under {GOAL} s added to a bare python start: {'met' if ok else 'MISSED'} ({worst:.3f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

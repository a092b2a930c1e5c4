"""The CLI's `.dockerignore` walk against the docker SDK's `exclude_paths`, side by side in one run.

Run: .venv/bin/python bench/source_scan.py [--files 2000] [--rounds 15]

Generates the 2,000-file app of bench/bigapp.py (with a .dockerignore of the usual kind, or none) and
lists its build context both ways, interleaved, ROUNDS times: the docker SDK's matcher (what the CLI used
before) and `cli.dockerignore.walk` (one os.scandir pass that keeps each lstat). Checks both choose the same
paths, then prints the medians, their ratio, and the median of a whole `sources.scan` with a warm hash
cache (walk, lstat, cache look-ups) for scale.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bigapp import generate  # noqa: E402
from cli import sources  # noqa: E402
from cli.source import read_dockerignore, source_files  # noqa: E402

IGNORE = "*.log\n**/*.tmp\nnode_modules\n.git\nd19\n!d19/f00019.bin\n"


def timed(fn) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def measure(app: Path, cache: Path, rounds: int) -> tuple[list[float], list[float], list[float], int]:
    """Time the SDK's selection, ours and a warm scan, interleaved; return the times and the path count."""
    from docker.utils.build import exclude_paths

    def sdk() -> list[str]:
        return sorted(exclude_paths(str(app), [*read_dockerignore(app), "!convox.yml"]))

    sources.scan(app, cache=cache)
    time.sleep(sources.HashCache.RACY + 0.1)  # past the racy window: every file is remembered
    sources.scan(app, cache=cache)
    theirs, ours, scans = [], [], []
    expected: list[str] = []
    for _ in range(rounds):
        began = time.perf_counter()
        expected = sdk()
        took = time.perf_counter() - began
        theirs.append(took)
        took, got = timed(lambda: source_files(app))
        ours.append(took)
        if got != expected:
            raise SystemExit(f"{app}: the selections differ")
        took, tree = timed(lambda: sources.scan(app, cache=cache))
        scans.append(took)
        assert isinstance(tree, sources.Tree) and tree.hashed == 0
    return theirs, ours, scans, len(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    opts = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rack-bench-scan-"))
    try:
        for label, ignore in (("no .dockerignore", None), ("a .dockerignore", IGNORE)):
            app = generate(home / "app", files=opts.files, total=opts.files * 1024)
            if ignore is not None:
                (app / ".dockerignore").write_text(ignore)
            theirs, ours, scans, paths = measure(app, home / "hashes.json", opts.rounds)
            sdk, walk = statistics.median(theirs), statistics.median(ours)
            print(
                f"{label:17} {paths:,} paths: docker SDK {sdk * 1000:6.1f} ms,"
                f" cli.dockerignore {walk * 1000:5.1f} ms, ratio {walk / sdk:4.2f};"
                f" whole scan (warm cache) {statistics.median(scans) * 1000:5.1f} ms"
            )
            shutil.rmtree(app)
            (home / "hashes.json").unlink()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

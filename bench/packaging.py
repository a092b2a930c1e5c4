"""Measure packaging a 100 MB / 2,000-file app: `convox build`'s package() against tarfile's level-9 gzip.

Run: .venv/bin/python bench/packaging.py [--rounds 3]

Times, side by side on the same generated tree (random data, as built apps' binaries and media are):
- before: the docker SDK's create_archive with gzip (tarfile's `w:gz`, level 9), what the CLI did;
- level 1: the same tar through gzip level 1;
- package(): what the CLI does now (level 1, or no gzip when a sample of the files does not compress).
Prints medians, sizes and the ratio of each to `before`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docker.utils.build import create_archive  # noqa: E402

from bench.bigapp import generate  # noqa: E402
from cli.source import _Gzip, package, source_files  # noqa: E402


def before(root: Path) -> int:
    with tempfile.TemporaryFile() as fh:
        create_archive(str(root), files=source_files(root), fileobj=fh, gzip=True)
        return os.fstat(fh.fileno()).st_size


def level1(root: Path) -> int:
    with tempfile.TemporaryFile() as fh:
        out = _Gzip(fh)
        create_archive(str(root), files=source_files(root), fileobj=out, gzip=False)
        out.close()
        return os.fstat(fh.fileno()).st_size


def now(root: Path) -> int:
    with package(root) as fh:
        return os.fstat(fh.fileno()).st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rack-bench-pack-"))
    try:
        root = generate(home / "app")
        ways = {"before (gzip 9)": before, "gzip 1": level1, "package()": now}
        times: dict[str, list[float]] = {name: [] for name in ways}
        sizes: dict[str, int] = {}
        for _ in range(opts.rounds):
            for name, way in ways.items():
                began = time.perf_counter()
                sizes[name] = way(root)
                times[name].append(time.perf_counter() - began)
        base = statistics.median(times["before (gzip 9)"])
        for name in ways:
            t = statistics.median(times[name])
            print(f"{name:16} median {t * 1000:7.0f} ms  {sizes[name] / 1e6:6.1f} MB  ratio {t / base:.2f}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

"""A generated app for benchmarks: `FROM busybox`, `COPY . /app`, N files of random (incompressible) data."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "services:\n  web:\n    build: .\n"
DOCKERFILE = "FROM busybox\nCOPY . /app\n"


def generate(root: Path, *, files: int = 2000, total: int = 100 * 1024 * 1024) -> Path:
    """Write the app into root: a manifest, a Dockerfile and `files` data files in 20 folders."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "convox.yml").write_text(MANIFEST)
    (root / "Dockerfile").write_text(DOCKERFILE)
    size = total // files
    for n in range(files):
        folder = root / f"d{n % 20:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{n:05d}.bin").write_bytes(os.urandom(size))
    return root


def change_one(root: Path, n: int) -> None:
    """Rewrite one data file (a new content of the same size)."""
    path = root / "d00" / "f00000.bin"
    data = bytearray(path.read_bytes())
    data[:8] = n.to_bytes(8, "big")
    path.write_bytes(bytes(data))

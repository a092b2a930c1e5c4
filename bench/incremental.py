"""Measure `convox build` of a 100 MB / 2,000-file app: first build, one file changed, unchanged.

Run: .venv/bin/python bench/incremental.py [--rounds 1] [--keep]

Starts a private stack (Postgres, Redis, dockerd, registry, the API under gunicorn, a Celery worker) in a
temp folder and generates two apps of the same shape (`FROM busybox`, `COPY . /app`, 2,000 files of
random data): one for each side, so neither finds the other's layers in the engine's cache. The first
build starts once the generated files are older than the CLI's hash cache's racy window (2 s), as a real
folder's are; otherwise "one file changed" would hash again the files written in the last 2 s. Before
each side's run, what the last run wrote is flushed to disk (`sync`, untimed), so neither side pays for
the other's writeback. For each scenario, side by side:
- rack: `convox build` as a user runs it (a new process: hash, send what is missing, build, follow the log);
- floor: `tar cf` of the folder, its upload to the rack's objects API, then a bare
  `DOCKER_BUILDKIT=1 docker build` of the folder and a push of the image: what any build must do with
  no incrementality at all.
Prints each scenario's medians, the ratio rack/floor and the issue's goal for it, then the last round's
parts: the CLI's (hashing, uploading, starting the build) with the worker's phases, and the floor's
(tar, upload, build, push). This app's Dockerfile only copies files, so the rack's worker writes its
image itself (pipeline/direct) and a one-file change sends one part of the copy; `RACK_DIRECT_BUILD=false`
in the environment has the engine build it instead, and `RACK_FAST_PUSH=false` gives the worker the
engine's own push.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bigapp import change_one, generate  # noqa: E402
from cli.sources import HashCache  # noqa: E402
from rack import apps  # noqa: E402
from rack.config import load_settings  # noqa: E402
from rack.context import Rack  # noqa: E402
from rack.db import Database  # noqa: E402
from rack.migrate import migrate  # noqa: E402
from rack.pipeline.engine.classic import split_image  # noqa: E402
from rack_stack import Stack  # noqa: E402

DOCKER = "/usr/bin/docker"
GOALS = {"first build": "ratio <= 1.1", "one file changed": "rack <= 3 s", "unchanged": "rack <= 1 s"}


def convox_build(stack: Stack, folder: Path, app: str) -> tuple[float, str]:
    """Time `convox build` of the folder; return the seconds and its 'sent …' line."""
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(stack.home),
        "RACK_URL": f"http://convox:{stack.password}@{stack.env['RACK_API_URL'].split('//', 1)[1]}",
    }
    began = time.perf_counter()
    marks: dict[str, float] = {}  # when the CLI's own lines ended: what it did before the worker built
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "convox"), "build", str(folder), "-a", app],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for mark, start in (
            ("hash", "Hashing source"),
            ("upload", "Uploading source"),
            ("start", "Starting"),
        ):
            if line.startswith(start) and mark not in marks:
                marks[mark] = time.perf_counter() - began
    proc.wait()
    elapsed = time.perf_counter() - began
    stdout = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"convox build failed: {stdout[-3000:]}")
    ends = list(marks.values())
    cli = " ".join(f"{k}={end - prev:.2f}" for k, end, prev in zip(marks, ends, [0.0, *ends], strict=False))
    sent = next((line for line in stdout.splitlines() if "(sent " in line), "")
    build = requests.get(
        f"{stack.env['RACK_API_URL']}/apps/{app}/builds?limit=1", auth=("convox", stack.password), timeout=30
    ).json()[0]
    reused = "reused" if "Reusing the images of build" in stdout else "built"
    phases = " ".join(f"{k}={v:.2f}" for k, v in (build.get("phases") or {}).items())
    return elapsed, f"{sent.split('(', 1)[-1].rstrip(')')}; {reused}; cli: {cli}; worker phases: {phases}"


def floor(stack: Stack, folder: Path, app: str, n: int, api, work: Path) -> tuple[float, str]:
    """Time tar + upload + bare BuildKit build + push of the folder; return the seconds and its parts."""
    registry, host = stack.env["RACK_REGISTRY"], stack.env["RACK_DOCKER_HOST"]
    tag = f"{registry}/{app}:web.F{n:09d}"
    began = time.perf_counter()
    parts: dict[str, float] = {}
    archive = work / "floor.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(folder), "."], check=True)
    parts["tar"] = time.perf_counter() - began
    with open(archive, "rb") as fh:
        resp = requests.post(
            f"{stack.env['RACK_API_URL']}/apps/{app}/objects/tmp/floor.tar",
            data=fh,
            auth=("convox", stack.password),
            timeout=600,
        )
    resp.raise_for_status()
    parts["upload"] = time.perf_counter() - began - sum(parts.values())
    argv = [DOCKER, "-H", host, "build", "--progress=plain", "--network", "host", "--tag", tag, str(folder)]
    proc = subprocess.run(argv, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"}, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"bare build failed: {proc.stdout[-2000:].decode()}{proc.stderr[-2000:].decode()}")
    parts["build"] = time.perf_counter() - began - sum(parts.values())
    for event in api.push(*split_image(tag), stream=True, decode=True):
        if "error" in event:
            raise SystemExit(f"bare push failed: {event['error']}")
    parts["push"] = time.perf_counter() - began - sum(parts.values())
    return time.perf_counter() - began, "floor: " + " ".join(f"{k}={v:.2f}" for k, v in parts.items())


def settle() -> None:
    """Write out what the last run left in the page cache, untimed, so that the disk writing it back
    (hundreds of MB each side) does not fall in the other side's time."""
    os.sync()
    time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each on two newly generated apps")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="leave the stack's folder behind")
    opts = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rack-bench-incr-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in GOALS}
    sent: dict[str, str] = {}
    parts: dict[str, str] = {}
    try:
        stack.start(services=("postgres", "redis", "dockerd", "registry", "api", "worker"))
        stack.seed_base_image()
        db = Database(stack.env["RACK_DATABASE_URL"])
        migrate(db)
        db.close()
        rack = Rack(load_settings(stack.env), enqueue_build=lambda build_id: None)
        client = stack.docker()
        for n in range(opts.rounds):
            ours, theirs = f"incr{n}", f"floor{n}"
            apps.create(rack, name=ours)
            apps.create(rack, name=theirs)
            size = opts.mb * 1024 * 1024
            mine = generate(home / f"{ours}-src", files=opts.files, total=size)
            written = time.time()
            other = generate(home / f"{theirs}-src", files=opts.files, total=size)
            # The CLI's hash cache does not trust a file changed within its racy window of hashing it, so
            # files generated just before the first build would be hashed again by the next one; a real
            # folder's files are older than that when its first build starts.
            time.sleep(max(0.0, written + HashCache.RACY + 0.1 - time.time()))
            for step, name in enumerate(GOALS):
                if name == "one file changed":
                    change_one(mine, n + 1)
                    change_one(other, n + 1)
                # alternate which side goes first, so neither always meets the engine right after the other
                if step % 2:
                    settle()
                    took, parts[name] = floor(stack, other, theirs, 10 * n + step, client.api, home)
                    times[name][1].append(took)
                    settle()
                    took, sent[name] = convox_build(stack, mine, ours)
                    times[name][0].append(took)
                else:
                    settle()
                    took, sent[name] = convox_build(stack, mine, ours)
                    times[name][0].append(took)
                    settle()
                    took, parts[name] = floor(stack, other, theirs, 10 * n + step, client.api, home)
                    times[name][1].append(took)
            shutil.rmtree(mine)
            shutil.rmtree(other)
        print(
            f"app: {opts.files} files, {opts.mb} MB of random data, FROM busybox + COPY . /app;"
            f" rounds={opts.rounds}"
        )
        for name, goal in GOALS.items():
            ours_s, floor_s = (statistics.median(t) for t in times[name])
            print(
                f"{name:17} rack {ours_s:6.2f} s  floor {floor_s:6.2f} s  ratio {ours_s / floor_s:5.2f}"
                f"  (goal: {goal})"
            )
            print(f"    rack: {sent[name]}\n    {parts[name]}")
        client.close()
        rack.close()
    finally:
        stack.stop()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

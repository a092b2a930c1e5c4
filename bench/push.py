"""Measure pushing an image whose last layer is 100 MB of new, incompressible data: the engine's push
against the stream from the engine's save into the registry (rack.pipeline.layers: what
rack.pipeline.push chooses for such an image) and, for comparison, skopeo's copy at gzip level 1.

Run: .venv/bin/python bench/push.py [--rounds 3] [--mb 100]

Starts dockerd and the registry in a temp folder; each round builds `FROM busybox` + `COPY . /app` of a
folder with one new file per way of pushing, then pushes it that way; the ways take turns going first.
Prints each way's median seconds and its ratio to the engine's push.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rack import skopeo  # noqa: E402
from rack.config import load_settings  # noqa: E402
from rack.pipeline import layers  # noqa: E402
from rack.pipeline.engine.classic import Engine, split_image  # noqa: E402
from rack_stack import Stack  # noqa: E402

DOCKER = "/usr/bin/docker"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=100)
    opts = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rack-bench-push-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home)
    ways = ["engine", "stream", "skopeo gzip 1"]
    times: dict[str, list[float]] = {way: [] for way in ways}
    try:
        stack.start(services=("dockerd", "registry"))
        stack.seed_base_image()
        env = stack.env
        registry, host = env["RACK_REGISTRY"], env["RACK_DOCKER_HOST"]
        creds = {registry: (env["RACK_REGISTRY_USERNAME"], env["RACK_REGISTRY_PASSWORD"])}
        client = stack.docker()
        engine = Engine(load_settings(env))
        src = home / "app"
        src.mkdir()
        (src / "Dockerfile").write_text("FROM busybox\nCOPY . /app\n")
        for n in range(opts.rounds):
            for way in ways[n % len(ways) :] + ways[: n % len(ways)]:
                (src / "data.bin").write_bytes(os.urandom(opts.mb * 1024 * 1024))
                tag = f"{registry}/push:r{n}-{ways.index(way)}"
                argv = [DOCKER, "-H", host, "build", "-q", "--network", "host", "-t", tag, str(src)]
                subprocess.run(argv, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin", "HOME": str(home)},
                               check=True, capture_output=True)  # fmt: skip
                began = time.perf_counter()
                if way == "engine":
                    for event in client.api.push(*split_image(tag), stream=True, decode=True):
                        if "error" in event:
                            raise SystemExit(f"push failed: {event['error']}")
                elif way == "stream":
                    layers.push(engine, tag, check=lambda: None)
                else:
                    with skopeo.authfile(creds) as auth:
                        subprocess.run(
                            ["skopeo", "copy", "--quiet", "--authfile", auth, "--src-daemon-host", host,
                             "--dest-tls-verify=false", "--dest-compress-format", "gzip",
                             "--dest-compress-level", way[-1], f"docker-daemon:{tag}", f"docker://{tag}"],
                            check=True, capture_output=True, env={**os.environ, "TMPDIR": str(home)},
                        )  # fmt: skip
                times[way].append(time.perf_counter() - began)
        client.close()
        engine.close()
        base = statistics.median(times["engine"])
        load = os.getloadavg()[0]
        print(f"push of a {opts.mb} MB new layer (random data), rounds={opts.rounds}, load {load:.1f}")
        for way in ways:
            took = statistics.median(times[way])
            each = " ".join(f"{t:.2f}" for t in times[way])
            print(f"{way:14} {took:6.2f} s  ratio {took / base:5.2f}  ({each})")
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

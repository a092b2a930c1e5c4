"""Measure the rack's overhead on a build: `run_build` of the example app against a bare SDK build + push.

Run: .venv/bin/python bench/build_overhead.py [--rounds 5] [--cold-rounds 3] [--keep]

Starts a private stack (Postgres, Redis, dockerd, registry) in a temp folder. Each round times, alternately:
- rack: upload the packaged example app as an object, create the build, `pipeline.run_build` it (extract,
  manifest, build args, build, tag, push, log to Redis, store the log, release);
- bare: the docker SDK builds the same services from the example folder with the same build args, tags the
  `image:` service and pushes the same three tags (`<registry>/<app>:<service>.<id>`).
- convox build: the `convox` command as a user runs it (a new process: package, upload, create, follow
  the log) against the API under gunicorn and a Celery worker.
Warm rounds leave the layer cache on (both hit it); cold rounds pass no-cache to both. Medians are printed
with the ratio rack/bare and the absolute overhead.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docker.utils.build import tar  # noqa: E402

from rack import apps, objects, releases  # noqa: E402
from rack.builds import record as builds  # noqa: E402
from rack.config import load_settings  # noqa: E402
from rack.context import Rack  # noqa: E402
from rack.db import Database  # noqa: E402
from rack.migrate import migrate  # noqa: E402
from rack.pipeline import run as pipeline  # noqa: E402
from rack.pipeline.engine.classic import split_image  # noqa: E402
from rack_stack import Stack  # noqa: E402

EXAMPLE = ROOT / "examples" / "myapp"
APP = "bench"
ARGS = {"GREETING": "hi", "COLOR": "blue"}
# What the example's convox.yml says, spelled out for the bare run: (service, Dockerfile) or (service, image).
BUILT = [("web", "Dockerfile"), ("worker", "Dockerfile.worker")]
IMAGES = [("tools", "busybox")]
DEADLINE_S = 170


def package(folder: Path) -> bytes:
    """Tar and gzip a folder honouring its .dockerignore, as `convox build` does."""
    lines = (folder / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    with tar(str(folder), exclude=patterns, gzip=True) as fh:
        return fh.read()


def rack_round(rack: Rack, source: bytes, *, nocache: bool) -> float:
    """Time one build through the rack, from upload to complete."""
    began = time.perf_counter()
    url = objects.put(rack, APP, "tmp/bench.tgz", io.BytesIO(source))
    row = builds.create(rack, APP, url=url, build_args=["GREETING=hi"], no_cache=nocache)
    done = pipeline.run_build(rack, row["id"], process="bench:1")
    elapsed = time.perf_counter() - began
    if done is None or done["status"] != "complete":
        raise SystemExit(f"rack build failed: {done and done['reason']}")
    return elapsed


def cli_round(stack: Stack, *, nocache: bool) -> float:
    """Time `convox build` of the example folder as a user runs it: a new process, through API and worker."""
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(stack.home),
        "RACK_URL": f"http://convox:{stack.password}@{stack.env['RACK_API_URL'].split('//', 1)[1]}",
    }
    argv = [
        str(ROOT / ".venv" / "bin" / "convox"),
        "build",
        str(EXAMPLE),
        "-a",
        APP,
        "--build-args",
        "GREETING=hi",
    ]
    began = time.perf_counter()
    proc = subprocess.run(argv + (["--no-cache"] if nocache else []), env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"convox build failed: {proc.stderr[-2000:]}")
    return elapsed


def bare_round(api, registry: str, n: int, *, nocache: bool) -> float:
    """Time the same builds, tags and pushes straight through the docker SDK."""
    began = time.perf_counter()
    tags = []
    for service, dockerfile in BUILT:
        tag = f"{registry}/{APP}:{service}.X{n:09d}"
        stream = api.build(
            path=str(EXAMPLE),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=ARGS if dockerfile == "Dockerfile" else {},
            nocache=nocache,
            rm=True,
            forcerm=True,
            network_mode="host",
            decode=True,
        )
        for event in stream:
            if "error" in event:
                raise SystemExit(f"bare build failed: {event['error']}")
        tags.append(tag)
    for service, image in IMAGES:
        tag = f"{registry}/{APP}:{service}.X{n:09d}"
        api.tag(image, *split_image(tag))
        tags.append(tag)
    for tag in tags:
        for event in api.push(*split_image(tag), stream=True, decode=True):
            if "error" in event:
                raise SystemExit(f"bare push failed: {event['error']}")
    return time.perf_counter() - began


def report(name: str, rack_times: list[float], bare_times: list[float], *, label: str = "rack") -> None:
    rack_s, bare_s = statistics.median(rack_times), statistics.median(bare_times)
    print(
        f"{name:9} rounds={len(rack_times)}  {label} median {rack_s * 1000:7.0f} ms"
        f"  bare median {bare_s * 1000:7.0f} ms"
        f"  ratio {rack_s / bare_s:.2f}  overhead {(rack_s - bare_s) * 1000:+.0f} ms"
        f"  ({label} min {min(rack_times) * 1000:.0f}, bare min {min(bare_times) * 1000:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="warm rounds (layer cache on)")
    parser.add_argument("--cold-rounds", type=int, default=3, help="rounds with no-cache")
    parser.add_argument("--keep", action="store_true", help="leave the stack's folder behind")
    opts = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rack-bench-build-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home)
    deadline = time.monotonic() + DEADLINE_S
    try:
        stack.start(services=("postgres", "redis", "dockerd", "registry", "api", "worker"))
        stack.seed_base_image()
        db = Database(stack.env["RACK_DATABASE_URL"])
        migrate(db)
        db.close()
        rack = Rack(load_settings(stack.env), enqueue_build=lambda build_id: None)
        apps.create(rack, name=APP)
        releases.set_env(rack, APP, set_vars={"COLOR": "blue"})
        source = package(EXAMPLE)
        client = stack.docker()
        api = client.api
        registry = rack.settings.registry
        rack_round(rack, source, nocache=False)  # fill the layer cache and the registry once for all
        cli_round(stack, nocache=False)
        bare_round(api, registry, 0, nocache=False)
        results: dict[str, tuple[list[float], list[float]]] = {"warm": ([], []), "cold": ([], [])}
        cli_results: dict[str, list[float]] = {"warm": [], "cold": []}
        plan = [("warm", False)] * opts.rounds + [("cold", True)] * opts.cold_rounds
        for n, (name, nocache) in enumerate(plan, start=1):
            if time.monotonic() > deadline:
                print(f"stopping early at the {DEADLINE_S}s budget")
                break
            rack_times, bare_times = results[name]
            # Alternate which goes first, so neither always meets the engine right after the other.
            if n % 2:
                rack_times.append(rack_round(rack, source, nocache=nocache))
                bare_times.append(bare_round(api, registry, n, nocache=nocache))
                cli_results[name].append(cli_round(stack, nocache=nocache))
            else:
                cli_results[name].append(cli_round(stack, nocache=nocache))
                bare_times.append(bare_round(api, registry, n, nocache=nocache))
                rack_times.append(rack_round(rack, source, nocache=nocache))
        print(
            f"example app: {len(BUILT)} built services + {len(IMAGES)} image service, {len(source)} B source"
        )
        for name, (rack_times, bare_times) in results.items():
            if rack_times and bare_times:
                report(name, rack_times, bare_times)
                report(f"{name} cli", cli_results[name], bare_times, label="convox build")
        client.close()
        rack.close()
    finally:
        stack.stop()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

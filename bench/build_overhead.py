"""Measure the rack's overhead on a build: `run_build` of the example app against a bare build + push.

Run: .venv/bin/python bench/build_overhead.py [--rounds 9] [--cold-rounds 5] [--side-rounds 2] [--keep]

Starts a private stack (Postgres, Redis, dockerd, registry, API, worker) in a temp folder. Each round times,
alternately:
- rack (buildkit, the default builder): upload the packaged example app as an object, create the build,
  `pipeline.run_build` it (extract, manifest, build args, secret files, BuildKit build with inline cache,
  tag, push, log to Redis, store the log, release); its two built services build (and its images push)
  side by side;
- bare buildkit: `DOCKER_BUILDKIT=1 /usr/bin/docker build --progress=plain` of the same services, one after
  the other, with the same build args, then the same tag and pushes (`<registry>/<app>:<service>.<id>`).
  Bare builds use the engine's own network, as a plain `docker build` does and as the rack's steps do;
- rack (classic) and bare classic: the same with RACK_BUILDER=classic against the docker SDK's classic build;
- convox build: the `convox` command as a user runs it (a new process: package, upload, create, follow
  the log) against the API under gunicorn and a Celery worker (BuildKit), against bare buildkit.
Every build gets a copy of the example with a file of its own, which only the web service's `COPY .` step
sees: a real build of a changed app each time (the rack does not take it for an earlier build with the
same inputs), and no build finds that step cached by another. Warm rounds leave the layer cache on (both
hit it for every other step); cold rounds pass no-cache to both. The rack's phases (and the bare rounds'
build and push) are printed as medians. Then a three-service
app whose services each `RUN sleep 2` is built by the rack side by side (RACK_BUILD_PARALLEL=3) and one
after another (=1). Medians are printed with the ratios and the absolute overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
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
from rack.builds.record import PHASES  # noqa: E402
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
DEADLINE_S = 240
DOCKER = "/usr/bin/docker"
SIDES = ("one", "two", "three")


def package(folder: Path) -> bytes:
    """Tar and gzip a folder honouring its .dockerignore, as `convox build` does."""
    lines = (folder / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    with tar(str(folder), exclude=patterns, gzip=True) as fh:
        return fh.read()


def rack_round(
    rack: Rack,
    source: bytes,
    *,
    nocache: bool,
    app: str = APP,
    build_args: list[str] | None = None,
    phases: list[dict] | None = None,
) -> float:
    """Time one build through the rack, from upload to complete; add its phase timings to `phases`."""
    began = time.perf_counter()
    url = objects.put(rack, app, "tmp/bench.tgz", io.BytesIO(source))
    args = ["GREETING=hi"] if build_args is None else build_args
    row = builds.create(rack, app, url=url, build_args=args, no_cache=nocache)
    done = pipeline.run_build(rack, row["id"], process="bench:1")
    elapsed = time.perf_counter() - began
    if done is None or done["status"] != "complete":
        raise SystemExit(f"rack build failed: {done and done['reason']}")
    if phases is not None:
        phases.append({**done["phases"], "total": elapsed})
    return elapsed


def cli_round(stack: Stack, folder: Path, *, nocache: bool) -> float:
    """Time `convox build` of the example folder as a user runs it: a new process, through API and worker."""
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(stack.home),
        "RACK_URL": f"http://convox:{stack.password}@{stack.env['RACK_API_URL'].split('//', 1)[1]}",
    }
    argv = [
        str(ROOT / ".venv" / "bin" / "convox"),
        "build",
        str(folder),
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


def bare_round(api, registry: str, folder: Path, n: int, *, nocache: bool, phases: list[dict]) -> float:
    """Time the same builds, tags and pushes straight through the docker SDK."""
    began = time.perf_counter()
    tags = []
    for service, dockerfile in BUILT:
        tag = f"{registry}/{APP}:{service}.X{n:09d}"
        stream = api.build(
            path=str(folder),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=ARGS if dockerfile == "Dockerfile" else {},
            nocache=nocache,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for event in stream:
            if "error" in event:
                raise SystemExit(f"bare build failed: {event['error']}")
        tags.append(tag)
    built = time.perf_counter()
    tag_and_push(api, registry, tags, suffix=f"X{n:09d}")
    return _split(phases, began, built)


def bare_buildkit_round(
    api, docker_host: str, registry: str, folder: Path, n: int, *, nocache: bool, phases: list[dict]
) -> float:
    """Time the same builds with the docker client's BuildKit, one after another, then tag and push."""
    began = time.perf_counter()
    tags = []
    for service, dockerfile in BUILT:
        tag = f"{registry}/{APP}:{service}.K{n:09d}"
        argv = [DOCKER, "-H", docker_host, "build", "--progress=plain"]  # the engine's own network
        argv += ["--file", str(folder / dockerfile), "--tag", tag]
        for name, value in (ARGS if dockerfile == "Dockerfile" else {}).items():
            argv += ["--build-arg", f"{name}={value}"]
        argv += (["--no-cache"] if nocache else []) + [str(folder)]
        proc = subprocess.run(
            argv, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"}, capture_output=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"bare BuildKit build failed: {proc.stdout[-2000:].decode()}")
        tags.append(tag)
    built = time.perf_counter()
    tag_and_push(api, registry, tags, suffix=f"K{n:09d}")
    return _split(phases, began, built)


def _split(phases: list[dict], began: float, built: float) -> float:
    """Record a bare round's build and push times as the rack records its phases; return the total."""
    now = time.perf_counter()
    phases.append({"build": built - began, "push": now - built, "total": now - began})
    return now - began


def changed_copy(home: Path, name: str) -> Path:
    """Copy the example app with a file of its own: a change that only its `COPY .` step sees.

    Every build of a round gets its own copy, so each one is real (not the rack's reuse of an earlier
    build with the same inputs) and none finds the step that copies the change cached by another.
    """
    folder = home / "rounds" / name
    shutil.copytree(EXAMPLE, folder)
    (folder / "change.txt").write_text(f"{name} {random.random()}\n")
    return folder


def tag_and_push(api, registry: str, tags: list[str], *, suffix: str) -> None:
    """Tag the `image:` services as the rack does, then push every tag, as the rack's pipeline would."""
    for service, image in IMAGES:
        tag = f"{registry}/{APP}:{service}.{suffix}"
        api.tag(image, *split_image(tag))
        tags.append(tag)
    for tag in tags:
        for event in api.push(*split_image(tag), stream=True, decode=True):
            if "error" in event:
                raise SystemExit(f"bare push failed: {event['error']}")


def sides_round(rack: Rack, folder: Path, *, parallel: int) -> float:
    """Time the rack building the three-service app with `parallel` builds at a time (fresh steps each)."""
    (folder / "stamp").write_text(f"{random.random()}\n")
    sided = Rack(dataclasses.replace(rack.settings, build_parallel=parallel), enqueue_build=lambda b: None)
    try:
        return rack_round(sided, package(folder), nocache=False, app=f"{APP}-sides", build_args=[])
    finally:
        sided.close()


def sides_app(home: Path) -> Path:
    folder = home / "sides"
    services = "".join(
        f"  {name}:\n    build:\n      path: .\n      manifest: {name}.Dockerfile\n" for name in SIDES
    )
    (folder).mkdir()
    (folder / "convox.yml").write_text(f"services:\n{services}")
    (folder / ".dockerignore").write_text("")
    for name in SIDES:
        (folder / f"{name}.Dockerfile").write_text(
            f"FROM busybox\nCOPY stamp /stamp\nRUN echo {name} && sleep 2\n"
        )
    return folder


def report(
    name: str, times: list[float], base_times: list[float], *, label: str = "rack", base: str = "bare"
) -> None:
    median, base_median = statistics.median(times), statistics.median(base_times)
    print(
        f"{name:9} rounds={len(times)}  {label} median {median * 1000:7.0f} ms"
        f"  {base} median {base_median * 1000:7.0f} ms"
        f"  ratio {median / base_median:.2f}  overhead {(median - base_median) * 1000:+.0f} ms"
        f"  ({label} min {min(times) * 1000:.0f}, {base} min {min(base_times) * 1000:.0f})"
    )


def report_phases(name: str, seen: list[dict]) -> None:
    """Print the median of each phase the rack's builds recorded, and what no phase accounts for."""
    keys = sorted({k for row in seen for k in row} - {"total"}, key=lambda k: (k not in PHASES, k))
    medians = {k: statistics.median(row.get(k, 0.0) for row in seen) for k in [*keys, "total"]}
    rest = medians["total"] - sum(medians[k] for k in keys)
    shown = "  ".join(f"{k} {medians[k] * 1000:.0f}" for k in keys)
    print(
        f"{name:17} phases (median ms): {shown}  outside them {rest * 1000:.0f}"
        f"  total {medians['total'] * 1000:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # A warm round takes half a second: on a shared 2-core machine a median needs this many to settle.
    parser.add_argument("--rounds", type=int, default=9, help="warm rounds (layer cache on)")
    parser.add_argument("--cold-rounds", type=int, default=5, help="rounds with no-cache")
    parser.add_argument("--side-rounds", type=int, default=2, help="rounds of the three-service app")
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
        classic = Rack(dataclasses.replace(rack.settings, builder="classic"), enqueue_build=lambda b: None)
        apps.create(rack, name=APP)
        apps.create(rack, name=f"{APP}-sides")
        releases.set_env(rack, APP, set_vars={"COLOR": "blue"})
        client = stack.docker()
        api = client.api
        registry, host = rack.settings.registry, rack.settings.docker_host
        seen: dict[tuple[str, str], list[dict]] = {}

        def phased(kind: str, nocache: bool) -> list[dict]:
            return seen.setdefault(("cold" if nocache else "warm", kind), [])

        rounds = {
            "buildkit": lambda f, n, nocache: rack_round(
                rack, package(f), nocache=nocache, phases=phased("buildkit", nocache)
            ),
            "bare buildkit": lambda f, n, nocache: bare_buildkit_round(
                api, host, registry, f, n, nocache=nocache, phases=phased("bare buildkit", nocache)
            ),
            "classic": lambda f, n, nocache: rack_round(
                classic, package(f), nocache=nocache, phases=phased("classic", nocache)
            ),
            "bare classic": lambda f, n, nocache: bare_round(
                api, registry, f, n, nocache=nocache, phases=phased("bare classic", nocache)
            ),
            "convox build": lambda f, n, nocache: cli_round(stack, f, nocache=nocache),
        }
        for kind, run in rounds.items():  # fill the layer cache and the registry once for all
            run(changed_copy(home, f"{kind}-0"), 0, False)
        seen.clear()
        times: dict[tuple[str, str], list[float]] = {}
        plan = [("warm", False)] * opts.rounds + [("cold", True)] * opts.cold_rounds
        for n, (name, nocache) in enumerate(plan, start=1):
            if time.monotonic() > deadline:
                print(f"stopping early at the {DEADLINE_S}s budget")
                break
            # Alternate the order, so none always meets the engine right after the same other.
            order = list(rounds.items()) if n % 2 else list(reversed(rounds.items()))
            for kind, run in order:
                folder = changed_copy(home, f"{kind}-{n}")
                times.setdefault((name, kind), []).append(run(folder, n, nocache))
        print(
            f"example app: {len(BUILT)} built services + {len(IMAGES)} image service, "
            f"{len(package(EXAMPLE))} B source, a change of its own in each build"
        )
        for name in ("warm", "cold"):
            if (name, "buildkit") in times:
                report(f"{name} bk", times[name, "buildkit"], times[name, "bare buildkit"])
                report(f"{name} cl", times[name, "classic"], times[name, "bare classic"])
                report(
                    f"{name} cli", times[name, "convox build"], times[name, "bare buildkit"], label="convox"
                )
        for (name, kind), rows in seen.items():
            report_phases(f"{name} {kind}", rows)
        folder = sides_app(home)
        sides_round(rack, folder, parallel=3)  # the first build of the app pays for its first push
        side, serial = [], []
        for n in range(opts.side_rounds):
            for parallel, into in [(3, side), (1, serial)] if n % 2 == 0 else [(1, serial), (3, side)]:
                into.append(sides_round(rack, folder, parallel=parallel))
        if side:
            report("sides", side, serial, label="side by side", base="one after another")
        client.close()
        classic.close()
        rack.close()
    finally:
        stack.stop()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

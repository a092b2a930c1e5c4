"""Scaling out: builds per minute with 1, 2 and 3 workers, and a cold worker's build of an unchanged app.

Run: .venv/bin/python bench/scale_out.py [--builds 9] [--wait 5] [--keep]

Starts a private stack in a temp folder (Postgres, Redis, dockerd, registry on loopback) and four worker
hosts on this machine (rack_stack.hosts: each host's dockerd in a network namespace of its own). Builds wait
rather than compute (`RUN sleep`), so the machine's two cores are not what limits them; each build is of
an app of its own, so the per-app running limit does not either.

1. Throughput: the same `--builds` builds with 1, 2, then 3 workers (on hosts 0-2), timed from the first
   submission to the last build's end; prints builds per minute and the ratio to one worker (goal: 3
   workers >= 2.8x).
2. The cache follows the app: an app's first build on host 0, then the same, unchanged app built by a
   worker on host 3, which never built anything; prints the second build's time over the first's (goal:
   <= 0.25), both timed from submission to end.
Exit status 1 if a build failed (the ratios are printed either way).
"""

from __future__ import annotations

import argparse
import io
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The checkout first, and not this folder: bench/packaging.py would shadow the `packaging` library.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent)]

from rack import apps, objects  # noqa: E402
from rack.builds import record  # noqa: E402
from rack.config import load_settings  # noqa: E402
from rack.context import Rack  # noqa: E402
from rack.db import Database  # noqa: E402
from rack.migrate import migrate  # noqa: E402
from rack_api.queue import enqueue_build_for  # noqa: E402
from rack_stack import Stack  # noqa: E402
from rack_stack.hosts import Hosts  # noqa: E402
from tests.helpers import start_worker, tarball, worker_env_for  # noqa: E402


def source(registry: str, step: str) -> bytes:
    return tarball(
        {
            "convox.yml": "services:\n  web:\n    build: .\n",
            # ARG BUILD_ID (passed per build where asked) makes every build's step its own.
            "Dockerfile": f"FROM {registry}/busybox:latest\nARG BUILD_ID\nRUN {step}\n",
        }
    )


def submit(rack: Rack, app: str, body: bytes, *, unique: bool) -> str:
    if app not in {a["name"] for a in apps.list_all(rack)}:
        apps.create(rack, name=app)
    key = f"tmp/src-{secrets.token_hex(4)}.tgz"  # an upload per build: a build's source goes when it ends
    objects.put_bytes_stream(rack, app, key, io.BytesIO(body))
    args = ["BUILD_ID"] if unique else []
    return record.create(rack, app, url=f"object://{app}/{key}", build_args=args)["id"]


def wait_all(rack: Rack, ids: dict[str, str], *, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [record.get(rack, app, build_id) for build_id, app in ids.items()]
        if all(r["status"] in ("complete", "failed") for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise SystemExit(f"builds not done after {timeout}s: {[r['status'] for r in rows]}")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=9)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds each build's step waits")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rack-bench-scale-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home / "stack", fast=True)
    stack.start(("postgres", "redis", "dockerd", "registry"))
    stack.seed_base_image()  # busybox in the registry: every host takes its FROM from there
    db = Database(stack.env["RACK_DATABASE_URL"])
    migrate(db)
    db.close()
    hosts = Hosts(home / "hosts", count=4, registry_port=stack.ports["registry"])
    hosts.start()
    objects_dir = home / "objects"
    env = worker_env_for(
        stack.env,
        storage=f"file://{objects_dir}",
        registry=hosts.registry,
        heartbeat_interval=2,
        heartbeat_timeout=20,
    )
    rack = Rack(load_settings(env), enqueue_build=enqueue_build_for(load_settings(env)))
    failed = 0
    try:
        rates = {}
        for count in (1, 2, 3):
            workers = [
                start_worker(
                    {**env, "RACK_DOCKER_HOST": hosts.docker_host(n)}, name=f"w{count}-{n}", log_dir=home
                )
                for n in range(count)
            ]
            try:
                began = time.monotonic()
                ids = {
                    submit(
                        rack, f"s{count}-{i}", source(hosts.registry, f"sleep {args.wait}"), unique=True
                    ): (f"s{count}-{i}")
                    for i in range(args.builds)
                }
                rows = wait_all(rack, ids, timeout=60 + args.builds * (args.wait + 20))
                elapsed = time.monotonic() - began
            finally:
                for worker in workers:
                    worker.stop()
            failed += sum(r["status"] != "complete" for r in rows)
            rates[count] = args.builds / elapsed * 60
            print(
                f"{count} worker(s): {args.builds} builds in {elapsed:.1f} s = {rates[count]:.1f} builds/min"
            )
        for count in (2, 3):
            print(f"scaling {count} workers / 1: {rates[count] / rates[1]:.2f}x")

        body = source(hosts.registry, f"sleep {args.wait * 2} && echo layer > /layer")
        timings = []
        for n in (0, 3):  # host 3's engine never built anything
            worker = start_worker(
                {**env, "RACK_DOCKER_HOST": hosts.docker_host(n)}, name=f"c{n}", log_dir=home
            )
            try:
                began = time.monotonic()
                build_id = submit(rack, "cached", body, unique=False)
                [row] = wait_all(rack, {build_id: "cached"}, timeout=120 + args.wait * 4)
                timings.append(time.monotonic() - began)
            finally:
                worker.stop()
            failed += row["status"] != "complete"
        print(f"first build on host 0: {timings[0]:.1f} s; unchanged app on cold host 3: {timings[1]:.1f} s")
        print(f"cold worker's second build / first: {timings[1] / timings[0]:.2f} (goal <= 0.25)")
        print(f"scaling goal 3 workers >= 2.8x: {'met' if rates[3] / rates[1] >= 2.8 else 'not met'}")
        if failed:
            print(f"{failed} build(s) failed; logs in {home}")
    finally:
        rack.close()
        hosts.stop()
        stack.stop()
        if not args.keep and not failed:
            shutil.rmtree(home, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

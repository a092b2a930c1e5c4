"""Load test: 50 builds from 10 clients at once, 20 log followers, one worker SIGKILLed and restarted.

Run: .venv/bin/python bench/load.py [--builds 50] [--clients 10] [--followers 20] [--keep]

Starts a private stack in a temp folder (Postgres, Redis, dockerd, registry, the API under gunicorn, the
stack's worker `worker1` and a second worker `worker2`), all on loopback. Each build is a small
`FROM busybox` app whose RUN step prints 40 numbered lines (a different step per build, so none comes from
the cache). Every request goes over HTTP as a client's would: upload the tarball, create the build, follow
its log (half the followers over the websocket, half as chunked text, resuming by offset after a drop).
Once a few builds are done, worker1 (its main process and pool child) is SIGKILLed mid-build and
restarted. When every build is final, the counts are printed; the exit status is 1 if an expectation
failed: a build not final by the deadline, a failed build without a reason or failed for another reason
than the lost worker, an API error other than 503, a complete build missing a line, or a follower whose
log differs from the stored log of a complete build.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import websocket  # noqa: E402

from rack_stack import Stack  # noqa: E402
from tests.helpers import rack_env, start_worker  # noqa: E402

APP = "load"
LINES = 40
# Short enough to see worker-lost within the run, long enough for a busy 2-core box to keep beating.
SETTINGS = {"RACK_HEARTBEAT_INTERVAL": "1", "RACK_HEARTBEAT_TIMEOUT": "10", "RACK_QUEUE_EXPIRY": "240"}
DEADLINE_S = 270  # for every build to be final, from the first submission


def source(n: int, token: str) -> bytes:
    """Return the tarball of build `n`: a manifest and a Dockerfile whose RUN step prints LINES lines."""
    step = f'for i in $(seq 1 {LINES}); do echo "build {n} {token} line $i"; done'
    files = {"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": f"FROM busybox\nRUN {step}\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text.encode()), 0o644
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


class Api:
    """HTTP calls to the rack, counting every answer that is not a success by its status."""

    def __init__(self, url: str, password: str) -> None:
        self.url, self.auth = url, ("convox", password)
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.local = threading.local()

    def count(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1

    def call(self, method: str, path: str, *, retries: int = 5, **kw) -> requests.Response | None:
        """Make a request, retrying a 503 or a refused connection; None if it never succeeded."""
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        for attempt in range(retries + 1):
            try:
                resp = session.request(method, self.url + path, auth=self.auth, timeout=60, **kw)
            except requests.RequestException as exc:
                self.count(f"connection: {type(exc).__name__}")
            else:
                if resp.status_code < 400:
                    return resp
                self.count(str(resp.status_code))
                if resp.status_code != 503:
                    print(f"  {method} {path}: {resp.status_code} {resp.text.strip()[:200]}")
                    return None
            time.sleep(min(0.5 * 2**attempt, 4))
        return None


class Follower(threading.Thread):
    """Follow one build's log to its end, resuming by byte offset if the connection drops."""

    def __init__(self, api: Api, ready: threading.Event, slot: dict, *, ws: bool) -> None:
        super().__init__(daemon=True)
        self.api, self.ready, self.slot, self.ws = api, ready, slot, ws
        self.data = bytearray()
        self.resumes = 0
        self.ended = False
        self.start()

    def run(self) -> None:
        self.ready.wait()
        build_id = self.slot.get("id")
        if not build_id:
            return
        path = f"/apps/{APP}/builds/{build_id}/logs"
        for _ in range(20):
            try:
                self.ended = self._ws(path) if self.ws else self._chunked(path)
            except (requests.RequestException, websocket.WebSocketException, OSError) as exc:
                self.api.count(f"follower: {type(exc).__name__}")
            if self.ended:
                return
            self.resumes += 1
            time.sleep(0.5)

    def _chunked(self, path: str) -> bool:
        params = {"offset": len(self.data)}
        with requests.get(
            self.api.url + path, params=params, auth=self.api.auth, stream=True, timeout=(5, 120)
        ) as resp:
            if resp.status_code != 200:
                self.api.count(str(resp.status_code))
                return False
            for chunk in resp.iter_content(chunk_size=None):
                self.data += chunk
        return True

    def _ws(self, path: str) -> bool:
        auth = requests.auth._basic_auth_str(*self.api.auth)
        url = self.api.url.replace("http", "ws", 1) + path
        conn = websocket.create_connection(
            url, header=[f"Authorization: {auth}", f"Offset: {len(self.data)}"], timeout=120
        )
        try:
            while True:
                opcode, data = conn.recv_data()
                if opcode == websocket.ABNF.OPCODE_BINARY and data == b"":
                    return True
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return False
                self.data += data
        finally:
            conn.close()


def submit(api: Api, n: int, token: str, slot: dict, ready: threading.Event) -> None:
    """Upload build n's source and create the build; record its id in `slot`."""
    try:
        resp = api.call("POST", f"/apps/{APP}/objects/tmp/b{n}.tgz", data=source(n, token))
        if resp is None:
            return
        resp = api.call("POST", f"/apps/{APP}/builds", data={"url": resp.json()["Url"]})
        if resp is not None:
            slot["id"] = resp.json()["id"]
            slot["submitted"] = time.monotonic()
    finally:
        ready.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--followers", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="leave the stack's folder behind")
    opts = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rack-load-", dir="/tmp"))
    home.chmod(0o755)
    os.environ.update(SETTINGS)  # the stack's API and worker inherit them
    stack = Stack(home, fast=True)
    worker2 = None
    began = time.monotonic()
    try:
        stack.start()
        stack.seed_base_image()
        stack.start(["api", "worker"])
        worker2 = start_worker(rack_env(stack.env), name="worker2", log_dir=home)
        api = Api(stack.env["RACK_API_URL"], stack.password)
        if api.call("POST", "/apps", data={"name": APP}) is None:
            print("could not create the app")
            return 1
        print(f"stack up in {time.monotonic() - began:.1f}s: API (gunicorn 2x16 threads), 2 workers")
        return run(stack, api, opts)
    finally:
        if worker2 is not None:
            worker2.stop()
        stack.stop()
        if opts.keep:
            print(f"stack folder kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run(stack: Stack, api: Api, opts) -> int:
    token = secrets.token_hex(3)
    slots = [{} for _ in range(opts.builds)]
    ready = [threading.Event() for _ in range(opts.builds)]
    step = opts.builds / max(1, opts.followers)
    followed = sorted({int(i * step) for i in range(opts.followers)})
    followers = {n: Follower(api, ready[n], slots[n], ws=k % 2 == 0) for k, n in enumerate(followed)}

    start = threading.Barrier(opts.clients)

    def client(k: int) -> None:
        start.wait()
        for n in range(k, opts.builds, opts.clients):
            submit(api, n, token, slots[n], ready[n])

    t0 = time.monotonic()
    clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(opts.clients)]
    for c in clients:
        c.start()
    kill = Killer(stack, api, t0, followed=lambda: {slots[n].get("id") for n in followed})
    for c in clients:
        c.join()
    submitted = time.monotonic() - t0
    ids = [slot["id"] for slot in slots if "id" in slot]

    # Wait until every build is final (the killer meanwhile kills and restarts worker1).
    rows: dict[str, dict] = {}
    while time.monotonic() - t0 < DEADLINE_S:
        resp = api.call("GET", f"/apps/{APP}/builds", params={"limit": 1000})
        if resp is not None:
            rows = {row["id"]: row for row in resp.json()}
            kill.watch(rows)
            if all(rows.get(i, {}).get("status") in ("complete", "failed") for i in ids) and kill.done:
                break
        time.sleep(0.5)
    final_at = time.monotonic() - t0
    kill.join(30)
    for follower in followers.values():
        follower.join(max(0.1, 30 - (time.monotonic() - t0 - final_at)))

    # What each complete build stored, against its own lines and what its followers received.
    status = Counter(rows.get(i, {}).get("status", "missing") for i in ids)
    failed = Counter(
        rows[i]["reason"].split(": ", 1)[0] or "(no reason)" for i in ids if status_of(rows, i) == "failed"
    )
    stored: dict[str, bytes] = {}
    missing_lines = 0
    for n, slot in enumerate(slots):
        build_id = slot.get("id")
        if build_id and status_of(rows, build_id) in ("complete", "failed"):
            resp = api.call("GET", f"/apps/{APP}/objects/build/{build_id}/logs")
            stored[build_id] = resp.content if resp is not None else b""
            if status_of(rows, build_id) == "complete":
                text = stored[build_id].decode(errors="replace")
                missing_lines += sum(f"build {n} {token} line {i}\n" not in text for i in range(1, LINES + 1))
    differing = unfinished = differing_failed = 0
    for n, follower in followers.items():
        build_id = slots[n].get("id")
        if not build_id:
            continue
        if not follower.ended:
            unfinished += 1
        elif bytes(follower.data) != stored.get(build_id):
            if status_of(rows, build_id) == "complete":
                differing += 1
            else:
                differing_failed += 1

    ws_count = sum(f.ws for f in followers.values())
    print(f"builds: {opts.builds} by {opts.clients} clients, submitted in {submitted:.1f}s, "
          f"all final after {final_at:.1f}s ({len(ids) / final_at * 60:.0f} builds/min)")  # fmt: skip
    print(f"  submitted {len(ids)}, complete {status['complete']}, failed {status['failed']}, "
          f"not final {len(ids) - status['complete'] - status['failed']}")  # fmt: skip
    for reason, count in sorted(failed.items()):
        print(f"  failed {reason}: {count}")
    print(f"  complete builds missing one of their {LINES} lines in the stored log: {missing_lines}")
    print(f"kill: {kill.summary()}")
    print(f"api errors by status: {dict(sorted(api.errors.items())) or 'none'}")
    print(f"followers: {len(followers)} ({ws_count} websocket, {len(followers) - ws_count} chunked), "
          f"resumed {sum(f.resumes for f in followers.values())} times, not ended {unfinished}")  # fmt: skip
    print(f"  differing from the stored log: complete builds {differing}, failed builds {differing_failed}")

    problems = []
    if len(ids) != opts.builds:
        problems.append(f"{opts.builds - len(ids)} builds were not submitted")
    if status["complete"] + status["failed"] != len(ids):
        problems.append("builds not final by the deadline")
    if failed.get("(no reason)"):
        problems.append("failed builds without a reason")
    if set(failed) - {"worker-lost"} or failed.get("worker-lost", 0) > kill.kills:
        problems.append(f"unexpected failures: {dict(failed)}")
    if set(api.errors) - {"503"}:
        problems.append("API errors other than 503")
    if missing_lines or differing or unfinished:
        problems.append("lost log lines")
    if not kill.kills:
        problems.append("no worker was killed mid-build")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def status_of(rows: dict[str, dict], build_id: str) -> str:
    return rows.get(build_id, {}).get("status", "missing")


class Killer(threading.Thread):
    """Once a few builds are complete, SIGKILL worker1 mid-build, then restart it."""

    AFTER_COMPLETE = 8

    def __init__(self, stack: Stack, api: Api, t0: float, *, followed: Callable[[], set]) -> None:
        super().__init__(daemon=True)
        self.stack, self.api, self.t0 = stack, api, t0
        self.followed = followed  # a followed victim shows that its followers end too
        self.kills = 0
        self.victim: str | None = None
        self.killed_at = self.lost_after = self.restart_took = None
        self.rows: dict[str, dict] = {}
        self.changed = threading.Condition()
        self.done = False
        self.start()

    def watch(self, rows: dict[str, dict]) -> None:
        """Take the latest build list (the main loop polls it)."""
        with self.changed:
            self.rows = rows
            self.changed.notify()
        victim = rows.get(self.victim or "")
        if victim and victim["status"] != "running" and self.lost_after is None and self.killed_at:
            self.lost_after = time.monotonic() - self.killed_at
            self.victim_row = victim

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.done = True

    def _run(self) -> None:
        worker = self.stack.services["worker"]
        deadline = time.monotonic() + DEADLINE_S / 2
        while time.monotonic() < deadline:
            with self.changed:
                self.changed.wait(1)
                rows = list(self.rows.values())
            complete = sum(r["status"] == "complete" for r in rows)
            running = [r for r in rows if r["status"] == "running" and r["process"].startswith("worker1@")]
            if complete >= self.AFTER_COMPLETE and running:
                break
        else:
            return
        pid = worker.pid()
        followed = self.followed()
        self.victim = min(running, key=lambda r: r["id"] not in followed)["id"]
        os.killpg(pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        self.kills = 1
        while worker.pid() is not None:
            time.sleep(0.05)
        time.sleep(1)
        began = time.monotonic()
        self.stack.start(["worker"])
        self.restart_took = time.monotonic() - began

    def summary(self) -> str:
        if not self.kills:
            return "no running build on worker1 was found to kill"
        row = getattr(self, "victim_row", None)
        outcome = f"{row['status']} {row['reason'][:40]!r}" if row else "not final"
        lost = f"{self.lost_after:.1f}s" if self.lost_after is not None else "never"
        return (
            f"worker1 SIGKILLed {self.killed_at - self.t0:.1f}s in, running build {self.victim}"
            f" ({'followed' if self.victim in self.followed() else 'not followed'});"
            f" that build {outcome} {lost} after the kill; worker1 back in {self.restart_took or 0:.1f}s"
        )


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for tests and benchmarks: real rack processes (Celery workers, the API under gunicorn) as
subprocesses, waiting for a condition, Basic auth headers, tarballs, running a built image.

Each process runs in its own session, so `kill()` reaches it and every child it forked (Celery's pool
processes) at once, the way a host losing power or the OOM killer would take them.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from rack import objects
from rack.builds import record as builds
from rack.context import Rack
from rack.ids import new_id
from rack.logs.stream import BuildLog
from rack.sql import builds as sql

CHECKOUT = Path(__file__).resolve().parents[1]
BIN = CHECKOUT / ".venv" / "bin"
# Short enough that a lost worker is noticed in seconds, long enough that a busy 2-core box keeps beating.
FAST_HEARTBEAT = {"heartbeat_interval": 1, "heartbeat_timeout": 5}


def rack_env(base: Mapping[str, str], **settings: str | int) -> dict[str, str]:
    """Return os.environ with the stack's RACK_* variables and `settings` (`heartbeat_timeout=5`) on top."""
    env = {**os.environ, **base, "PYTHONUNBUFFERED": "1", "RACK_KEEP_SOURCES": "true"}  # as conftest.settings
    env.update({f"RACK_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def worker_env_for(stack_env: Mapping[str, str], *, storage: str, **settings: str | int) -> dict[str, str]:
    """Return the environment of workers under test: a broker of their own (Redis db 1), emptied.

    The `rack` fixture flushes db 0 before each test, which would also drop Celery's queue bindings
    under running workers; db 1 keeps the queue apart, and emptying it drops tasks of earlier tests.
    """
    import redis

    broker = stack_env["RACK_REDIS_URL"].rsplit("/", 1)[0] + "/1"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.close()
    return rack_env(stack_env, storage=storage, broker_url=broker, **settings)


class Workers:
    """Start named workers (in parallel, as they take seconds each) and stop them all at the end."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.started: list[Proc] = []

    def start(self, *names: str) -> list[Proc]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(names)) as pool:
            futures = [pool.submit(start_worker, self.env, name=n, log_dir=self.log_dir) for n in names]
        # Keep every worker that came up, so __exit__ stops it even if another one failed.
        self.started += [f.result() for f in futures if f.exception() is None]
        return [f.result() for f in futures]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self.started:
            proc.stop()


class Proc:
    """A rack process started by a test, with its output in `log`."""

    def __init__(self, name: str, argv: list, env: Mapping[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab", buffering=0) as out:
            self.popen = subprocess.Popen(
                [str(a) for a in argv],
                env=dict(env),
                cwd=CHECKOUT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def group(self) -> list[int]:
        """Return the pids of every live process of this one's group (itself and its forks)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[0] != "Z" and int(stat[2]) == self.pid:  # state, ppid, pgrp
                found.append(int(entry.name))
        return found

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 15) -> None:
        """Send `sig` to the whole process group and wait until every member has exited."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while self.alive() or self.group():
            if time.monotonic() > deadline:
                os.killpg(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), or by SIGKILL after a while."""
        if self.alive() or self.group():
            self.kill(signal.SIGTERM, timeout=20)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, *, timeout: float = 30, start: int = 0) -> None:
        """Wait until `needle` shows in the log (after byte `start`); fail if the process dies first."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log, "rb") as f:
                f.seek(start)
                if needle.encode() in f.read():
                    return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {needle!r} after {timeout}s:\n{self.text()[-3000:]}")
            time.sleep(0.05)


def make_build(rack, app: str, *, status: str = "complete", reason: str = "", **fields) -> dict:
    """Record a finished build (with a manifest) as a worker would leave it."""
    with rack.db.transaction() as conn:
        row = sql.insert(
            conn, id=new_id("B"), app=app, source_url="", options={}, description="built", git_sha=""
        )
        fields = {"manifest": "services:\n  web:\n    build: .\n", **fields}
        return sql.finish(conn, id=row["id"], status=status, reason=reason, fields=fields)


def wait_for(predicate, *, timeout: float = 10, what: str = "the condition"):
    """Wait until `predicate()` is truthy and return its value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def start_worker(env: Mapping[str, str], *, name: str, log_dir: Path, concurrency: int = 1) -> Proc:
    """Start a Celery worker of the rack named `name@<host>` and wait until it is ready."""
    argv = [
        BIN / "celery", "-A", "rack_worker.worker", "worker", "--loglevel", "INFO",
        "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
        "--without-mingle", "--without-gossip",  # seconds of start-up spent looking for neighbours
    ]  # fmt: skip
    proc = Proc(name, argv, env, log_dir / f"{name}.log")
    proc.wait_for_log(" ready.")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(env: Mapping[str, str], *, log_dir: Path, port: int | None = None) -> Proc:
    """Start the API under gunicorn (gevent workers, as production); wait until it answers; `.url` is set."""
    port = port or free_port()
    argv = [
        BIN / "gunicorn",
        "--config",
        "python:rack_api.server",
        "--bind",
        f"127.0.0.1:{port}",
        "rack_api.wsgi:app",
    ]
    proc = Proc("api", argv, env, log_dir / "api.log")
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while not _answers(proc.url):  # type: ignore[attr-defined]
        if not proc.alive() or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the API did not come up:\n{proc.text()[-3000:]}")
        time.sleep(0.1)
    return proc


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/check", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def tarball(files: Mapping[str, str | bytes], *, gzip: bool = True) -> bytes:
    """Return a gzipped (or plain) tarball of `files` (name to content), as `convox build` sends a folder."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def basic(password: str, user: str = "convox") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def registry_open(settings, path: str, *, method: str = "GET", accept: str = ""):
    """Open `/v2/<path>` of the rack's registry with the rack's registry credentials."""
    from rack_stack.registry import request

    headers = {"Accept": accept} if accept else {}
    req = request(
        settings.registry, path, username=settings.registry_username,
        password=settings.registry_password, method=method, headers=headers,
    )  # fmt: skip
    return urllib.request.urlopen(req, timeout=10)


def run_image(client, image: str, *command: str, entrypoint: bool = True) -> str:
    """Run an image to its end with no network and return what it printed (stdout and stderr).

    The container's log is read after it has exited: docker-py's attached `containers.run` sometimes
    returns nothing for a container that exits at once.
    """
    import docker.errors

    kw = {}
    if command:
        kw = {"entrypoint": list(command)} if entrypoint else {"command": list(command)}
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:  # in the registry only (an import never goes through the engine)
        client.images.pull(image)
    container = client.containers.create(image, network_mode="none", **kw)
    try:
        container.start()
        container.wait(timeout=120)
        return container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)


def printed(stack, image: str, *command: str) -> str:
    """Run an image of the stack's engine once with no network and return what it printed."""
    client = stack.docker()
    try:
        return run_image(client, image, *command)
    finally:
        client.close()


def workers_enqueue(rack, monkeypatch, stack_env: Mapping[str, str], *, storage: str, **settings) -> dict:
    """Return the environment of workers under test and make `rack` enqueue builds on their broker."""
    from rack.config import load_settings
    from rack_api.queue import enqueue_build_for

    env = worker_env_for(stack_env, storage=storage, **settings)
    monkeypatch.setattr(rack, "enqueue_build", enqueue_build_for(load_settings(env)))
    return env


class SimBuild:
    """A build driven by the test the way a worker drives one: running, lines into its stream, final."""

    def __init__(self, rack, app: str) -> None:
        self.rack, self.app = rack, app
        objects.put_bytes_stream(rack, app, "tmp/src.tgz", io.BytesIO(b"source"))
        self.id = builds.create(rack, app, url=f"object://{app}/tmp/src.tgz")["id"]
        self.log = BuildLog(rack.redis, self.id)

    def start(self) -> None:
        with self.rack.db.transaction() as conn:
            assert sql.mark_running(conn, id=self.id, process="test")

    def write(self, text: str | bytes) -> None:
        self.log.append(text)

    def write_lines(self, first: int, last: int, pause: float = 0.0) -> None:
        for i in range(first, last):
            self.write(f"Step {i}: RUN echo héllo ✓ {'x' * (i % 50)}\n")
            if pause:
                time.sleep(pause)

    def finish(self, status: str = "complete", *, reason: str = "", store: bool = True, end: bool = True):
        fields = {}
        if store:
            data = io.BytesIO(self.log.text())
            fields["logs"] = objects.put_bytes_stream(self.rack, self.app, f"build/{self.id}/logs", data)
        with self.rack.db.transaction() as conn:
            assert sql.finish(conn, id=self.id, status=status, reason=reason, fields=fields)
        if end:
            self.log.end(status, ttl=60)

    def expected(self) -> bytes:
        return self.log.text()


def own_database(stack_env: Mapping[str, str], name: str) -> str:
    """Return a URL of the stack's Postgres whose tables are its own (schema `name`), migrated and empty.

    A second rack on the same machine: its own tables, the same server.
    """
    import psycopg2

    from rack.db import Database, execute
    from rack.migrate import migrate

    base = stack_env["RACK_DATABASE_URL"]
    conn = psycopg2.connect(base)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
    conn.close()
    url = base + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{name}"
    db = Database(url)
    migrate(db)
    with db.transaction() as tx:
        execute(tx, "TRUNCATE apps, builds, releases CASCADE")
    db.close()
    return url


class GitHttpServer:
    """A git server on loopback: `git http-backend` (smart HTTP, as hosting services speak it) behind a
    small threaded HTTP server. Repositories are the bare repos under `root`: `{url}/<name>.git`.

    With `auth=(user, password)` it answers 401 to requests without those Basic credentials; `on_request`
    is called as each request arrives (while the client waits for it); `requests` counts them.
    """

    def __init__(self, root: Path, *, auth: tuple[str, str] | None = None, on_request=None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self
        self.requests = 0
        self.authorized = 0
        wanted = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.backend()

            def do_POST(self) -> None:
                self.backend()

            def backend(self) -> None:
                server.requests += 1
                if on_request is not None:
                    on_request()
                if wanted is not None:
                    if self.headers.get("Authorization") != wanted:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="git"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    server.authorized += 1
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(root),
                    "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
                    "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }  # fmt: skip
                proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def cached_steps(log: str) -> list[str]:
    """Return the steps a build log shows taken from the cache, as either builder prints them."""
    steps, names, step = [], {}, ""
    for line in log.splitlines():
        # Services built side by side prefix their lines ("[web] #5 …"); each numbers its steps alone.
        service, line = re.match(r"^(\[[a-z0-9-]+\] )?(.*)$", line).groups()  # type: ignore[union-attr]
        if line.startswith("Step "):
            step = line
        elif line.strip() == "---> Using cache":
            steps.append(step)
        elif m := re.match(r"^(#\d+) (.*)$", line):
            if m.group(2) == "CACHED":
                steps.append(names.get((service, m.group(1)), ""))
            else:
                names.setdefault((service, m.group(1)), m.group(2))
    return steps


def upload(rack: Rack, app: str, folder: Path, *, dockerignore: bool = True) -> str:
    """Tar a folder as the CLI does (honouring .dockerignore unless told not to) and upload it."""
    patterns = []
    if dockerignore and (folder / ".dockerignore").exists():
        lines = (folder / ".dockerignore").read_text().splitlines()
        patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    from docker.utils.build import tar

    body = tar(str(folder), exclude=patterns, gzip=True)
    return objects.put(rack, app, "tmp/source.tgz", body)


def send_tree(rack: Rack, app: str, folder: Path) -> tuple[str, int]:
    """Send a folder as `convox build` does (only what the rack lacks); return its URL and the count sent."""
    from cli import sources as cli_sources
    from rack.sources import contents

    scanned = cli_sources.scan(folder)
    missing = contents.missing(rack, app, list(scanned.sizes))
    if missing:
        contents.receive(rack, app, io.BytesIO(b"".join(cli_sources.Batch(scanned, missing, lambda n: None))))
    return contents.create_tree(rack, app, scanned.body())["Url"], len(missing)


def lose_content(rack: Rack, app: str, sha256: str) -> None:
    """Make a stored content gone (as a sweep does), whichever pack holds its bytes."""
    with rack.db.transaction() as conn:
        conn.cursor().execute("DELETE FROM source_contents WHERE app = %s AND sha256 = %s", (app, sha256))


def build(rack: Rack, app: str, folder: Path, *, dockerignore: bool = True, **options) -> dict:
    """Upload a folder, create a build of it and run it here; return the final row."""
    url = upload(rack, app, folder, dockerignore=dockerignore)
    from rack.pipeline import run as pipeline

    row = builds.create(rack, app, url=url, **options)
    result = pipeline.run_build(rack, row["id"], process="tests:1")
    assert result is not None
    assert result["status"] in ("complete", "failed")
    return result


def build_log(rack: Rack, row: dict) -> str:
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, row["app"], key) as fh:
        return fh.read().decode()


def write_app(root: Path, files: dict[str, str]) -> Path:
    """Write files (relative path: text) under root and return root."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def when_started(rack: Rack, build_id: str, action) -> threading.Thread:
    """Run `action()` in a thread as soon as the build's log shows its slow step started."""

    def watch() -> None:
        for entry in BuildLog(rack.redis, build_id).follow(block_ms=200):
            if b"started\n" in entry.data:
                action()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def request_cancel(rack: Rack, row: dict) -> None:
    with rack.db.transaction() as conn:
        sql.request_cancel(conn, app=row["app"], id=row["id"])


class CuttingProxy:
    """A loopback TCP proxy that cuts the connection carrying request byte `cut_after`, as a flaky link does.

    The cut connection's server side sees the request end there (and answers it); the client then loses
    the connection without that answer. Connections after the cut pass whole. `sent` counts the request
    bytes forwarded to the server over all connections.
    """

    def __init__(self, upstream_port: int, *, cut_after: int) -> None:
        self.upstream_port, self.cut_after = upstream_port, cut_after
        self.sent, self.cuts = 0, 0
        self._lock = threading.Lock()  # connections side by side share the count and the one cut
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        done, cutting = threading.Event(), threading.Event()

        def back() -> None:
            while data := _recv(upstream):
                if not cutting.is_set():  # answers before the cut reach the client; the one after, not
                    client.sendall(data)
            done.set()

        threading.Thread(target=back, daemon=True).start()
        while data := _recv(client):
            with self._lock:
                cut = self.cuts == 0 and self.sent + len(data) >= self.cut_after
                if cut:
                    data = data[: self.cut_after - self.sent]
                    self.cuts += 1
                self.sent += len(data)
            upstream.sendall(data)
            if cut:
                cutting.set()
                upstream.shutdown(socket.SHUT_WR)  # the server sees the body end here
                done.wait(10)  # and has answered (and recorded what arrived) before the client learns
                break
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


class LiveServer:
    """The API on a real loopback HTTP port, served from a thread (werkzeug, threaded)."""

    def __init__(self, flask_app, password: str) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, flask_app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.password = password
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def rack_url(self) -> str:
        return f"http://convox:{self.password}@127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


def group_rss(pid: int) -> int:
    """The resident memory of a process and all its descendants, in bytes (0 once it is gone)."""
    import psutil

    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss:
    """Sample a process tree's resident memory in a thread while in the `with` block; `.peak` in bytes."""

    def __init__(self, pid: int, *, every: float = 0.05) -> None:
        import threading

        self.pid, self.every = pid, every
        self.start = self.peak = group_rss(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.peak = max(self.peak, group_rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, group_rss(self.pid))


def oci_archive(files: Mapping[str, str], *, cmd: list[str]) -> bytes:
    """Return an image as `skopeo copy … oci-archive:` lays one out: `oci-layout`, `index.json` naming one
    manifest, and `blobs/sha256/<digest>` for the manifest, the config and each layer (uncompressed tars):
    busybox's root filesystem, then `files`."""
    import hashlib
    import io
    import json
    import tarfile

    from rack_stack.base_image import rootfs_tar

    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(text.encode()), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(text.encode()))
    layers = [rootfs_tar(), extra.getvalue()]
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]},
    }).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(x), "size": len(x)}
                   for x in layers],
    }).encode()  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
                       "size": len(manifest)}],
    }).encode()  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entries = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        entries |= {f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()}
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def git(*args: str, cwd: Path) -> str:
    """Run git with a fixed author in `cwd`; return its output."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def versioned_repo(work: Path, bare: Path) -> tuple[str, str]:
    """Make bare repo `bare` on main: a first commit whose image prints `one`, then a second printing `two`;
    return both commits' shas."""
    git("init", "-q", "-b", "main", cwd=work)
    (work / "convox.yml").write_text("services:\n  web:\n    build: .\n")
    (work / "Dockerfile").write_text("FROM busybox\nCOPY version.txt /version.txt\nCMD cat /version.txt\n")
    (work / "version.txt").write_text("one\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "First version", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work).strip()
    (work / "version.txt").write_text("two\n")
    git("commit", "-q", "-am", "Second version\n\nWith a body.", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work).strip()
    git("clone", "-q", "--bare", str(work), str(bare), cwd=work)
    return first, second


class LiveRack:
    """A Rack on clean tables with one app, its API over loopback HTTP (the CLI pointed at it by RACK_URL),
    and threads standing in for workers (`spawn`), joined when it closes."""

    def __init__(self, env: Mapping[str, str], *, app: str, monkeypatch, config: Path) -> None:
        import threading

        from rack import apps
        from rack.config import load_settings
        from rack.context import Rack
        from rack.db import execute
        from rack_api import create_app
        from tests.conftest import LiveServer

        self.rack = Rack(load_settings(env))
        self.threads: list[threading.Thread] = []
        self._thread = threading.Thread
        with self.rack.db.transaction() as conn:
            execute(conn, "TRUNCATE apps, builds, releases CASCADE")
        apps.create(self.rack, name=app)
        self.server = LiveServer(create_app(rack=self.rack), self.rack.settings.password)
        monkeypatch.setenv("RACK_URL", self.server.rack_url)
        monkeypatch.setenv("CONVOX_CONFIG", str(config))

    def spawn(self, target, *args, **kwargs) -> None:
        self.threads.append(self._thread(target=target, args=args, kwargs=kwargs))
        self.threads[-1].start()

    def close(self) -> None:
        self.server.stop()
        for t in self.threads:
            t.join(60)
        self.rack.close()


class Crowd:
    """Follow one build's log `count` times at once from one thread: every other follower a websocket
    (Convox's protocol), the rest chunked HTTP, all on one selector loop.

    They stand for clients on other machines: one loop costs the machine a fraction of what hundreds of
    client threads do, so a test's measurements of the API are not its own clients' CPU. `connect()` returns
    once every follower is attached (websocket accepted, or chunked headers received); `run()` reads until
    every follower's log ended (the empty binary frame, or the chunked body's last chunk) and returns each
    one's `(ended, bytes received)`.
    """

    def __init__(self, url: str, password: str, app: str, build_id: str, count: int, offset: int = 0):
        self.host, self.port = url.split("://", 1)[1].rsplit(":", 1)
        self.path = f"/apps/{app}/builds/{build_id}/logs"
        self.auth = basic(password)["Authorization"].encode()
        self.count, self.offset = count, offset
        self.followers: list[dict] = []

    def connect(self, timeout: float = 60) -> None:
        import selectors

        import h11
        import wsproto
        from wsproto.events import Request

        self.selector = selectors.DefaultSelector()
        for i in range(self.count):
            sock = socket.create_connection((self.host, int(self.port)), timeout=timeout)
            one: dict = {"sock": sock, "ws": i % 2 == 0, "data": bytearray(), "ended": False, "open": True}
            host = f"{self.host}:{self.port}"
            if one["ws"]:
                one["conn"] = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                headers = [(b"authorization", self.auth), (b"offset", str(self.offset).encode())]
                sock.sendall(one["conn"].send(Request(host=host, target=self.path, extra_headers=headers)))
            else:
                one["conn"] = h11.Connection(h11.CLIENT)
                target = f"{self.path}?offset={self.offset}"
                headers = [("host", host), ("authorization", self.auth)]
                request = h11.Request(method="GET", target=target, headers=headers)
                sock.sendall(one["conn"].send(request) + one["conn"].send(h11.EndOfMessage()))
            one["connected"] = False
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, one)
            self.followers.append(one)
        self._loop(lambda: all(f["connected"] or not f["open"] for f in self.followers), timeout, "attached")

    def run(self, timeout: float = 120) -> list[tuple[bool, bytes]]:
        try:
            self._loop(lambda: not any(f["open"] for f in self.followers), timeout, "ended")
        finally:
            for one in self.followers:
                if one["open"]:
                    self._close(one)
            self.selector.close()
        return [(one["ended"], bytes(one["data"])) for one in self.followers]

    def _loop(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every follower {what} within {timeout}s")
            for key, _ in self.selector.select(timeout=1):
                one = key.data
                try:
                    data = one["sock"].recv(256 * 1024)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                try:
                    (self._ws if one["ws"] else self._chunked)(one, data)
                except Exception:  # a protocol error, such as a chunked body cut short: not ended
                    if one["open"]:
                        self._close(one)
                if not data and one["open"]:
                    self._close(one)

    def _ws(self, one: dict, data: bytes) -> None:
        from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, TextMessage

        conn = one["conn"]
        conn.receive_data(data or None)
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                one["connected"] = True
            elif isinstance(event, TextMessage):
                one["data"] += event.data.encode()
            elif isinstance(event, BytesMessage):
                if not event.data and event.message_finished:
                    one["ended"] = True
                    self._close(one)
                    return
                one["data"] += event.data
            elif isinstance(event, Ping):
                one["sock"].setblocking(True)
                one["sock"].sendall(conn.send(event.response()))
                one["sock"].setblocking(False)
            elif isinstance(event, CloseConnection):
                self._close(one)
                return
            else:  # a refused handshake
                self._close(one)
                return

    def _chunked(self, one: dict, data: bytes) -> None:
        import h11

        conn = one["conn"]
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                one["connected"] = event.status_code == 200
                if not one["connected"]:
                    self._close(one)
                    return
            elif isinstance(event, h11.Data):
                one["data"] += event.data
            elif isinstance(event, h11.EndOfMessage):
                one["ended"] = True
                self._close(one)
                return
            else:  # h11.ConnectionClosed, or anything past the one response
                self._close(one)
                return

    def _close(self, one: dict) -> None:
        one["open"] = False
        self.selector.unregister(one["sock"])
        one["sock"].close()

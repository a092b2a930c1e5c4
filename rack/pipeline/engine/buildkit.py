"""The engine's BuildKit builder, driven by Debian's docker client: `DOCKER_BUILDKIT=1 docker build`.

The client runs as a subprocess in its own process group, so a cancel or a timeout kills it (and the engine
then stops the step it ran). Its `--progress=plain` output is parsed line by line into the build's log, and a
failing step is named as the classic builder names it (`Step 3/5 : RUN make`), so reasons read the same under
both builders. Secrets reach the build as `--secret` files that exist only while it runs; cache mounts are
scoped per app on each engine and start empty again after a `--no-cache` build. The client ignores
`--memory` and `--cpu-*`: RACK_BUILD_MEMORY and RACK_BUILD_CPUS bound the steps through the engine's cgroup
(limits.py), and a step the kernel killed there for memory fails as `user:memory`. Pulls, tags, pushes and
image inspection stay on the docker SDK (`classic.Engine`).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import secrets as random
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rack.config import Settings, build_network_mode
from rack.errors import BuildError, BuildPlatformError, BuildUserError, RackError
from rack.pipeline import dockerfile as parse
from rack.pipeline.engine import classic
from rack.pipeline.engine.limits import OomWatch, mib
from rack.pipeline.engine.stream import Lines
from rack.reasons import Reason

DOCKER = "/usr/bin/docker"  # Debian's 20.10 client drives the engine's BuildKit; a newer one wants buildx
STOP_GRACE = 5.0  # seconds the client has to cancel the build before it is killed
SECRET_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_VERTEX = re.compile(r"^\[(?:(?P<stage>\S+) )?(?P<index>\d+)/(?P<total>\d+)\] (?P<rest>.*)$")
_LINE = re.compile(r"^#(\d+) (.*)$")
_DIGEST_LINE = re.compile(r"^#\d+ sha256:[0-9a-f]{64}\s*$")
_OUTPUT = re.compile(r"^\d+\.\d+ ")
_STATUS = re.compile(r"^(DONE \d|CACHED$|ERROR: |CANCELED)")
_EXIT = re.compile(r"executor failed running \[(?P<command>.*)\]: exit code: (?P<code>\d+)", re.S)
_CACHE_MOUNT = re.compile(r"--mount=(\S*type=cache\S*)")
_LLB_PREFIXES = (
    "failed to solve with frontend dockerfile.v0: ",
    "failed to solve with frontend gateway.v0: ",
    "failed to create LLB definition: ",
)
_OPS = ("RUN", "COPY", "ADD", "WORKDIR")  # the instructions BuildKit numbers as steps, besides FROM


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls into it
_PR_SET_PDEATHSIG = 1


def _die_with_the_worker() -> None:
    """In the client's process, before exec: get SIGTERM (cancel the build) when the worker dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Stage:
    name: str
    steps: list[str] = field(default_factory=list)


class StepNames:
    """Name BuildKit's steps (`[stage 2/4] RUN …`) as the classic builder does (`Step 5/9 : RUN …`)."""

    def __init__(self, text: str) -> None:
        found = parse.instructions(text)
        self.stages: list[_Stage] = []
        self.froms: dict[str, str] = {}
        for number, (keyword, rest) in enumerate(found, 1):
            label = f"Step {number}/{len(found)} : {keyword} {rest}"
            if keyword == "FROM":
                words = [w for w in rest.split() if not w.startswith("--")]
                image = words[0] if words else ""
                named = len(words) >= 3 and words[1].lower() == "as"
                earlier = {s.name for s in self.stages}
                stage = _Stage(words[2].lower() if named else f"stage-{len(self.stages)}")
                if image.lower() not in earlier:  # FROM an earlier stage is no step of its own
                    stage.steps.append(label)
                    self.froms.setdefault(normalize_image(image), label)
                self.stages.append(stage)
            elif keyword in _OPS and self.stages:
                self.stages[-1].steps.append(label)

    def label(self, vertex: str) -> str:
        """Return the classic name of a step, or BuildKit's own when the Dockerfile does not say."""
        m = _VERTEX.match(vertex)
        if m is None:
            return vertex
        if m.group("stage"):
            stages = [s for s in self.stages if s.name == m.group("stage").lower()]
        else:
            stages = self.stages[-1:] if len(self.stages) == 1 else []
        index, total = int(m.group("index")), int(m.group("total"))
        if len(stages) == 1 and len(stages[0].steps) == total and 1 <= index <= total:
            return stages[0].steps[index - 1]
        return f"Step {vertex}"

    def from_label(self, image: str) -> str:
        return self.froms.get(normalize_image(image), f"FROM {image}")


def normalize_image(image: str) -> str:
    """Spell an image as BuildKit does: `busybox` is `docker.io/library/busybox:latest`."""
    name, _, digest = image.partition("@")
    first, slash, _ = name.partition("/")
    if not slash:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if not digest and ":" not in name.rpartition("/")[2]:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


class PlainProgress:
    """Follow `--progress=plain` output: which line to log, each step's name, and what failed."""

    def __init__(self, steps: StepNames, *, memory: int = 0, oom: OomWatch | None = None) -> None:
        self.steps = steps
        self.memory = memory  # RACK_BUILD_MEMORY, and the watch on the engine's cgroup that enforces it
        self.oom = oom
        self.names: dict[str, str] = {}
        self.failed: tuple[str, str] | None = None  # the first step that failed, and its error
        self.last = ""  # the client's last words: its error when no step failed

    def feed(self, line: str) -> str | None:
        """Take one line of output; return it as the log shows it, or None to leave it out."""
        text = line.rstrip("\r\n")
        if _DIGEST_LINE.match(text):
            return None
        m = _LINE.match(text)
        if m is None:
            if text.strip() and not text.startswith(("------", " > ")):
                self.last = text.strip()
            return text + "\n"
        vertex, rest = m.groups()
        if vertex not in self.names and not _OUTPUT.match(rest) and not _STATUS.match(rest):
            self.names[vertex] = rest
        elif rest.startswith("ERROR: ") and self.failed is None:
            self.failed = (self.names.get(vertex, f"#{vertex}"), rest.removeprefix("ERROR: ").strip())
        return text + "\n"

    def error(self, returncode: int, dockerfile: str) -> BuildError:
        """Turn a failed client run into the build error a person can act on."""
        if self.failed is not None:
            return self._step_error(*self.failed)
        message = self.last or f"the docker client exited with code {returncode}"
        if "Cannot connect to the Docker daemon" in message or "error during connect" in message:
            return BuildPlatformError(Reason.ENGINE, f"building: {message}")
        if "no space left on device" in message:
            return BuildPlatformError(Reason.DISK, message)
        cut = message
        for prefix in _LLB_PREFIXES:
            cut = cut.removeprefix(prefix)
        if cut != message or "dockerfile" in message.lower():
            return BuildUserError(Reason.DOCKERFILE, f"{dockerfile}: {cut}")
        return BuildPlatformError(Reason.ENGINE, f"the engine failed the build: {message}")

    def _step_error(self, vertex: str, message: str) -> BuildError:
        if "no space left on device" in message:
            return BuildPlatformError(Reason.DISK, f"{self.steps.label(vertex)}: {message}")
        if vertex.startswith("resolve image config for "):
            frontend = vertex.removeprefix("resolve image config for ")
            return BuildUserError(
                Reason.DOCKERFILE,
                f"the Dockerfile's `# syntax=` line names the frontend {frontend}, which this rack cannot "
                "pull: drop the line (the built-in frontend supports RUN --mount for cache and secrets), "
                f"or push the frontend image into the rack's registry and name it there ({message})",
            )
        image = vertex.removeprefix("[internal] load metadata for ")
        if image == vertex and (m := _VERTEX.match(vertex)) and m.group("rest").startswith("FROM "):
            image = m.group("rest").removeprefix("FROM ").split()[0]
        if image != vertex:
            return BuildUserError(
                Reason.BASE_IMAGE,
                f"{self.steps.from_label(image)}: the image is neither in the engine nor in the rack's "
                f"registry ({message})",
            )
        if vertex.startswith("[internal]"):
            return BuildUserError(Reason.DOCKERFILE, f"{vertex}: {message}")
        label = self.steps.label(vertex)
        if m := _EXIT.search(message):
            command, code = m.group("command"), m.group("code")
            returned = f"The command '{command}' returned a non-zero code: {code}"
            if code == "137" and self.oom is not None and self.oom.killed():
                return BuildUserError(
                    Reason.MEMORY,
                    f"{label}: {returned} (killed: the build's steps used more than their memory limit, "
                    f"RACK_BUILD_MEMORY={self.memory} ({mib(self.memory)}))",
                )
            return BuildUserError(Reason.STEP, f"{label}: {returned}")
        return BuildUserError(Reason.STEP, f"{label}: {message}")


def scope_cache_mounts(text: str, scope: str) -> str:
    """Give every `RUN --mount=type=cache` an id under `scope`, so apps never share a cache mount."""

    def scoped(m: re.Match) -> str:
        options = m.group(1).split(",")
        if "type=cache" not in options:
            return m.group(0)
        ids = [o for o in options if o.startswith("id=")]
        targets = [o for o in options if o.startswith(("target=", "dst=", "destination="))]
        base = ids[0].split("=", 1)[1] if ids else (targets[0].split("=", 1)[1] if targets else "")
        kept = [o for o in options if not o.startswith("id=")]
        return "--mount=" + ",".join([*kept, f"id={scope}/{base.strip('/')}"])

    return _CACHE_MOUNT.sub(scoped, text)


class Engine(classic.Engine):
    """The classic engine session, with builds made by BuildKit through the docker client."""

    builder = "buildkit"

    def __init__(self, settings: Settings, *, redis=None, scratch: Path | None = None) -> None:
        super().__init__(settings)
        self.redis = redis
        # Where the client's config and each build's secret files go: the build's own folder, which the
        # worker removes when the build ends and sweeps at start-up should the worker have been killed.
        self.scratch = scratch
        self._procs: set[subprocess.Popen] = set()
        self._procs_lock = threading.Lock()
        self._config: Path | None = None
        self._engine_id = ""
        # The identity of a context folder kept between builds (rack.sources.worktree): as the client's
        # node id, with the folder's path it keys BuildKit's context transfer, which then sends only the
        # files that changed since the last build from that folder.
        self.context_key = ""

    def close(self) -> None:
        """Stop any client still running, remove the client's config, and close the engine's connections."""
        self.interrupt()
        if self._config is not None:
            shutil.rmtree(self._config, ignore_errors=True)
            self._config = None
        super().close()

    def interrupt(self) -> None:
        """Ask every running build client to cancel its build (safe to call from another thread)."""
        with self._procs_lock:
            procs = list(self._procs)
        for proc in procs:
            _signal(proc, signal.SIGTERM)

    def client_config(self) -> Path:
        """Return the client's own config folder, with the rack registry's login when it has one."""
        if self._config is None:
            self._config = Path(tempfile.mkdtemp(prefix="rack-docker-", dir=self.scratch))
            auths = {}
            s = self.settings
            if s.registry_username:
                token = base64.b64encode(f"{s.registry_username}:{s.registry_password}".encode()).decode()
                auths[s.registry] = {"auth": token}
            path = self._config / "config.json"
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                json.dump({"auths": auths}, fh)
        if self.context_key:
            (self._config / ".buildNodeID").write_text(self.context_key)
        return self._config

    def cache_scope(self, app: str, *, reset: bool) -> str:
        """Return the cache mount scope of an app on this engine; `reset` starts a new, empty one."""
        if not self._engine_id:
            with classic.engine_errors("asking the engine for its id"):
                self._engine_id = str(self.api.info().get("ID") or "engine")
        key = f"rack:cache-scope:{self._engine_id}:{app}"
        generation = ""
        if self.redis is not None:
            try:
                if reset:
                    generation = random.token_hex(4)
                    self.redis.set(key, generation)
                else:
                    generation = (self.redis.get(key) or b"").decode()
            except Exception as exc:  # Redis away: a cache scope is not worth failing the build
                raise RackError(f"reading the cache scope of {app}: {exc}") from exc
        return f"rack/{app}/{generation or '0'}"

    def build(
        self,
        *,
        context: Path,
        dockerfile: str,
        tag: str,
        buildargs: dict[str, str],
        target: str | None = None,
        nocache: bool = False,
        check: classic.Check = classic._no_check,
        secrets: Mapping[str, str] | None = None,
        cache_from: Sequence[str] = (),
        app: str = "",
    ) -> Lines:
        """Build an image with BuildKit, yielding its output line by line; return the image id."""
        path = context / dockerfile
        text = path.read_text("utf-8")
        limited = bool(self.settings.build_memory or self.settings.build_cpus)
        cgroup = self.engine_cgroup()
        if cgroup is None and limited:
            yield (
                "Note: RACK_BUILD_MEMORY and RACK_BUILD_CPUS are not applied to these BuildKit steps: the "
                "client ignores --memory and --cpu-*, and RACK_BUILD_CGROUP names no engine cgroup to bound\n"
            )
        oom = cgroup.watch_oom() if cgroup is not None and self.settings.build_memory else None
        work = Path(tempfile.mkdtemp(prefix="rack-buildkit-", dir=self.scratch))  # 0700: secrets, iid file
        try:
            if app and "type=cache" in text:
                scope = self.cache_scope(app, reset=nocache)
                path = work / "Dockerfile"
                path.write_text(scope_cache_mounts(text, scope), "utf-8")
                ignore = context / f"{dockerfile}.dockerignore"
                if ignore.is_file():
                    shutil.copyfile(ignore, work / "Dockerfile.dockerignore")
            iidfile = work / "iid"
            argv = [
                DOCKER, "-H", self.settings.docker_host, "build", "--progress=plain",
                "--file", str(path), "--tag", tag, "--iidfile", str(iidfile),
                "--network", build_network_mode(self.settings),
                "--build-arg", "BUILDKIT_INLINE_CACHE=1",
            ]  # fmt: skip
            env = {
                "DOCKER_BUILDKIT": "1",
                "DOCKER_CONFIG": str(self.client_config()),
                "HOME": str(self.client_config()),
                "PATH": "/usr/bin:/bin",
            }
            for name, value in buildargs.items():
                argv += ["--build-arg", name]  # the value comes from the client's environment, not argv
                env[name] = value
            for name, value in (secrets or {}).items():
                if SECRET_ID.fullmatch(name):
                    argv += ["--secret", f"id={name},src={_secret_file(work, name, value)}"]
            for image in cache_from:
                argv += ["--cache-from", image]
            if target:
                argv += ["--target", target]
            if nocache:
                argv.append("--no-cache")
            argv.append(str(context))
            progress = PlainProgress(StepNames(text), memory=self.settings.build_memory, oom=oom)
            image_id = yield from self._run(argv, env, progress, dockerfile, check)
            return image_id or iidfile.read_text().strip() or self.image_id(tag)
        finally:
            if oom is not None:
                oom.close()
            shutil.rmtree(work, ignore_errors=True)

    def _run(
        self, argv: list[str], env: dict[str, str], progress: PlainProgress, dockerfile: str, check
    ) -> Lines:
        check()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: a stop kills the client, not the worker
                preexec_fn=_die_with_the_worker,  # and a worker killed outright takes its build with it
            )
        except OSError as exc:
            raise BuildPlatformError(Reason.ENGINE, f"can not run the docker client {DOCKER}: {exc}") from exc
        with self._procs_lock:
            self._procs.add(proc)
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                check()
                shown = progress.feed(raw.decode("utf-8", "replace"))
                if shown is not None:
                    yield shown
            returncode = proc.wait()
            check()  # stopped: the killed client's error is a consequence, the watch's reason the cause
            if returncode != 0:
                raise progress.error(returncode, dockerfile)
        finally:
            _stop(proc)
            with self._procs_lock:
                self._procs.discard(proc)
        return ""


def _secret_file(folder: Path, name: str, value: str) -> Path:
    path = folder / f"secret-{name}"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(value)
    return path


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen) -> None:
    """Let the client cancel its build, kill it if it does not exit in time, and reap it."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()

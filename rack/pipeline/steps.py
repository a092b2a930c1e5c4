"""The steps of one build, from source to pushed images: fetch, read the manifest, build, tag, push."""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, BinaryIO, cast

from rack import giturl, objects, releases
from rack.builds.record import PHASES
from rack.context import Rack
from rack.errors import BuildError, BuildPlatformError, BuildUserError, RackError, Unavailable
from rack.logs.masking import SECRET_NAME, Masker, secret_values
from rack.logs.stream import BuildLog, LogWriter
from rack.pipeline import dockerfile, folders, inputs, manifest, parallel, push
from rack.pipeline.direct import ignore as direct_ignore
from rack.pipeline.direct import image as direct_image
from rack.pipeline.direct import plan as direct_plan
from rack.pipeline.engine import buildkit
from rack.pipeline.engine.classic import Engine, drain
from rack.pipeline.source import clone_git, extract_tarball
from rack.pipeline.watch import Watch
from rack.reasons import Reason
from rack.scrub import scrub
from rack.sources import contents, tree, worktree
from rack.sources.assemble import assemble
from rack.sql import builds as sql

log = logging.getLogger(__name__)
PARTIAL_MAX = 64 * 1024
OWN_ROOM = 16 * 1024  # kept past the output for the rack's own last lines (the error, the cut notice)
CUT_NOTICE_ROOM = 512


class Output:
    """A build's log as it is written: whole lines to the live stream, masked, and a copy on disk.

    At most `max_bytes` are kept: past them the build's output is dropped (counted), the rack's own lines
    still fit in a reserve, and the log ends with a line saying how much was cut. The copy is an unlinked
    temporary file, so a long log costs the worker disk, not memory.
    """

    def __init__(
        self, build_log: BuildLog, *, writer: LogWriter | None = None, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.build_log = build_log
        self.writer = writer if writer is not None else build_log.writer()
        self.max_bytes = max_bytes
        self.copy = tempfile.TemporaryFile()
        self.size = 0  # bytes written to the log so far
        self.lines = 0  # and their lines
        self.cut = 0  # bytes of output left out past max_bytes
        self._partial = ""
        self._warned = False
        self._dropped = False  # a line missed the live stream: the copy is the whole log
        self.closed = False

    def write(self, text: str) -> None:
        """Write output as it comes; a partial line waits for its end so masking sees it whole."""
        text = self._partial + text
        head, newline, tail = text.rpartition("\n")
        if len(tail) > PARTIAL_MAX:
            head, newline, tail = text, "", ""
        self._partial = tail
        if head or newline:
            self._send(head + newline)

    def line(self, text: str) -> None:
        """Write one line of the rack's own, ending any partial line first."""
        if self._partial:
            self._send(self._partial + "\n")
            self._partial = ""
        self._send(text.rstrip("\n") + "\n", reserve=CUT_NOTICE_ROOM)

    def mask(self, secrets: list[str]) -> None:
        """Mask these values (and the ones masked so far) in everything written from now on."""
        self.build_log.masker = Masker(secrets)

    def _send(self, text: str, *, reserve: int = OWN_ROOM) -> None:
        """Send masked text unless it would leave less than `reserve` bytes under the cap."""
        data = self.build_log.masker.mask(text).encode("utf-8", "replace")
        room = self.max_bytes - self.size - reserve
        if len(data) > room:
            if reserve != OWN_ROOM and room >= 64:
                data = data[: room - 4] + b"...\n"  # the rack's own line, shortened to what is left
            else:  # output: keep the whole lines that fit
                keep = data.rfind(b"\n", 0, max(room, 0)) + 1
                self.cut += len(data) - keep
                data = data[:keep]
                if not data:
                    return
        self.size += len(data)
        self.lines += data.count(b"\n")
        self.copy.write(data)
        # A refused write took nothing, so trying again cannot repeat a line. The first refusal may only
        # report an earlier failed flush; a second means the writer is full: leave the line to the copy.
        for _ in range(2):
            try:
                self.writer.write(data)
                return
            except Unavailable as exc:
                if not self._warned:
                    log.warning("build %s: live log unavailable: %s", self.build_log.build_id, exc)
                    self._warned = True
        if not self._dropped:
            log.warning(
                "build %s: lines left out of the live log; storing the worker's copy", self.build_log.build_id
            )
            self._dropped = True

    def close(self) -> BinaryIO:
        """Flush everything and return the log to store, to read: the stream, or the copy if Redis is away."""
        if not self.closed:
            if self._partial:
                self._send(self._partial)
                self._partial = ""
            if self.cut:
                notice = (
                    f"--- log cut: {self.cut} bytes past the limit of {self.max_bytes} bytes left out ---"
                )
                self._send(("\n" if self._ends_mid_line() else "") + notice + "\n", reserve=0)
            self.closed = True
            try:
                self.writer.close()
            except Unavailable as exc:
                log.warning("build %s: storing the log kept by the worker: %s", self.build_log.build_id, exc)
                self._dropped = True
        if self._dropped:
            self.copy.seek(0)
            return cast(BinaryIO, self.copy)
        return self.build_log.reader()

    def _ends_mid_line(self) -> bool:
        if not self.size:
            return False
        self.copy.seek(-1, os.SEEK_END)
        last = self.copy.read(1)
        return last != b"\n"

    def discard(self) -> None:
        """Drop the disk copy (once the log is stored)."""
        self.copy.close()


class Phases:
    """How long each phase of a build took, saved on the build row as each phase ends."""

    def __init__(self, rack: Rack, build_id: str, *, process: str) -> None:
        self.rack = rack
        self.build_id = build_id
        self.process = process
        self._seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        """Time a phase (added to its earlier runs: one per service) and save it, even when it fails."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)
            self.save()

    def add(self, name: str, seconds: float) -> None:
        assert name in PHASES, name
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def set(self, name: str, seconds: float) -> None:
        """Record a phase timed as a whole (not as the sum of its runs), and save it."""
        assert name in PHASES, name
        if seconds:
            self._seconds[name] = seconds
            self.save()

    def as_dict(self) -> dict[str, float]:
        """The phases so far, in seconds to the millisecond, in the order they run."""
        return {name: round(self._seconds[name], 3) for name in PHASES if name in self._seconds}

    def save(self) -> None:
        """Write the phases on the build while it is this worker's, even once a cancel ended it elsewhere
        (the phase it stopped in is timed too); the outcome writes them again, so a miss costs nothing."""
        try:
            with self.rack.db.transaction() as conn:
                sql.set_phases(conn, id=self.build_id, process=self.process, phases=self.as_dict())
        except RackError as exc:
            log.warning("build %s: phase timings not saved yet: %s", self.build_id, exc)


def open_engine(rack: Rack, *, scratch: Path | None = None) -> Engine:
    """Open a session with the worker's engine, building with the rack's builder (RACK_BUILDER).

    `scratch` (the build's folder) holds what the builder writes for the build, secret files included.
    """
    if rack.settings.builder == "classic":
        return Engine(rack.settings)
    return buildkit.Engine(rack.settings, redis=rack.redis, scratch=scratch)


def inside(root: Path, relative: str, *, code: Reason, what: str) -> Path:
    """Resolve a path given in the source and refuse one that leads outside it."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BuildUserError(code, f"{what} {relative!r} is outside the source")
    return path


@dataclass
class BuildRun:
    """One build's work in a private source folder; each step raises a BuildError when it fails."""

    rack: Rack
    row: dict
    src: Path
    out: Output
    engine: Engine
    watch: Watch
    git_sha: str = ""
    images: dict[str, dict[str, str]] = field(default_factory=dict)
    entrypoint: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)  # offered to BuildKit builds as secret mounts
    previous: dict[str, dict[str, str]] = field(default_factory=dict)  # the app's last images: a cache
    tree: str = ""  # the source tree's digest, when the source named it (manifest://)
    inputs: str = ""  # the digest of everything the images are made from (pipeline/inputs.py)
    written: dict[str, direct_image.Prepared] = field(default_factory=dict)  # images the rack writes itself
    phases: Phases = field(init=False)
    held: ExitStack = field(default_factory=ExitStack)  # the app's folder, while held
    began: float = field(init=False)

    def __post_init__(self) -> None:
        self.phases = Phases(self.rack, self.row["id"], process=self.watch.process)
        self.began = time.time()

    @property
    def options(self) -> dict:
        return self.row["options"] or {}

    def check(self) -> None:
        self.watch.check()

    def stopping(self) -> bool:
        """Tell whether the build must stop (cancelled, taken over or out of time)."""
        return self.watch.stopped is not None

    def run(self) -> None:
        """Fetch the source, read the manifest, then build or pull, tag and push every service."""
        with self.held:  # the app's source folder stays this build's until its images are pushed
            self._run()

    def _run(self) -> None:
        if self.reuse_before_assembly():
            return
        self.fetch_source()
        self.check()
        text, name = self.read_manifest()
        env = self.build_env(name)
        self.out.mask(secret_values(env, [self.rack.settings.registry_password]))
        limit = self.rack.settings.manifest_max_bytes
        services = manifest.load(text, env, max_bytes=limit, filename=name).services
        if self.reuse_earlier(services, env, text, name):
            return
        tags = {
            s.name: f"{self.rack.settings.registry}/{self.row['app']}:{s.name}.{self.row['id']}"
            for s in services
        }
        built = self.build_all([s for s in services if not s.image], tags, env)
        # Each image is pushed as soon as it is tagged, beside the others (pushes are the engine's, whichever
        # builder made the image).
        limit = self.rack.settings.build_parallel
        pushes = parallel.Background(limit)
        lock = threading.Lock()
        spans: list[tuple[float, float]] = []
        retags: list[tuple[float, float]] = []  # build-phase time spent beside the pushes already going
        try:
            for service in services:
                self.check()
                tag = tags[service.name]
                written = None if service.image else self.written.get(built[service.build_key])
                if written is not None:  # its push writes it
                    if self.entrypoint is None:
                        self.entrypoint = written.entrypoint
                    pushes.submit(partial(self.write_image, service, tag, written, lock, spans))
                    continue
                with self.phases.timing("build"):
                    began = time.monotonic()
                    if service.image:
                        self.retag(service.image, tag, pull=True)
                    elif built[service.build_key] != tag:
                        self.retag(built[service.build_key], tag)
                    retags.append((began, time.monotonic()))
                if self.entrypoint is None and not service.image:
                    self.entrypoint = self.engine.entrypoint(tag)
                pushes.submit(partial(self.push_image, service, tag, lock, spans, beside=limit > 1))
            pushes.wait()
        except BaseException:
            pushes.wait(raising=False)  # no push of a failed build goes on after its tags are removed
            raise
        finally:
            self._time_pushes(spans, lock, besides=retags)
        self.images = {s.name: self.images[s.name] for s in services}  # in the manifest's order
        self.check()  # a cancel that came during the last push still wins

    def push_image(
        self, service, tag: str, lock: threading.Lock, spans: list[tuple[float, float]], *, beside: bool
    ) -> None:
        """Push a service's image and record it; `beside` others: its progress lines prefixed."""
        write = parallel.Prefixed(self.out.write, lock, service.name) if beside else self.out.write
        began = time.monotonic()
        try:
            with lock:
                self.out.line(f"Running: docker push {tag}")
            digest = push.push(
                self.engine,
                tag,
                previous=None if service.image else (self.previous.get(service.name) or {}).get("image"),
                since=self.began - 2,  # history times are whole seconds
                check=self.check,
                write=write,
            )
            with lock:
                self.images[service.name] = {"image": tag, "digest": digest}
        finally:
            if isinstance(write, parallel.Prefixed):
                write.flush()
            with lock:
                spans.append((began, time.monotonic()))

    def write_image(
        self,
        service,
        tag: str,
        written: direct_image.Prepared,
        lock: threading.Lock,
        spans: list[tuple[float, float]],
    ) -> None:
        """Write a planned image into the registry as a service's (its push) and record it."""
        began = time.monotonic()
        try:
            made, wrote = written.write(
                tag,
                previous=(self.previous.get(service.name) or {}).get("image"),
                fresh=bool(self.options.get("no_cache")),
                check=self.check,
            )
            sent, total = made.sent / 1e6, made.total / 1e6
            with lock:
                if wrote:
                    self.out.line(
                        f"Wrote the image from its files, no engine build: {made.made} of "
                        f"{made.made + made.reused} layers sent ({sent:.1f} MB of {total:.1f} MB)"
                    )
                else:
                    self.out.line(f"Tagged the written image as {tag}")
                self.images[service.name] = {"image": tag, "digest": made.digest}
        finally:
            with lock:
                spans.append((began, time.monotonic()))

    def _time_pushes(
        self, spans: list[tuple[float, float]], lock: threading.Lock, *, besides: list[tuple[float, float]]
    ) -> None:
        """Record the push phase as the time some push was running (pushes side by side overlap), less the
        time the build phase already counted meanwhile (`besides`: a retag or a pull beside a push), so
        no second counts in two phases."""
        with lock:
            pushing = parallel.union(spans)
        counted = parallel.union(besides)
        both = sum(max(0.0, min(b, d) - max(a, c)) for a, b in pushing for c, d in counted)
        self.phases.set("push", max(0.0, sum(b - a for a, b in pushing) - both))

    def fetch_source(self) -> None:
        """Extract the uploaded tarball, assemble the tree, or clone the git URL, into the source folder."""
        try:
            self._fetch_source()
        except BuildUserError:
            self.check()  # stopped mid-way: the watch's reason (cancel, timeout, lost) is the cause
            raise

    def _git_credentials(self) -> tuple[str, str] | None:
        """Return the git URL's credentials, sealed beside the build when it was made (None if none)."""
        sealed = (self.row.get("options") or {}).get("git_credentials")
        if not sealed:
            return None
        try:
            return giturl.unseal(self.rack.settings.password, sealed)
        except ValueError as exc:
            raise BuildUserError(
                Reason.SOURCE, f"the git URL's credentials can not be read ({exc}): start the build again"
            ) from None

    def _fetch_source(self) -> None:
        url = self.row["source_url"]
        settings = self.rack.settings
        if url.startswith("object://"):
            app, key = objects.parse_url(url)
            try:
                with self.phases.timing("fetch"):
                    packed = self.rack.store.size(f"{app}/{key}")
                    body = self.rack.store.open(f"{app}/{key}")
            except FileNotFoundError:
                raise BuildUserError(Reason.SOURCE, f"the source object is gone: {url}") from None
            except RackError as exc:
                raise BuildPlatformError(Reason.STORAGE, f"reading {url}: {exc.message}") from exc
            self.src.mkdir()
            # the archive is read as it is unpacked: "extract" includes reading the object's bytes
            with body, self.phases.timing("extract"):
                extract_tarball(
                    body,
                    self.src,
                    max_bytes=settings.extract_max_bytes,
                    max_entries=settings.extract_max_entries,
                    max_depth=settings.extract_max_depth,
                    max_ratio=settings.extract_max_ratio,
                    packed_size=packed,
                    stop=self.stopping,
                )
        elif url.startswith(tree.SCHEME):
            with self.phases.timing("extract"):  # contents are read from the store as they are written
                held = self.held.enter_context(worktree.checkout(self.rack, url, stop=self.stopping))
                if held is None:  # the app's folders are all in use: a private one, written whole
                    self.src.mkdir()
                    self.tree = assemble(self.rack, url, self.src, stop=self.stopping)
                else:
                    self.src, self.tree = held.path, held.digest
                    if isinstance(self.engine, buildkit.Engine):
                        self.engine.context_key = held.generation
                    shown = "written from empty" if held.fresh else f"{held.written:,} written"
                    self.out.line(
                        f"Source: the app's folder on this worker ({shown}, {held.removed:,} removed)"
                    )
        else:
            self.out.line(f"Cloning: {scrub(url)}")
            with self.phases.timing("fetch"):  # a clone fetches and checks out at once: no "extract"
                self.git_sha = clone_git(
                    url,
                    self.src,
                    timeout=max(1, int(self.watch.remaining())),
                    allow_local=settings.git_allow_local,
                    allow_private=settings.git_allow_private,
                    credentials=self._git_credentials(),
                    stop=self.stopping,
                )
            if folders.depth_over(self.src, settings.extract_max_depth):
                raise BuildUserError(
                    Reason.SOURCE, f"the repository nests deeper than {settings.extract_max_depth} folders"
                )

    def read_manifest(self) -> tuple[str, str]:
        """Read the manifest, save its text on the build, and return it with its name."""
        name = self.manifest_name
        path = inside(self.src, name, code=Reason.MANIFEST, what="manifest")
        if not path.is_file():
            raise BuildUserError(Reason.MANIFEST, f"manifest not found: {name}")
        limit = self.rack.settings.manifest_max_bytes
        if path.stat().st_size > limit:
            raise BuildUserError(Reason.MANIFEST, f"{name} is larger than the limit of {limit} bytes")
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError as exc:
            raise BuildUserError(Reason.MANIFEST, f"{name} is not UTF-8 text: {exc}") from exc
        if "\x00" in text:  # not YAML, and Postgres text cannot hold it
            raise BuildUserError(Reason.MANIFEST, f"{name} is not text: it has a NUL byte")
        fields = {"manifest": text}
        if self.git_sha and not self.row["git_sha"]:
            fields["git_sha"] = self.git_sha
        with self.rack.db.transaction() as conn:
            sql.update(conn, id=self.row["id"], fields=fields)
        return text, name

    def build_env(self, manifest_name: str) -> dict[str, str]:
        """Return the latest release's env overlaid by the build args (a bare name takes a managed value)."""
        row = self.row
        managed = {
            "BUILD_APP": row["app"],
            "BUILD_ID": row["id"],
            "BUILD_GIT_SHA": row["git_sha"] or self.git_sha,
            "BUILD_DESCRIPTION": row["description"],
            "BUILD_MANIFEST": manifest_name,
        }
        with self.rack.db.transaction() as conn:
            env = releases.latest_env(conn, row["app"])
            self.previous = sql.latest_images(conn, app=row["app"])
        self.secrets = dict(env)  # every value of the app's environment, and the build args that look secret
        for item in self.options.get("build_args") or []:
            name, sep, value = item.partition("=")
            if sep:
                env[name] = value
            elif name in managed:
                env[name] = managed[name]
            if name in env and (name in self.secrets or SECRET_NAME.search(name)):
                self.secrets[name] = env[name]
        return env

    def reuse_before_assembly(self) -> bool:
        """For a tree, look for an earlier build with the same inputs having written only the files they
        are read from (the manifest, then the Dockerfiles); any trouble is left to the whole build."""
        url = self.row["source_url"]
        if not url.startswith(tree.SCHEME) or self.options.get("no_cache"):
            return False
        real, self.src = self.src, self.src.with_name("peek")
        try:
            with self.phases.timing("extract"):
                self.src.mkdir()
                self.tree = assemble(self.rack, url, self.src, stop=self.stopping, only=[self.manifest_name])
            text, name = self.read_manifest()
            env = self.build_env(name)
            self.out.mask(secret_values(env, [self.rack.settings.registry_password]))
            limit = self.rack.settings.manifest_max_bytes
            services = manifest.load(text, env, max_bytes=limit, filename=name).services
            needed = [inputs.dockerfile_path(s) for s in services if not s.image]
            with self.phases.timing("extract"):
                shutil.rmtree(self.src)
                self.src.mkdir()
                assemble(self.rack, url, self.src, stop=self.stopping, only=[name, *needed])
            return self.reuse_earlier(services, env, text, name)
        except BuildError:
            return False
        finally:
            shutil.rmtree(self.src, ignore_errors=True)
            self.src = real

    @property
    def manifest_name(self) -> str:
        return self.options.get("manifest") or "convox.yml"

    def reuse_earlier(self, services: list, env: dict[str, str], text: str, name: str) -> bool:
        """Take the images of an earlier complete build with this one's inputs (never under --no-cache)."""
        tree = self.tree or (f"git:{self.git_sha}" if self.git_sha else inputs.tree_digest(self.src))
        found = inputs.digest(
            src=self.src,
            tree=tree,
            manifest_name=name,
            manifest_text=text,
            services=services,
            env=env,
            options=self.options,
            builder=self.engine.builder,
            secrets=self.secrets,
            resolve=cache(self.engine.find_image),  # services share base images: ask once each
        )
        self.inputs = found or ""
        if not found or self.options.get("no_cache"):
            return False
        earlier = inputs.earlier_build(self.rack, app=self.row["app"], inputs=found, build_id=self.row["id"])
        if earlier is None:
            return False
        self.out.line(f"Reusing the images of build {earlier['id']}: the same inputs ({found[:12]})")
        self.images, self.entrypoint = earlier["images"], earlier["entrypoint"]
        return True

    def build_all(self, services: list, tags: dict[str, str], env: dict[str, str]) -> dict[object, str]:
        """Build each distinct path and Dockerfile once, side by side under BuildKit; return their tags."""
        first: dict[object, Any] = {}
        for service in services:
            first.setdefault(service.build_key, service)
        limit = self.rack.settings.build_parallel if self.engine.builder == "buildkit" else 1
        if limit <= 1 or len(first) <= 1:
            for service in first.values():
                self.check()
                with self.phases.timing("build"):
                    self.build(service, tags[service.name], env)
        else:
            lock = threading.Lock()
            jobs = [partial(self._build_beside, s, tags[s.name], env, lock) for s in first.values()]
            with self.phases.timing("build"):
                parallel.side_by_side(jobs, limit=limit, stop=self.engine.interrupt)
            self.check()
        return {key: tags[service.name] for key, service in first.items()}

    def _build_beside(self, service, tag: str, env: dict[str, str], lock: threading.Lock) -> None:
        write = parallel.Prefixed(self.out.write, lock, service.name)

        def say(text: str) -> None:
            with lock:
                self.out.line(text)

        self.check()
        try:
            self.build(service, tag, env, write=write, say=say)
        finally:
            write.flush()

    def build(
        self,
        service,
        tag: str,
        env: dict[str, str],
        *,
        write: Callable[[str], None] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        """Build a service's image from its path and Dockerfile, tagged `tag`."""
        write = write or self.out.write
        say = say or self.out.line
        context = inside(
            self.src, service.build_path, code=Reason.MANIFEST, what=f"service {service.name}: path"
        )
        shown = posixpath.normpath(posixpath.join(service.build_path, service.dockerfile))
        path = inside(self.src, shown, code=Reason.DOCKERFILE, what=f"service {service.name}: Dockerfile")
        if not context.is_dir():
            raise BuildUserError(
                Reason.MANIFEST, f"service {service.name}: build path {service.build_path!r} is not a folder"
            )
        if not path.is_file():
            raise BuildUserError(Reason.DOCKERFILE, f"Dockerfile not found at {shown}")
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError as exc:
            raise BuildUserError(Reason.DOCKERFILE, f"{shown} is not UTF-8 text: {exc}") from exc
        declared = dockerfile.declared_args(text)
        args = dockerfile.build_args(declared, env)
        development = self.options.get("development") and dockerfile.has_target(text, "development")
        say(f"Building: {service.name}")
        for name in dockerfile.withheld_args(declared, env):
            say(dockerfile.withheld_notice(name))
        if self.write_directly(service, tag, text, args, context, path, say):
            return
        drain(
            self.engine.build(
                context=context,
                dockerfile=posixpath.relpath(shown, posixpath.normpath(service.build_path)),
                tag=tag,
                buildargs=args,
                target="development" if development else None,
                nocache=bool(self.options.get("no_cache")),
                check=self.check,
                secrets=self.secrets,
                cache_from=self.cache_sources(service.name),
                app=self.row["app"],
            ),
            write,
        )

    def write_directly(
        self, service, tag: str, text: str, args: dict[str, str], context: Path, path: Path, say
    ) -> bool:
        """Plan the image of a copy-only Dockerfile, for its push to write it into the registry
        (pipeline/direct); False when the engine must build it, saying why."""
        if not self.rack.settings.direct_build:
            return False
        plan = direct_plan.read(text, args)
        if isinstance(plan, str) and plan.startswith("it has "):
            return False  # a Dockerfile that runs something: the engine's, as ever
        keep = None
        if isinstance(plan, direct_plan.Plan):
            if path.is_relative_to(context.resolve()):
                dockerfile_name = path.relative_to(context.resolve()).as_posix()
                rules = direct_ignore.rules(context, dockerfile_name, builder=self.engine.builder)
            else:
                rules = "its Dockerfile is outside the context"
            if isinstance(rules, str):
                plan = rules
            else:
                keep = rules
        if isinstance(plan, direct_plan.Plan):
            prepared = direct_image.prepare(
                self.engine, plan, context, hashes=self.context_hashes(context), keep=keep, check=self.check
            )
            if isinstance(prepared, direct_image.Prepared):
                self.written[tag] = prepared
                say(f"Planned the image from its files: {prepared.layer_count} layers, no engine build")
                return True
            plan = prepared
        say(f"Building with the engine: {plan}")
        return False

    def context_hashes(self, context: Path) -> dict[str, tuple[str, int]]:
        """The content digest and size of the tree's files by path in `context` ({} for other sources)."""
        if not self.row["source_url"].startswith(tree.SCHEME):
            return {}
        try:
            entries = contents.load_tree(self.rack, self.row["source_url"])
        except RackError:
            return {}
        prefix = os.path.relpath(context, self.src)
        prefix = "" if prefix == "." else prefix + "/"
        return {
            e.path.strip("/").removeprefix(prefix): (e.sha256, e.size)
            for e in entries
            if e.kind == "file" and e.path.strip("/").startswith(prefix)
        }

    def cache_sources(self, service: str) -> list[str]:
        """Return the images a build of `service` may take layers from: the app's, not the worker's.

        The app's latest complete build's image of the service, in the rack's registry, so a build on a
        cold worker reuses what an earlier build made anywhere; none with `--no-cache`. Every builder gets
        this list (the classic one pulls them, BuildKit reads their inline cache).
        """
        if self.options.get("no_cache"):
            return []
        image = (self.previous.get(service) or {}).get("image")
        return [image] if image else []

    def retag(self, image: str, tag: str, *, pull: bool = False) -> None:
        """Tag an image (pulled first if the engine lacks it) as a service's image."""
        if pull and not self.engine.has_image(image):
            self.out.line(f"Running: docker pull {image}")
            drain(self.engine.pull(image, check=self.check), self.out.write)
        self.out.line(f"Running: docker tag {image} {tag}")
        self.engine.tag(image, tag)

"""The Docker engine as the pipeline sees it: build, pull, tag, push; docker errors become build errors."""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path

import docker
import docker.errors

from rack.config import Settings, build_network_mode
from rack.errors import BuildError, BuildPlatformError, BuildUserError
from rack.pipeline.engine.limits import EngineCgroup
from rack.pipeline.engine.stream import (
    TRANSPORT,
    Lines,
    Progress,
    build_refused,
    drain,
    engine_errors,
    event_message,
    first_line,
    step_error,
)
from rack.reasons import Reason

__all__ = ["Engine", "Progress", "drain", "split_image"]
Check = Callable[[], None]
_RUNNING = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})\s*$")
_REMOVING = re.compile(r"^Removing intermediate container ([0-9a-f]{12,64})\s*$")
_api_versions: dict[str, str] = {}  # per engine address: asking each build costs a round trip


def _no_check() -> None:
    return None


class Engine:
    """One session with a Docker engine; use it as a context manager so its connections always close."""

    builder = "classic"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._container: str | None = None  # the build step container running now, for interrupt()
        self._lock = threading.Lock()
        version = _api_versions.get(settings.docker_host, "auto")
        with engine_errors(f"connecting to the Docker engine at {settings.docker_host}"):
            self.client = docker.DockerClient(base_url=settings.docker_host, version=version, timeout=300)
        _api_versions[settings.docker_host] = self.client.api.api_version
        self.api = self.client.api
        self._logged_in = False
        self._limited = False

    def engine_cgroup(self) -> EngineCgroup | None:
        """Bound the engine's steps by RACK_BUILD_MEMORY and RACK_BUILD_CPUS, once per session.

        Return the engine's cgroup (RACK_BUILD_CGROUP), or None when the engine has none named. Every
        session writes the limits, none or not, so an engine always runs under the settings of its build;
        a worker with no limits to set does without a cgroup it cannot see (one in a container of its own).
        """
        if not self.settings.build_cgroup:
            return None
        cgroup = EngineCgroup(self.settings.build_cgroup)
        if not (self.settings.build_memory or self.settings.build_cpus or cgroup.exists()):
            return None
        with self._lock:
            if not self._limited:
                cgroup.apply(memory=self.settings.build_memory, cpus=self.settings.build_cpus)
                self._limited = True
        return cgroup

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove a build container left running and close the engine's connections."""
        self._remove_container()
        self.client.close()

    @property
    def auth(self) -> dict | None:
        s = self.settings
        return (
            {"username": s.registry_username, "password": s.registry_password}
            if s.registry_username
            else None
        )

    def login(self) -> None:
        """Log in to the rack's registry once, so builds can pull `FROM` images from it."""
        if self.auth is None or self._logged_in:
            return
        with engine_errors(f"logging in to the registry {self.settings.registry}"):
            self.api.login(**self.auth, registry=self.settings.registry)
        self._logged_in = True

    def build(
        self,
        *,
        context: Path,
        dockerfile: str,
        tag: str,
        buildargs: dict[str, str],
        target: str | None = None,
        nocache: bool = False,
        check: Check = _no_check,
        secrets: Mapping[str, str] | None = None,
        cache_from: Sequence[str] = (),
        app: str = "",
    ) -> Lines:
        """Build an image, yielding its output as it comes; return the image id.

        `cache_from` images are pulled from the registry if the engine lacks them, so their layers serve as
        the build's cache on a worker that never built the app; one that cannot be pulled is skipped. The
        classic builder has no secret mounts: `secrets` and `app` (the scope of cache mounts) are BuildKit's.
        """
        self.login()
        self.engine_cgroup()  # the steps of this build, one at a time, each also under limits of its own
        image_id = ""
        step = ""
        sources = yield from self._cache_sources(cache_from, check=check)
        with engine_errors("building"):
            try:
                stream = self._start_build(
                    path=str(context),
                    dockerfile=dockerfile,
                    tag=tag,
                    buildargs=buildargs,
                    target=target,
                    nocache=nocache,
                    cache_from=sources,
                )
            except RecursionError:  # the SDK walks the context recursively to apply .dockerignore
                raise BuildUserError(
                    Reason.SOURCE, f"the build context {context.name!r} nests too deep to send"
                ) from None
            progress = Progress()
            try:
                for event in stream:
                    check()
                    if "error" in event or "errorDetail" in event:
                        raise step_error(event, step, oom_killed=self._oom_killed())
                    text = event.get("stream")
                    if text is not None:
                        step = self._track(text, step)
                        yield text
                    elif (line := progress.line(event)) is not None:
                        yield line
                    image_id = (event.get("aux") or {}).get("ID", image_id)
            except docker.errors.APIError as exc:  # the engine refused the request before building
                raise build_refused(exc, dockerfile) from exc
            finally:
                stream.close()
                self._remove_container()
        check()
        return image_id or self.image_id(tag)

    def _cache_sources(self, images: Sequence[str], *, check: Check) -> Generator[str, None, list[str]]:
        """Have each cache image in the engine (pulled if missing); return those to name as `cache_from`."""
        found = []
        for image in images:
            if not self.has_image(image):
                try:
                    for _ in self.pull(image, check=check):
                        pass
                except BuildError as exc:  # gone from the registry, or the registry is away: build without
                    yield f"Cache: {image} is not available ({exc.message}); building without it\n"
                    continue
                yield f"Cache: pulled {image}\n"
            if self._matched_by_history(image):
                found.append(image)
        return found

    def _matched_by_history(self, image: str) -> bool:
        """Tell whether the engine's image is one the classic builder reuses only when named in `cache_from`.

        Named there, it confines the cache to its own chain of steps: every other step the engine holds (the
        other stages', those of a BuildKit build) is ignored. So an image the engine built itself (it has a
        parent chain, which the local cache follows anyway) and one made by BuildKit (whose history the
        classic builder never matches) are left out; a pulled classic image is matched by its history.
        """
        with engine_errors(f"inspecting {image}"):
            if self.api.inspect_image(image).get("Parent"):
                return False
            return not any("buildkit" in (entry.get("Comment") or "") for entry in self.api.history(image))

    def _start_build(self, **kw):
        return self.api.build(
            **kw,
            pull=False,  # no outside registry: FROM images come from the engine or our registry
            rm=True,
            forcerm=False,  # a failed step's container stays until _remove_container: why did it stop?
            network_mode=build_network_mode(self.settings),
            container_limits=self._limits(),
            decode=True,
        )

    def _track(self, text: str, step: str) -> str:
        """Follow the step and its container through the output (one chunk may hold several lines)."""
        for line in text.splitlines():
            if line.startswith("Step "):
                step = line.strip()
            elif m := _RUNNING.match(line):
                with self._lock:
                    self._container = m.group(1)
            elif _REMOVING.match(line):
                with self._lock:
                    self._container = None
        return step

    def _oom_killed(self) -> bool:
        """Tell whether the kernel killed the failed step's container for memory (its State.OOMKilled)."""
        with self._lock:
            container = self._container
        if container is None:
            return False
        with contextlib.suppress(docker.errors.DockerException, *TRANSPORT):
            return bool(self.api.inspect_container(container)["State"].get("OOMKilled"))
        return False

    def _limits(self) -> dict | None:
        limits: dict = {}
        if self.settings.build_memory:
            limits.update(memory=self.settings.build_memory, memswap=self.settings.build_memory)
        if self.settings.build_cpus:
            # The build endpoint's SDK takes no CPU quota, so pin to as many CPUs as allowed and weigh shares.
            ncpu = int(self.api.info().get("NCPU") or 1)
            count = max(1, min(ncpu, math.ceil(self.settings.build_cpus)))
            limits.update(cpusetcpus=f"0-{count - 1}", cpushares=max(2, int(1024 * self.settings.build_cpus)))
        return limits or None

    def interrupt(self) -> None:
        """Kill the build step container running now (safe to call from another thread)."""
        with self._lock:
            container = self._container
        if container is None:
            return
        other = docker.APIClient(base_url=self.settings.docker_host, timeout=30)
        try:
            with contextlib.suppress(docker.errors.DockerException, *TRANSPORT):
                other.kill(container)
        finally:
            other.close()

    def _remove_container(self) -> None:
        with self._lock:
            container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException, *TRANSPORT):
                self.api.remove_container(container, force=True)

    def has_image(self, name: str) -> bool:
        """Tell whether the engine has an image by this name or id."""
        return self.find_image(name) is not None

    def find_image(self, name: str) -> str | None:
        """Return the id of the engine's image by this name or id, or None when it has none."""
        with engine_errors(f"looking up the image {name}"):
            try:
                return self.api.inspect_image(name)["Id"]
            except docker.errors.ImageNotFound:
                return None

    def image_id(self, name: str) -> str:
        with engine_errors(f"inspecting the image {name}"):
            return self.api.inspect_image(name)["Id"]

    def entrypoint(self, name: str) -> str:
        """Return an image's entrypoint as one shell-quoted string ("" when it has none)."""
        with engine_errors(f"inspecting the image {name}"):
            config = self.api.inspect_image(name).get("Config") or {}
        return shlex.join(config.get("Entrypoint") or [])

    def pull(self, image: str, *, check: Check = _no_check) -> Lines:
        """Pull an image, yielding condensed progress; return its id."""
        repository, tag = split_image(image)
        progress = Progress()
        with engine_errors(f"pulling {image}"):
            try:
                stream = self.api.pull(repository, tag, stream=True, decode=True, auth_config=self.auth)
            except docker.errors.APIError as exc:
                raise BuildUserError(Reason.IMAGE, f"can not pull {image}: {first_line(exc)}") from exc
            try:
                for event in stream:
                    check()
                    if "error" in event or "errorDetail" in event:
                        raise BuildUserError(Reason.IMAGE, f"can not pull {image}: {event_message(event)}")
                    if (line := progress.line(event)) is not None:
                        yield line
            finally:
                stream.close()
        return self.image_id(image)

    def tag(self, source: str, target: str) -> None:
        """Tag an image (`target` is `repository:tag`)."""
        repository, tag = split_image(target)
        with engine_errors(f"tagging {source} as {target}"):
            self.api.tag(source, repository, tag, force=True)

    def push(self, image: str, *, check: Check = _no_check) -> Lines:
        """Push an image, yielding condensed progress; return the digest the registry gave it."""
        repository, tag = split_image(image)
        progress = Progress()
        digest = ""
        try:
            with engine_errors(f"pushing {image}"):
                stream = self.api.push(repository, tag, stream=True, decode=True, auth_config=self.auth)
                try:
                    for event in stream:
                        check()
                        if "error" in event or "errorDetail" in event:
                            raise BuildPlatformError(
                                Reason.REGISTRY, f"pushing {image} failed: {event_message(event)}"
                            )
                        digest = (event.get("aux") or {}).get("Digest", digest)
                        if (line := progress.line(event)) is not None:
                            yield line
                finally:
                    stream.close()
        except BuildPlatformError as exc:
            if exc.code != Reason.ENGINE:
                raise
            raise BuildPlatformError(Reason.REGISTRY, exc.message) from exc
        if not digest:
            raise BuildPlatformError(Reason.REGISTRY, f"pushing {image} gave no digest")
        return digest


def split_image(image: str) -> tuple[str, str]:
    """Split `repo[:tag]` or `repo@digest` (the repo may hold a `host:port/`) into repository and tag."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    name, _, tail = image.rpartition("/")
    if ":" in tail:
        tail, tag = tail.split(":", 1)
    else:
        tag = "latest"
    return (f"{name}/{tail}" if name else tail), tag

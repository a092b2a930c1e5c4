"""Read the Docker engine's JSON streams: condensed progress, and errors turned into build errors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Generator, Iterator

import docker.errors
import requests.exceptions

from rack.errors import BuildError, BuildPlatformError, BuildUserError
from rack.reasons import Reason

Lines = Generator[str, None, str]
TRANSPORT = (requests.exceptions.RequestException, OSError)
_STEP = re.compile(r"^Step \d+/\d+ : (\S+)")


def first_line(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


@contextlib.contextmanager
def engine_errors(doing: str) -> Iterator[None]:
    """Turn docker SDK and transport errors raised while `doing` something into platform errors."""
    try:
        yield
    except BuildError:
        raise
    except docker.errors.DockerException as exc:
        raise BuildPlatformError(Reason.ENGINE, f"{doing}: {first_line(exc)}") from exc
    except TRANSPORT as exc:
        raise BuildPlatformError(Reason.ENGINE, f"{doing}: the Docker engine is unreachable ({exc})") from exc


class Progress:
    """Condense pull and push progress to one line per layer status change."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def line(self, event: dict) -> str | None:
        status = event.get("status")
        if not status:
            return None
        layer = event.get("id")
        if layer is None:
            return f"{status}\n"
        if self.seen.get(layer) == status:
            return None
        self.seen[layer] = status
        return f"{layer}: {status}\n"


def drain(lines: Lines, write: Callable[[str], None]):
    """Write every line a generator yields and return its return value."""
    while True:
        try:
            write(next(lines))
        except StopIteration as stop:
            return stop.value


def event_message(event: dict) -> str:
    return str((event.get("errorDetail") or {}).get("message") or event.get("error") or event).strip()


def build_refused(exc: docker.errors.APIError, dockerfile: str) -> BuildError:
    message = first_line(exc)
    if exc.is_client_error() or "Dockerfile" in message or "dockerfile" in message:
        return BuildUserError(Reason.DOCKERFILE, f"{dockerfile}: {message}")
    return BuildPlatformError(Reason.ENGINE, f"the engine refused the build: {message}")


def step_error(event: dict, step: str, *, oom_killed: bool = False) -> BuildError:
    """Turn the engine's error event for `step` into a build error; `oom_killed` from the step's container."""
    message = event_message(event)
    if "no space left on device" in message:
        return BuildPlatformError(Reason.DISK, f"{step}: {message}" if step else message)
    if not step:
        return BuildUserError(Reason.DOCKERFILE, message)
    instruction = m.group(1).upper() if (m := _STEP.match(step)) else ""
    if instruction == "FROM":
        return BuildUserError(
            Reason.BASE_IMAGE,
            f"{step}: the image is neither in the engine nor in the rack's registry ({message})",
        )
    if oom_killed:
        return BuildUserError(
            Reason.MEMORY, f"{step}: {message} (killed: the step used more than the build's memory limit)"
        )
    return BuildUserError(Reason.STEP, f"{step}: {message}")

"""Read convox.yml: interpolate, parse safely, check it and apply Convox's defaults."""

from __future__ import annotations

import functools
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, Event, ScalarEvent

from rack.errors import BuildUserError
from rack.reasons import Reason

CODE = Reason.MANIFEST
MAX_BYTES = 1024 * 1024
# a manifest has hundreds of nodes; an alias bomb ("billion laughs") has billions once expanded
MAX_NODES = 100_000
MAX_DEPTH = 64
_VAR = re.compile(r"\$\{([^}]*?)\}")
_NAME = re.compile(r"[a-z][a-z0-9-]*")
# An image reference as the engine parses it: [host[:port]/]path[:tag][@digest] (distribution/reference)
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"
_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(
    rf"(?:{_HOST}/)?{_PART}(?:/{_PART})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@{_DIGEST})?"
)
MAX_IMAGE = 512
_q = functools.partial(json.dumps, ensure_ascii=False)  # quote a name or path, escaping control characters


def _error(message: str) -> BuildUserError:
    return BuildUserError(CODE, message)


@dataclass(frozen=True)
class Service:
    """One service of a manifest: built from a Dockerfile (`build_path`) or pulled (`image`)."""

    name: str
    build_path: str | None = None  # relative to the source root, normalised ("." for the root)
    dockerfile: str | None = None  # relative to build_path
    image: str | None = None
    environment: list[str] = field(default_factory=list)  # top-level entries, then the service's
    command: str | list[str] | None = None
    build_args: list[str] = field(default_factory=list)  # `build.args`: hashed by Convox, never passed

    @property
    def build_key(self) -> tuple[str, str] | None:
        """Return what makes two services' images the same build, or None for an `image:` service."""
        if self.build_path is None or self.dockerfile is None:
            return None
        return (self.build_path, self.dockerfile)


@dataclass(frozen=True)
class Manifest:
    """A parsed convox.yml: services in file order and the top-level environment."""

    services: list[Service]
    environment: list[str] = field(default_factory=list)

    def service(self, name: str) -> Service:
        """Return the service called name."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


def load(
    text: str, env: Mapping[str, str], *, max_bytes: int = MAX_BYTES, filename: str = "convox.yml"
) -> Manifest:
    """Interpolate `${VAR}` from env, parse and validate a manifest, and apply Convox's defaults."""
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _error(f"{filename} is larger than {max_bytes} bytes")
    # measure what filling in the ${VAR}s would make before making it: a few KB of `${BIG}` can stand
    # for gigabytes
    size = len(text.encode("utf-8", "surrogatepass"))
    for match in _VAR.finditer(text):
        size += len(env.get(match.group(1), "").encode("utf-8", "surrogatepass")) - len(
            match.group(0).encode()
        )
        if size > max_bytes:
            raise _error(f"{filename} is larger than {max_bytes} bytes once ${{VAR}}s are filled in")
    text = _VAR.sub(lambda match: env.get(match.group(1), ""), text)
    data = _parse(text, filename)
    if data is None:
        raise _error(f"{filename} has no services")
    if not isinstance(data, dict):
        raise _error(f"{filename} must be a map with a services section, not a {_kind(data)}")
    environment = _strings(data.get("environment"), f"{filename}: environment")
    services = data.get("services")
    if not services:
        raise _error(f"{filename} has no services")
    if not isinstance(services, dict):
        raise _error(f"{filename}: services must be a map of names to services, not a {_kind(services)}")
    manifest = Manifest(
        [_service(name, body, environment, filename) for name, body in services.items()], environment
    )
    missing = sorted({key for s in manifest.services for key in _required(s.environment) if key not in env})
    if missing:
        raise _error(f"required env: {', '.join(missing)}")
    return manifest


def _parse(text: str, filename: str) -> Any:
    yaml = YAML(typ="safe", pure=True)
    try:
        _check_size(yaml.parse(text), filename)
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise _error(f"{filename} is not valid YAML: {exc.problem or exc.context}{where}") from None
    except (YAMLError, ValueError) as exc:  # ValueError: a date such as 2024-13-45
        raise _error(f"{filename} is not valid YAML: {exc}") from None


def _check_size(events: Iterable[Event], filename: str) -> None:
    """Count the nodes the document expands to, aliases included, and refuse a bomb before building it."""
    expanded: dict[str, int] = {}  # anchor -> nodes it stands for
    stack: list[list[Any]] = []  # open collections: [anchor, nodes so far]
    total = 0
    for event in events:
        if isinstance(event, CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise _error(f"{filename} nests deeper than {MAX_DEPTH} levels")
            size = 1
        elif isinstance(event, CollectionEndEvent):
            anchor, nodes = stack.pop()
            if anchor:
                expanded[anchor] = nodes
            if stack:
                stack[-1][1] += nodes
            continue
        elif isinstance(event, ScalarEvent):
            size = 1
            if event.anchor:
                expanded[event.anchor] = 1
        elif isinstance(event, AliasEvent):
            size = expanded.get(event.anchor, 1)
        else:
            continue
        total += size
        if stack and not isinstance(event, CollectionStartEvent):
            stack[-1][1] += size
        if total > MAX_NODES:
            raise _error(f"{filename} expands to more than {MAX_NODES} YAML nodes (too many aliases?)")


def _service(key: Any, body: Any, environment: list[str], filename: str) -> Service:
    name = str(key)
    if not isinstance(key, str) or not _NAME.fullmatch(name):
        rule = "must contain only lowercase alphanumeric and dashes"
        raise _error(f"{filename}: service name {_q(name)} invalid, {rule}")
    where = f"{filename}: service {name}"
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise _error(f"{where} must be a map, not a {_kind(body)}")
    image = body.get("image")
    if image is not None and not isinstance(image, str):
        raise _error(f"{where}: image must be a string, not a {_kind(image)}")
    if image and (len(image) > MAX_IMAGE or not _IMAGE.fullmatch(image)):
        shown = _q(image if len(image) <= 200 else image[:200] + "...")
        raise _error(f"{where}: image {shown} is not an image reference such as registry/name:tag")
    path, dockerfile, args = _build(body.get("build"), where)
    command = body.get("command")
    if command is not None and not isinstance(command, str):
        command = _strings(command, f"{where}: command")
    own = _strings(body.get("environment"), f"{where}: environment")
    if image:  # image: supersedes build:
        path = dockerfile = None
    else:
        image, path, dockerfile = None, _inside(path or ".", "build path", where), dockerfile or "Dockerfile"
        _inside(posixpath.join(path, dockerfile), "build manifest", where, shown=dockerfile)
        dockerfile = posixpath.normpath(dockerfile)
    return Service(name, path, dockerfile, image, [*environment, *own], command, args)


def _build(value: Any, where: str) -> tuple[str | None, str | None, list[str]]:
    """Return the path, Dockerfile and args of a `build:` value (a string is the path)."""
    if value is None or isinstance(value, str):
        return value or None, None, []
    if not isinstance(value, dict):
        raise _error(f"{where}: unknown type for service build: {_kind(value)}")
    for key in ("path", "manifest"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise _error(f"{where}: build {key} must be a string, not a {_kind(value[key])}")
    args = _strings(value.get("args"), f"{where}: build args")
    return value.get("path") or None, value.get("manifest") or None, args


def _inside(path: str, what: str, where: str, shown: str | None = None) -> str:
    """Return path normalised, refusing one that is absolute or leaves the source."""
    shown = path if shown is None else shown
    normal = posixpath.normpath(path)
    if "\0" in path or path.startswith("/"):
        raise _error(f"{where}: {what} {_q(shown)} must be a relative path inside the source")
    if normal == ".." or normal.startswith("../"):
        raise _error(f"{where}: {what} {_q(shown)} is outside the source")
    return normal


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _error(f"{what} must be a list of strings")
    return list(value)


def _required(environment: list[str]) -> list[str]:
    """Return the names an environment list requires: bare `NAME` entries (`*` copies, it requires none)."""
    return [entry for entry in environment if "=" not in entry and entry != "*"]


def _kind(value: Any) -> str:
    names = {dict: "map", list: "list", str: "string", bool: "bool", int: "int", float: "float"}
    return "null" if value is None else names.get(type(value), type(value).__name__)

"""Read a Dockerfile that only copies files from the context onto a base image and sets its config.

Such a Dockerfile (one `FROM`, then `COPY`, `WORKDIR`, `ENV`, `LABEL`, `USER`, `CMD`, `ENTRYPOINT`,
`EXPOSE`, `ARG`) runs nothing: its image is the base's layers and config, the copied files and the
settings, which the rack can write itself (image.py). `read` returns the steps in order, or the reason
the Dockerfile is left to the engine: anything it cannot reproduce exactly as BuildKit does (a `RUN`, a
variable to expand, a wildcard, `ADD`, `COPY --from`, a parser directive, a heredoc, a second stage).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rack.pipeline import dockerfile

SETTINGS = {"ENV", "LABEL", "USER", "CMD", "ENTRYPOINT", "EXPOSE"}
_CHOWN = re.compile(r"--chown=(\d{1,9})(?::(\d{1,9}))?")
_PORT = re.compile(r"(\d{1,5})(?:/(tcp|udp|sctp))?")
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Copy:
    """`COPY [--chown=uid[:gid]] src... dest`: context paths onto an image path."""

    sources: tuple[str, ...]  # normalized, relative to the context ("." is the context itself)
    dest: str  # absolute image path
    into: bool  # dest is a folder the sources go into (it ends with "/", or there are several)
    uid: int
    gid: int
    text: str  # the instruction, for the image's history


@dataclass(frozen=True)
class Workdir:
    """`WORKDIR path`: the working folder, created (with its parents) when missing, 0755 and root's."""

    path: str
    text: str


@dataclass(frozen=True)
class Setting:
    """An instruction that changes only the image's config (no layer)."""

    keyword: str
    value: Any  # ENV/LABEL: list of (name, value); USER: str; CMD/ENTRYPOINT: list; EXPOSE: list
    text: str
    shell: bool = False  # a CMD or ENTRYPOINT in the shell form


@dataclass
class Plan:
    base: str
    steps: list[Copy | Workdir | Setting] = field(default_factory=list)


def read(text: str, args: Mapping[str, str]) -> Plan | str:
    """Return the Dockerfile's plan, or why the engine must build it."""
    if any(_is_directive(line) for line in text.splitlines()[:8]):
        return "it starts with a parser directive"
    images = dockerfile.base_images(text, args)
    if images is None:
        return "its base image is not one image named in the text"
    if len(images) != 1:
        return "it starts from scratch" if not images else "it reads more than one image"
    plan = Plan(base=images[0])
    froms = 0
    workdir = "/"
    for keyword, rest in dockerfile.instructions(text):
        if keyword == "FROM":
            froms += 1
            if froms > 1:
                return "it has more than one stage"
            if rest.startswith("--"):
                return "its FROM has options"
            continue
        if keyword == "ARG":
            continue  # only read through "$", which every step but CMD and ENTRYPOINT refuses
        if froms == 0:
            return f"{keyword} comes before FROM"
        if "<<" in rest:
            return f"its {keyword} has a heredoc"
        step: Copy | Workdir | Setting | str
        if keyword == "COPY":
            step = _copy(rest, workdir)
        elif keyword == "WORKDIR":
            step = _workdir(rest, workdir)
            if isinstance(step, Workdir):
                workdir = step.path
        elif keyword in SETTINGS:
            step = _setting(keyword, rest)
        else:
            return f"it has {keyword}"
        if isinstance(step, str):
            return step
        plan.steps.append(step)
    if froms != 1:
        return "it has no FROM"
    return plan


def _is_directive(line: str) -> bool:
    return bool(re.fullmatch(r"#\s*(syntax|escape|check)\s*=.*", line.strip(), re.IGNORECASE))


def _copy(rest: str, workdir: str) -> Copy | str:
    uid = gid = 0
    words = rest.split()
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if not (m := _CHOWN.fullmatch(flag)):
            return f"its COPY has {flag.split('=', 1)[0]}"
        uid = int(m.group(1))
        gid = int(m.group(2)) if m.group(2) is not None else uid
    body = " ".join(words)
    if body.startswith("["):
        try:
            parts = json.loads(body)
        except ValueError:
            return "its COPY is not a JSON list"
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            return "its COPY is not a list of strings"
    else:
        parts = words
    if len(parts) < 2:
        return "a COPY names no destination"
    if any("$" in p or _WILDCARD.search(p) or "://" in p for p in parts):
        return "a COPY path has a variable, a wildcard or a URL"
    *sources, dest = parts
    normalized = []
    for source in sources:
        path = posixpath.normpath(source.lstrip("/") or ".")
        if path == ".." or path.startswith("../"):
            return f"a COPY source {source!r} is outside the context"
        normalized.append(path)
    into = dest.endswith("/") or len(sources) > 1 or dest in (".", "..")
    target = posixpath.normpath(posixpath.join(workdir, dest))
    return Copy(tuple(normalized), target, into, uid, gid, f"COPY {rest}")


def _workdir(rest: str, workdir: str) -> Workdir | str:
    if "$" in rest:
        return "its WORKDIR has a variable"
    words = _words(rest)
    if len(words) != 1:
        return "a WORKDIR is not one path"
    return Workdir(posixpath.normpath(posixpath.join(workdir, words[0])), f"WORKDIR {rest}")


def _setting(keyword: str, rest: str) -> Setting | str:
    if keyword in ("CMD", "ENTRYPOINT"):
        if rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return Setting(keyword, value, f"{keyword} {json.dumps(value)}")
        # the shell form (and, as Docker reads it, a JSON list that does not parse)
        value = ["/bin/sh", "-c", rest]
        return Setting(keyword, value, f"{keyword} {json.dumps(value)}", shell=True)
    if "$" in rest:
        return f"its {keyword} has a variable"
    if keyword == "USER":
        words = _words(rest)
        if len(words) != 1:
            return "a USER is not one name"
        return Setting(keyword, words[0], f"USER {words[0]}")
    if keyword == "EXPOSE":
        ports = []
        for word in _words(rest):
            if not (m := _PORT.fullmatch(word)) or not 0 < int(m.group(1)) < 65536:
                return f"an EXPOSE port {word!r} is not one port"
            ports.append(f"{int(m.group(1))}/{m.group(2) or 'tcp'}")
        return Setting(keyword, ports, f"EXPOSE map[{' '.join(p + ':{}' for p in sorted(ports))}]")
    pairs = _pairs(rest)
    if isinstance(pairs, str):
        return pairs
    return Setting(keyword, pairs, f"{keyword} {' '.join(f'{k}={v}' for k, v in pairs)}")


def _pairs(rest: str) -> list[tuple[str, str]] | str:
    """`NAME=value …`, or the old `NAME value with spaces` form."""
    words = _words(rest)
    if not words:
        return "an ENV or LABEL sets nothing"
    if "=" not in words[0]:
        name, _, value = rest.partition(" ")
        return [(name, value.strip())]
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            return f"{word!r} is not NAME=value"
        pairs.append((name, value))
    return pairs


def _words(rest: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        return rest.split()

"""Read what a build needs from a Dockerfile: the ARG names it declares and its stage names."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator, Mapping

from rack.logs.masking import SECRET_NAME

_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(\S*)\s*")
_HEREDOC = re.compile(r"<<-?([\"']?)([A-Za-z_][A-Za-z0-9_]*)\1")
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_HEREDOC_INSTRUCTIONS = {"RUN", "COPY", "ADD"}


def declared_args(text: str) -> list[str]:
    """Return the names declared by `ARG NAME[=default]` in any stage, in order, once each."""
    names: list[str] = []
    for keyword, rest in _instructions(text):
        if keyword == "ARG":
            for word in _words(rest):
                name = word.split("=", 1)[0]
                if _ARG_NAME.fullmatch(name) and name not in names:
                    names.append(name)
    return names


def has_target(text: str, name: str) -> bool:
    """Tell whether a stage is named name (`FROM image AS name`, case-insensitive as in Docker)."""
    for keyword, rest in _instructions(text):
        words = [word.lower() for word in rest.split() if not word.startswith("--")]
        if keyword == "FROM" and len(words) >= 3 and words[1] == "as" and words[2] == name.lower():
            return True
    return False


def base_images(text: str, args: Mapping[str, str]) -> list[str] | None:
    """Return the outside images the Dockerfile reads: each stage's FROM and each `COPY --from=IMAGE`.

    Earlier stages (by name or number) and `scratch` are not images; ARGs declared before the first FROM
    are expanded with `args` over their defaults. None when an image cannot be known from the text (an
    unset or modified `${…}`, or a `RUN --mount` from another image).
    """
    defaults: dict[str, str | None] = {}
    stages: list[str] = []
    images: list[str] = []
    for keyword, rest in _instructions(text):
        words = rest.split()
        if keyword == "ARG" and not stages:
            for word in _words(rest):
                name, sep, value = word.partition("=")
                defaults[name] = args.get(name, value if sep else None)
        elif keyword == "FROM":
            names = [w for w in words if not w.startswith("--")]
            image = _expand(names[0], defaults) if names else None
            if image is None:
                return None
            if image.lower() not in stages and image != "scratch":
                images.append(image)
            stages.append(names[2].lower() if len(names) >= 3 and names[1].lower() == "as" else "")
        elif keyword in ("COPY", "ADD"):
            for word in words:
                if word.startswith("--from="):
                    source = word.split("=", 1)[1]
                    if source.lower() not in stages and not (source.isdigit() and int(source) < len(stages)):
                        images.append(source)
        elif keyword == "RUN" and re.search(r"--mount=\S*from=", rest):
            return None
    return images


def _expand(word: str, values: Mapping[str, str | None]) -> str | None:
    unknown = False

    def value(m: re.Match) -> str:
        nonlocal unknown
        found = values.get(m.group(1) or m.group(2))
        unknown = unknown or found is None
        return found or ""

    if re.search(r"\$\{[^}]*[:?+-]", word):
        return None
    expanded = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, word)
    return None if unknown else expanded


def build_args(declared: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """Return the values from env for the declared ARG names, and nothing else; never a secret-named one.

    An ARG's value is written into the image's history (`|1 API_TOKEN=…`), so it would sit in clear text
    in the registry and in every export: secrets reach a build as secret mounts only.
    """
    return {name: env[name] for name in declared if name in env and not SECRET_NAME.search(name)}


def withheld_args(declared: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """Return the declared ARG names that have a value but are not passed, because they look secret."""
    return [name for name in declared if name in env and SECRET_NAME.search(name)]


def withheld_notice(name: str) -> str:
    """Return the build log's line saying why a build arg was not passed, and what to do instead."""
    return (
        f"Not passing build arg {name}: its name looks secret, and an ARG's value stays in the image's "
        f"history, the registry and exports. Read it from a secret mount instead: "
        f"RUN --mount=type=secret,id={name} (at /run/secrets/{name}; with RACK_BUILDER=buildkit)"
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """Return every instruction as (KEYWORD, rest), continued lines joined, comments left out."""
    return list(_instructions(text))


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """Yield each instruction as (KEYWORD, rest), joining continued lines, skipping comments and heredocs."""
    lines, escape, start = text.splitlines(), "\\", 0
    while start < len(lines) and (match := _DIRECTIVE.fullmatch(lines[start].strip())):  # directives lead
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        start += 1
    pending: list[str] = []
    heredocs: list[str] = []
    for line in lines[start:]:
        stripped = line.strip()
        if heredocs:
            if stripped == heredocs[0]:
                heredocs.pop(0)
            continue
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comments and blank lines vanish, even inside a continued instruction
        if stripped.endswith(escape):
            pending.append(line.rstrip()[:-1])
            continue
        keyword, rest = _instruction("".join([*pending, line]))
        pending = []
        if keyword:
            if keyword in _HEREDOC_INSTRUCTIONS:
                heredocs = [match.group(2) for match in _HEREDOC.finditer(rest)]
            yield keyword, rest
    keyword, rest = _instruction("".join(pending))
    if keyword:  # a continuation on the last line
        yield keyword, rest


def _instruction(logical: str) -> tuple[str, str]:
    words = logical.split(None, 1)
    return (words[0].upper(), words[1].strip() if len(words) > 1 else "") if words else ("", "")


def _words(rest: str) -> list[str]:
    try:
        return shlex.split(rest, comments=False, posix=True)
    except ValueError:  # an unbalanced quote in a default value: fall back to plain words
        return rest.split()

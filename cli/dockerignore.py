"""The build context's paths under `.dockerignore` rules, selected exactly as the docker SDK selects them.

The SDK's `exclude_paths` (docker/utils/build.py) walks the folder with two stat calls per entry and
tries every pattern on every path and on every prefix of its parent. This walk makes the same choices
in one `os.scandir` pass: each pattern is read by the SDK's own `Pattern` and compiled once by its own
`fnmatch.translate`, a parent's prefixes are matched once per folder rather than once per entry, the
last matching pattern decides (as the SDK's loop does, which lets the last match win), and with no
excluding pattern nothing is matched at all. Whether an entry is a folder comes from the listing
itself (d_type), not a stat call.
tests/test_source_packaging.py compares the two on a tree of awkward names and patterns.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    """One `.dockerignore` line as the SDK reads it (its own `Pattern`), with its regex compiled once."""

    exclusion: bool
    dirs: tuple[str, ...]
    cleaned: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, line: str) -> Pattern:
        from docker.utils import build, fnmatch  # imported when packaging: keeps other commands quick

        read = build.Pattern(line)
        cleaned = read.cleaned_pattern
        return cls(read.exclusion, tuple(read.dirs), cleaned, re.compile(fnmatch.translate(cleaned.lower())))


def walk(root: str, lines: list[str]) -> list[str]:
    """Return the path (relative to root) of every file and folder the lines leave in, sorted.

    `lines` are the `.dockerignore` lines plus the `!` exceptions the caller always sends; the SDK's
    own `!Dockerfile` and `!.dockerignore` are added here, as `exclude_paths` adds them.
    """
    patterns = [p for p in map(Pattern.parse, [*lines, "!Dockerfile", "!.dockerignore"]) if p.dirs]
    excluding = any(not p.exclusion for p in patterns)
    exceptions = [p.cleaned for p in patterns if p.exclusion]
    last_first = patterns[::-1]
    found: list[str] = []

    def visit(folder: str, prefix: str, parents: list[str]) -> None:
        # a pattern of k components also matches an entry whose parent's first k components it matches
        by_parent = [
            bool(parents) and len(p.dirs) <= len(parents) and bool(p.regex.match(_join_lower(parents, p)))
            for p in last_first
        ]
        with os.scandir(folder) as listing:
            entries = list(listing)
        for entry in entries:
            path = prefix + entry.name
            matched = excluding and _matches(path.lower(), last_first, by_parent)
            if not matched:
                found.append(path)
            if not entry.is_dir(follow_symlinks=False):
                continue
            if matched and not any(cleaned.startswith(path) for cleaned in exceptions):
                continue  # an excluded folder no exception reaches into
            visit(entry.path, path + "/", [*parents, entry.name])

    visit(root, "", [])
    found.sort()
    return found


def _join_lower(parents: list[str], pattern: Pattern) -> str:
    return "/".join(parents[: len(pattern.dirs)]).lower()


def _matches(path: str, last_first: list[Pattern], by_parent: list[bool]) -> bool:
    """Whether the path is excluded: the last pattern matching it (or its parent's prefix) decides."""
    for pattern, parent in zip(last_first, by_parent, strict=True):
        if parent or pattern.regex.match(path):
            return not pattern.exclusion
    return False

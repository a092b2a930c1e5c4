"""The build context's paths under `.dockerignore` rules, selected exactly as the docker SDK selects them.

The SDK's `exclude_paths` (docker/utils/build.py) walks the folder with two stat calls per entry and
tries every pattern on every path and on every prefix of its parent. This walk makes the same choices
in one `os.scandir` pass: each pattern is compiled once (by the SDK's own translation, below), a
parent's prefixes are matched once per folder rather than once per entry, the last matching pattern
decides (as the SDK's loop does, which lets the last match win), and with no excluding pattern nothing
is matched at all. Whether an entry is a folder comes from the listing itself (d_type), not a stat call.
tests/test_source_packaging.py compares the two on a tree of awkward names and patterns.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    """One `.dockerignore` line as the SDK reads it: `!` for an exception, path components cleaned."""

    exclusion: bool
    dirs: tuple[str, ...]
    cleaned: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, line: str) -> Pattern:
        exclusion = line.startswith("!")
        dirs = _normalize(line[1:] if exclusion else line)
        cleaned = "/".join(dirs)
        return cls(exclusion, tuple(dirs), cleaned, re.compile(translate(cleaned.lower())))


def _normalize(pattern: str) -> list[str]:
    """Components without `.`, each `..` removing the one before it (docker's Pattern.normalize)."""
    split = [part for part in pattern.strip().split("/") if part and part != "."]
    i = 0
    while i < len(split):
        if split[i] == "..":
            del split[i]
            if i > 0:
                del split[i - 1]
                i -= 1
        else:
            i += 1
    return split


def translate(pat: str) -> str:
    """A shell pattern as a regular expression, as docker/utils/fnmatch.py translates it (`**` spans
    folders, `*` and `?` do not, `[...]` sets, no escapes)."""
    i, n = 0, len(pat)
    res = "^"
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            if i < n and pat[i] == "*":
                i += 1
                if i < n and pat[i] == "/":  # `**/` is `**`
                    i += 1
                res += ".*" if i >= n else "(.*/)?"
            else:
                res += "[^/]*"
        elif c == "?":
            res += "[^/]"
        elif c == "[":
            j = i
            if j < n and pat[j] == "!":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                res += "\\["
            else:
                stuff = pat[i:j].replace("\\", "\\\\")
                i = j + 1
                if stuff[0] == "!":
                    stuff = "^" + stuff[1:]
                elif stuff[0] == "^":
                    stuff = "\\" + stuff
                res += f"[{stuff}]"
        else:
            res += re.escape(c)
    return res + "$"


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

"""A context's `.dockerignore`, read as the engine reads it, as the test of what the context holds.

Patterns are read and matched by the docker SDK (`PatternMatcher`), which the classic builder's context
goes through. The SDK always keeps the Dockerfile and `.dockerignore` itself; BuildKit's context leaves
them out when a pattern does (so does this under RACK_BUILDER=buildkit).
"""

from __future__ import annotations

from pathlib import Path

from docker.utils.build import PatternMatcher

from rack.pipeline.direct.files import Keep

MAX_BYTES = 1024 * 1024


def rules(context: Path, dockerfile: str, *, builder: str) -> Keep | str:
    """The context's test of a relative path (None when it has no `.dockerignore`), or why the rack
    does not read it (the engine then builds)."""
    path = context / ".dockerignore"
    if (context / f"{dockerfile}.dockerignore").exists():
        return "the Dockerfile has its own .dockerignore"
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES:
        return "its .dockerignore is not a small file"
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        return "its .dockerignore is not UTF-8 text"
    patterns = [line.strip() for line in text.splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    if builder == "classic":
        matcher = PatternMatcher([*patterns, f"!{dockerfile}"])
    else:
        matcher = PatternMatcher(patterns)
        matcher.patterns.pop()  # the SDK's own "!.dockerignore", which BuildKit does not add
    return lambda relative: not matcher.matches(relative)

"""The rack's own log lines: configured once per process (API and workers), with the build they belong to.

Every line has its time (UTC, ms), level and logger; lines written while a build runs (in its thread, or in
the threads it starts with `in_context`) also carry `build` and `task`, from context variables set by
`build_context`. `RACK_LOG_FORMAT=json` writes one JSON object a line instead of text.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

build_id: contextvars.ContextVar[str] = contextvars.ContextVar("build_id", default="")
task_id: contextvars.ContextVar[str] = contextvars.ContextVar("task_id", default="")
_MARK = "_rack_handler"


@contextlib.contextmanager
def build_context(build: str, task: str = "") -> Iterator[None]:
    """Tag every log line written in this block (and threads started with `in_context`) with the build."""
    tokens = build_id.set(build), task_id.set(task)
    try:
        yield
    finally:
        build_id.reset(tokens[0])
        task_id.reset(tokens[1])


def in_context(target: Callable[..., Any]) -> Callable[..., Any]:
    """Return `target` bound to a copy of the current context, for a thread that logs for this build."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(target, *args, **kwargs)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update(build=build_id.get(), task=task_id.get())
        return True


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        where = "".join(f" {key}={value}" for key in ("build", "task") if (value := getattr(record, key, "")))
        line = f"{_stamp(record)} {record.levelname} {record.name}{where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _stamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("build", "task"):
            if value := getattr(record, key, ""):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(
    fmt: str = "text", *, level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send the root logger's lines to stderr (or `stream`) in `fmt` ("text" or "json"); once per process."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, _MARK, False):
            return handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler

"""Why a build failed: every stable reason code, whose fault it is, and what it means, in one place.

A failed build's `reason` is `<code>: <message>`. Codes starting `user:` are the app's to fix, `platform:`
ones the rack's; `cancelled`, `timeout`, `expired` and `worker-lost` are outcomes rather than faults. The
README's table is made from this enum (`python -m rack reasons`), and a test keeps the two equal.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """A stable failure code, with `kind` ("user", "platform" or "outcome") and a one-line `meaning`."""

    kind: str
    meaning: str

    def __new__(cls, code: str, kind: str, meaning: str) -> Reason:
        member = str.__new__(cls, code)
        member._value_ = code
        member.kind = kind
        member.meaning = meaning
        return member

    SOURCE = "user:source", "user", "the source could not be fetched, or its archive or tree is refused"
    MANIFEST = "user:manifest", "user", "convox.yml is missing, too large, not text, or not valid"
    DOCKERFILE = "user:dockerfile", "user", "a Dockerfile is missing, unreadable or refused by the engine"
    BASE_IMAGE = "user:base-image", "user", "a FROM image is neither in the engine nor in the rack's registry"
    IMAGE = "user:image", "user", "a service's `image:` could not be pulled"
    STEP = "user:step", "user", "a Dockerfile step failed (the message names the step and its exit code)"
    MEMORY = "user:memory", "user", "a step was killed for using more memory than the build's limit"
    CANCELLED = "cancelled", "outcome", "someone cancelled the build"
    TIMEOUT = "timeout", "outcome", "the build ran longer than the app's or the rack's timeout"
    EXPIRED = "expired", "outcome", "no worker started the build within the queue expiry"
    WORKER_LOST = "worker-lost", "outcome", "the worker running the build stopped heartbeating"
    ENGINE = "platform:engine", "platform", "the Docker engine was unreachable or failed a request"
    REGISTRY = "platform:registry", "platform", "the rack's registry refused or failed a push or pull"
    DISK = "platform:disk", "platform", "the worker's disk is full"
    STORAGE = "platform:storage", "platform", "the object store failed reading the source or writing the log"
    GIT = "platform:source", "platform", "the worker cannot fetch sources (e.g. git is not installed)"
    UNAVAILABLE = "platform:unavailable", "platform", "Postgres or Redis could not be reached while building"
    QUEUE = "platform:queue", "platform", "the build could not be queued (the broker is unreachable)"
    INTERRUPTED = "platform:interrupted", "platform", "the worker process was stopped while building"
    LOST = "platform:lost", "platform", "the build was ended by someone else while its worker ran it"
    INTERNAL = (
        "platform:internal",
        "platform",
        "an unexpected error in the rack (traceback in the worker's log)",
    )

    def __call__(self, message: str) -> str:
        """Return the reason text stored on a build: the code, then the message."""
        return f"{self.value}: {message}"


def table() -> str:
    """Return every reason as a Markdown table, as the README lists them."""
    rows = ["| code | whose | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{r.value}` | {r.kind} | {r.meaning} |" for r in Reason]
    return "\n".join(rows) + "\n"

"""Domain errors, each with the HTTP status the API answers with."""

from __future__ import annotations

from rack.reasons import Reason


class RackError(Exception):
    """Base of every error the domain raises on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(RackError):
    """The request is malformed (bad parameter, bad key, bad name)."""

    status = 400


class Unauthorized(RackError):
    status = 401


class Forbidden(RackError):
    status = 403


class NotFound(RackError):
    status = 404


class Conflict(RackError):
    status = 409


class Busy(Conflict):
    """The build must wait for an earlier one (of the same webhook) to end; try it again shortly."""


class TooLarge(RackError):
    status = 413


class TooMany(RackError):
    """Too many attempts in a while (wrong sign-in passwords); try again later."""

    status = 429


class Unprocessable(RackError):
    """The request is well formed but its content cannot be used (e.g. a bad manifest)."""

    status = 422


class BadGateway(RackError):
    """A service the rack depends on (the registry) refused or failed what it was asked."""

    status = 502


class Unavailable(RackError):
    """A backing service (Postgres, Redis, the object store) cannot be reached right now."""

    status = 503


class AtCapacity(Unavailable):
    """This process is at a limit (e.g. of open log streams); the client should retry shortly."""

    retry_after = 5


class BuildError(RackError):
    """A build failed; `code` is a stable `Reason` (see rack/reasons.py), the message is for a person."""

    kind = "app"

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def reason(self) -> str:
        return self.code(self.message)


class BuildUserError(BuildError):
    """The build failed by the user's doing: bad manifest, bad Dockerfile, failing RUN step."""

    kind = "user"


class BuildPlatformError(BuildError):
    """The build failed by the rack's doing: registry or engine down, disk full."""

    kind = "platform"

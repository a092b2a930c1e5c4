"""Times as Convox clients read and write them."""

from __future__ import annotations

from datetime import UTC, datetime

from rack.errors import Invalid

ZERO = "0001-01-01T00:00:00Z"


def rfc3339(value: datetime | None) -> str:
    """Format a time as RFC 3339 in UTC; an unset time is Go's zero time, as Convox sends it."""
    if value is None:
        return ZERO
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_convox(value: str) -> datetime:
    """Parse Convox's wire time `20060102.150405.000000000` (or RFC 3339) as a UTC time."""
    parsed = None
    head, _, frac = value.rpartition(".")
    try:
        parsed = datetime.strptime(f"{head}.{frac[:6]}", "%Y%m%d.%H%M%S.%f")
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    if parsed is None:
        raise Invalid(f"invalid time {value!r}: use 20060102.150405.000000000 or RFC 3339")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # a time with no zone is read as UTC, never as the server's
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        parsed = None
    if parsed is None or not 1970 <= parsed.year <= 9999:
        raise Invalid(f"invalid time {value!r}: out of range")
    return parsed

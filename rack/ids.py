"""Convox-shaped identifiers: a prefix and ten random uppercase letters."""

from __future__ import annotations

import re
import secrets
import string

from rack.errors import NotFound

_ID = re.compile(r"[A-Z]{11}")


def new_id(prefix: str) -> str:
    """Make an ID such as `BABCDEFGHIJ` for a build or `R…` for a release."""
    return prefix + "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def check_id(kind: str, value: str) -> str:
    """Answer 404 at once for anything that cannot be an ID of this kind."""
    if not _ID.fullmatch(value or "") or not value.startswith(kind[0].upper()):
        raise NotFound(f"{kind} not found: {value}")
    return value

"""Hide credentials in URLs before they are shown, logged or stored."""

from __future__ import annotations

import re

# `scheme://user:password@host` anywhere in a text: the user-info part, up to the last `@` before the host.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)?//[^/@\s]*@")


def scrub(text: str) -> str:
    """Replace the `user:password@` of every URL in `text` with `***@`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme') or ''}//***@", text)

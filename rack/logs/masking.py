"""Keep build secrets out of build logs.

Masking works on one appended line at a time: the build pipeline appends whole lines, so a secret is
caught whenever it sits on one line. A secret split across two appends (a partial line followed by its
rest) is not caught; neither is a secret the build transforms (base64, URL-encoding) before printing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_SECRET_LENGTH = 3
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.IGNORECASE)


class Masker:
    """Replace every known secret value in a piece of text with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            # Masking works line by line, so each line of a multi-line secret (a PEM key) is its own secret.
            for piece in [secret, *secret.splitlines()]:
                if len(piece) >= MIN_SECRET_LENGTH:
                    values.add(piece)
        # Longest first, so a secret containing a shorter one is masked whole.
        ordered = sorted(values, key=lambda v: (-len(v), v))
        self._count = len(ordered)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"<Masker of {self._count} secret(s)>"

    def mask(self, text: str) -> str:
        """Return `text` with every secret replaced by `***`."""
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def mask_bytes(self, data: bytes) -> bytes:
        """Return `data` with every secret replaced by `***`, other bytes untouched even if not UTF-8."""
        if self._pattern is None:
            return data
        # surrogateescape round-trips any byte, so what isn't a secret comes back exactly as it was.
        return self._pattern.sub(MASK, data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )


def secret_values(build_args: Mapping[str, str], extra: Iterable[str] = ()) -> list[str]:
    """Select the build-arg values whose names look secret, plus the `extra` values (registry credentials)."""
    chosen = [value for name, value in build_args.items() if SECRET_NAME.search(name)]
    chosen.extend(extra)
    return list(dict.fromkeys(value for value in chosen if value))

"""Build output made safe for a terminal: colours pass, every other control sequence is dropped.

A build prints what its Dockerfile's commands print; written raw to a terminal, that could move the
cursor, clear the screen, set the window title or the clipboard (OSC 52), or hide lines with carriage
returns. Only SGR sequences (`ESC [ … m`: colours and bold), tabs and newlines pass. Pipes and files get
the log byte for byte.
"""

from __future__ import annotations

import codecs
import re
from typing import BinaryIO

_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI, e.g. cursor moves, erase; SGR (…m) is the one kept
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC, e.g. window title, clipboard, hyperlinks
    r"|\x1b[PX^_][^\x1b]*\x1b\\"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-OQ-WYZ\\`-~]"  # other escapes (charset switches, reset), not the openers above
    r"|\x9b[0-?]*[ -/]*[@-~]"  # CSI as one C1 character
    r"|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f\x80-\x9f]"  # C0 controls but tab and newline, DEL, C1
    r"|\x1b"  # an escape that starts none of the above
)
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_HOLD = 512  # an unfinished sequence at a chunk's end waits for the next chunk, up to this long


_START = re.compile(r"[\x1b\x9b]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f\x80-\x9f]")


def _filter(text: str, *, final: bool) -> tuple[str, str]:
    """Return `text` cleaned, and the unfinished sequence at its end held back (unless `final`)."""
    out, pos = [], 0
    while match := _START.search(text, pos):
        start = match.start()
        out.append(_CONTROL.sub("", text[pos:start]))
        seq = _SEQUENCE.match(text, start)
        if seq is not None and seq.group(0) not in ("\x1b", "\x9b"):
            if _SGR.fullmatch(seq.group(0)):
                out.append(seq.group(0))
            pos = seq.end()
            continue
        if not final and len(text) - start <= _HOLD:
            return "".join(out), text[start:]
        pos = start + 1  # an escape that starts nothing known (or never ends): dropped alone
    out.append(_CONTROL.sub("", text[pos:]))
    return "".join(out), ""


def clean(text: str) -> str:
    """Remove every control sequence but SGR colours."""
    return _filter(text, final=True)[0]


class TerminalSafe:
    """Write log bytes to a terminal with every control sequence but colours removed."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""

    def write(self, data: bytes) -> int:
        text, self._held = _filter(self._held + self._decoder.decode(data), final=False)
        self.out.write(text.encode("utf-8"))
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    def end(self) -> None:
        """Write what was held back (cleaned: an unfinished sequence is dropped)."""
        text, self._held = _filter(self._held + self._decoder.decode(b"", final=True), final=True)
        self.out.write(text.encode("utf-8"))
        self.out.flush()


def end(out) -> None:
    """End a log written through `for_terminal`: what a TerminalSafe held back goes out."""
    if isinstance(out, TerminalSafe):
        out.end()


def for_terminal(out: BinaryIO):
    """Return `out` itself, or a TerminalSafe writer on it when it is a terminal."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalSafe(out) if tty else out

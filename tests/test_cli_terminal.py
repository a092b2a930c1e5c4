"""Build output on a terminal: colours pass, every other control sequence is dropped; pipes get it raw."""

from __future__ import annotations

import io
import os
import pty
import subprocess

import pytest

from cli.terminal import TerminalSafe, clean
from tests.helpers import BIN

HOSTILE = (
    "\x1b[1;31mred and bold\x1b[0m\n"
    "\x1b]0;owned title\x07\x1b]52;c;cm0gLXJmIH4=\x1b\\\x1b[2J\x1b[H\x1b[3A\x1b[?1049h"
    "hidden\rshown\x1b(0\x9b2J\x07\x08 end ✓\n"
)
SAFE = "\x1b[1;31mred and bold\x1b[0m\nhiddenshown end ✓\n"


def test_only_colours_tabs_and_newlines_pass():
    assert clean(HOSTILE) == SAFE
    assert clean("a\tb\x1b[38;5;208mc\x1b[m\n") == "a\tb\x1b[38;5;208mc\x1b[m\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_a_sequence_split_across_chunks_is_still_seen_whole(size):
    data, out = HOSTILE.encode(), io.BytesIO()
    writer = TerminalSafe(out)
    for start in range(0, len(data), size):
        writer.write(data[start : start + size])
    writer.end()
    assert out.getvalue().decode() == SAFE


def run_logs(env: dict, build_id: str, *, tty: bool) -> bytes:
    argv = [str(BIN / "convox"), "builds", "logs", build_id, "-a", "logs"]
    if not tty:
        return subprocess.run(argv, env=env, capture_output=True, timeout=60, check=True).stdout
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(60) == 0
    return out


def test_builds_logs_cleans_a_terminal_and_passes_a_pipe_raw(cli_env, sim):
    build = sim()
    build.start()
    build.write(HOSTILE)
    build.finish()
    env = {**os.environ, **cli_env}
    assert run_logs(env, build.id, tty=False) == HOSTILE.encode()
    shown = run_logs(env, build.id, tty=True).replace(b"\r\n", b"\n")  # the terminal's own line ends
    assert shown == SAFE.encode()

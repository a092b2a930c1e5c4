"""Start detached processes, track them by pidfile, probe them and stop them."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Popen objects of the children this process spawned, so they are reaped (never left as zombies
# that look alive to kill(pid, 0)) and never garbage-collected with a "still running" warning.
_children: dict[int, subprocess.Popen] = {}


class StartError(RuntimeError):
    """A service did not come up."""


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment with the system sbin folders on PATH, plus `extra`."""
    env = dict(os.environ)
    path = env.get("PATH", "")
    missing = [p for p in SYSTEM_PATH.split(":") if p not in path.split(":")]
    env["PATH"] = ":".join([p for p in [path, *missing] if p])
    env.update(extra or {})
    return env


def spawn(
    argv: Sequence[str | os.PathLike],
    *,
    log: Path,
    pidfile: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start `argv` in its own session with output appended to `log`; record and return its pid."""
    with open(log, "ab", buffering=0) as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=devnull,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=base_env(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    _children[proc.pid] = proc
    if pidfile is not None:
        write_pid(pidfile, proc.pid)
    return proc.pid


def write_pid(pidfile: Path, pid: int) -> None:
    """Write `pid` to `pidfile` atomically."""
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_pid(pidfile: Path) -> int | None:
    """Return the pid on the first line of `pidfile`, or None if there is none."""
    try:
        first = pidfile.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def alive(pid: int | None, name: str | None = None) -> bool:
    """Tell whether `pid` runs (isn't exiting or a zombie) and has `name`, if given, in its command line."""
    state, cmdline = _proc_state(pid)
    if state is None or state in "ZX" or not cmdline:
        return False
    return name is None or name.encode() in cmdline


def wait_exited(pid: int | None, *, timeout: float = 10.0) -> None:
    """If `pid` is exiting or a zombie, wait until it has left the process table (reaping our own)."""
    state, cmdline = _proc_state(pid)
    if state is not None and (state in "ZX" or not cmdline):
        wait_for(lambda: _proc_state(pid)[0] is None, timeout=timeout)


def _proc_state(pid: int | None) -> tuple[str | None, bytes]:
    """Return the state letter and command line of `pid`, None if it is gone (or our child and reaped).

    A process with SIGKILL pending is reported as "X" (dying) although it may still look alive.
    """
    if not pid:
        return None, b""
    for _ in range(20):
        child = _children.get(pid)
        if child is not None and child.poll() is not None:
            _children.pop(pid, None)
            return None, b""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None, b""
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pending = int(fields.get("SigPnd", "0"), 16) | int(fields.get("ShdPnd", "0"), 16)
        state = "X" if pending & (1 << (signal.SIGKILL - 1)) else fields.get("State", "X").strip()[:1]
        # No command line: either exiting, or in the middle of exec (Popen returns before the kernel
        # has set it). Both last a moment; look again.
        if cmdline or state in "ZX":
            return state, cmdline
        time.sleep(0.01)
    return state, cmdline


def kill(
    pid: int | None, *, sig: int = signal.SIGTERM, timeout: float = 15.0, name: str | None = None
) -> bool:
    """Send `sig` to `pid`, SIGKILL it after `timeout`, wait for it to exit; False if it wasn't running."""
    if not alive(pid, name):
        return False
    assert pid is not None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    if not wait_for(lambda: not alive(pid), timeout=timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not wait_for(lambda: not alive(pid), timeout=10):
            raise StartError(f"pid {pid} survived SIGKILL")
    return True


def wait_for(check: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Call `check` until it returns true or `timeout` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server could listen on host:port now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, avoid: Iterable[int] = ()) -> list[int]:
    """Return `count` distinct loopback ports free now, outside the kernel's range for outgoing connections.

    A port from that range (what binding port 0 gives) can be taken by any client's connection
    between the moment it is chosen and the moment the server binds it.
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    rng = random.SystemRandom()
    chosen: list[int] = []
    skip = set(avoid)
    for _ in range(10_000):
        if len(chosen) == count:
            return chosen
        port = rng.randrange(10_000, 65_536)
        if not low <= port <= high and port not in skip and port_free(port):
            chosen.append(port)
            skip.add(port)
    raise StartError(f"found only {len(chosen)} free ports out of {count}")


def log_tail(log: Path, lines: int = 20) -> str:
    """Return the last `lines` lines of a log file, for error messages."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def pids_with(needle: str) -> list[int]:
    """Return the pids of live processes whose command line contains `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle.encode() in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found

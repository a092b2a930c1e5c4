"""Start detached processes, track them by pidfile, probe them and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
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


def read_pid(pidfile: Path) -> int | None:
    """Return the pid on the first line of `pidfile`, or None if there is none."""
    try:
        first = pidfile.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def alive(pid: int | None, name: str | None = None) -> bool:
    """Tell whether `pid` runs (not a zombie) and, if `name` is given, has it in its command line."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state in (b"Z", b"X"):
        _reap(pid)
        return False
    return name is None or name.encode() in cmdline


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


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
        interval = min(interval * 1.5, 0.5)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server could listen on host:port now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports that are free on loopback right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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

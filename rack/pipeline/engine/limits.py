"""The engine's cgroup: one memory limit and CPU quota over the build steps it runs, and word of OOM kills.

An engine started with `--cgroup-parent NAME` runs every container under the cgroup NAME (BuildKit's RUN
steps as `NAME/buildkit/<step>`, the classic builder's as `NAME/<container>`); RACK_BUILD_CGROUP names it.
Before each build the worker writes RACK_BUILD_MEMORY (memory and memory+swap) and RACK_BUILD_CPUS (a CFS
quota) into it, so the steps running at once on that engine share one budget. A step's own cgroup is gone
by the time its failure is reported, so an OOM kill is learnt from the engine cgroup's OOM notification
(an eventfd on `memory.oom_control`), which the kernel sends for an OOM anywhere below it. cgroup v1.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from rack.errors import BuildPlatformError
from rack.reasons import Reason

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000  # CFS period; the quota is RACK_BUILD_CPUS of it
UNLIMITED = "-1"


def mib(size: int) -> str:
    """Spell a byte count for a person: `64 MiB`."""
    return f"{size / 1024**2:.0f} MiB" if size >= 1024**2 else f"{size} bytes"


class EngineCgroup:
    """The cgroup an engine runs its containers under (its `--cgroup-parent`), in the v1 hierarchies."""

    def __init__(self, name: str, *, root: Path = ROOT) -> None:
        self.name = name.strip("/")
        self.memory = root / "memory" / self.name
        self.cpu = root / "cpu" / self.name

    def exists(self) -> bool:
        return self.memory.is_dir() and self.cpu.is_dir()

    def apply(self, *, memory: int, cpus: float) -> None:
        """Bound everything below the cgroup to `memory` bytes (0: no bound) and `cpus` CPUs (0: none)."""
        if not self.exists():
            raise BuildPlatformError(
                Reason.ENGINE,
                f"the engine's cgroup {self.name!r} (RACK_BUILD_CGROUP) is not in {self.memory.parent} and "
                f"{self.cpu.parent}: start the engine with --cgroup-parent /{self.name} after making it",
            )
        limit = str(memory) if memory else UNLIMITED
        swap = self.memory / "memory.memsw.limit_in_bytes"  # absent when the kernel does not account swap
        try:
            # memory+swap may never be below memory: lift it, set memory, then bring it down to memory.
            if swap.exists():
                _write(swap, UNLIMITED)
            _write(self.memory / "memory.limit_in_bytes", limit)
            if swap.exists():
                _write(swap, limit)
            _write(self.cpu / "cpu.cfs_period_us", str(PERIOD_US))
            _write(
                self.cpu / "cpu.cfs_quota_us", str(max(1000, int(cpus * PERIOD_US))) if cpus else UNLIMITED
            )
        except OSError as exc:
            raise BuildPlatformError(
                Reason.ENGINE, f"setting the build limits on the engine's cgroup {self.name!r}: {exc}"
            ) from exc

    def watch_oom(self) -> OomWatch:
        """Start counting the OOM kills below the cgroup; close the watch when done."""
        return OomWatch(self.memory)


class OomWatch:
    """An eventfd the kernel signals on each OOM in a memory cgroup or below it."""

    def __init__(self, memory: Path) -> None:
        self.fired = 0
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control = os.open(memory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _write(memory / "cgroup.event_control", f"{self._efd} {control}")
        except OSError:
            os.close(self._efd)
            raise
        finally:
            os.close(control)  # the kernel holds its own reference once registered

    def killed(self) -> bool:
        """Tell whether any OOM happened below the cgroup since the watch began."""
        with contextlib.suppress(BlockingIOError):
            self.fired += os.eventfd_read(self._efd)
        return self.fired > 0

    def close(self) -> None:
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1

    def __enter__(self) -> OomWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)

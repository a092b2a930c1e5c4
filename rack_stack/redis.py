"""Redis on loopback with an append-only file (a restart keeps the log streams), behind a password."""

from __future__ import annotations

from rack_stack import procs
from rack_stack.service import Service


class Redis(Service):
    """A private redis-server with its data in `<home>/redis`."""

    name = "redis"
    proc_name = "redis-server"

    @property
    def port(self) -> int:
        return self.stack.ports["redis"]

    @property
    def address(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        """Tell whether Redis answers PING (it answers LOADING while it replays its file)."""
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.stack.secrets["redis"],
            socket_timeout=2, socket_connect_timeout=1,
        )  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def launch(self) -> int:
        """Write redis.conf and start redis-server in the foreground of its own session."""
        data = self.home / "redis"
        data.mkdir(exist_ok=True)
        conf = self.home / "redis.conf"
        # Not `daemonize yes`: spawn() already detaches it, and this way the pid is known at once.
        fsync = "no" if self.stack.fast else "everysec"
        # The password sits in the file (mode 0600), not on the command line, where `ps` would show it.
        procs.write_private(
            conf,
            "# Written by rack_stack on every start.\n"
            f'bind 127.0.0.1\nport {self.port}\ndir "{data}"\n'
            f'daemonize no\nlogfile ""\nappendonly yes\nappendfsync {fsync}\nsave ""\n'
            f"requirepass {self.stack.secrets['redis']}\n",
        )
        return procs.spawn(["redis-server", conf], log=self.log, pidfile=self.pidfile, cwd=data)

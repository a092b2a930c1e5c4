"""How the API is served: gunicorn with gevent workers, so a log follower costs a connection, not a thread.

`gunicorn -c python:rack_api.server rack_api.wsgi:app` reads this module as its configuration. Each
worker process serves every connection as a greenlet (psycopg2 made cooperative by psycogreen), and cuts
off clients that would otherwise hold a connection for nothing: request headers must arrive within
RACK_HEADER_TIMEOUT seconds, a body or a response that makes no progress for RACK_IDLE_TIMEOUT seconds is
cut, and one client address holds at most RACK_CONNECTIONS_PER_ADDRESS connections per process.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from rack.config import Settings, load_settings

_BUSY = json.dumps({"error": "too many connections from this address; try again shortly"}).encode() + b"\n"


def _settings() -> Settings:
    return load_settings(password=os.environ.get("RACK_PASSWORD") or "unused: only limits are read here")


class Worker(GeventWorker):
    """gunicorn's gevent worker, with an idle timeout on every socket and a per-address connection cap."""

    def init_process(self) -> None:
        settings = _settings()
        self.idle_timeout = settings.idle_timeout
        self.per_address = settings.connections_per_address
        self.connections: Counter[str] = Counter()
        super().init_process()

    def patch(self) -> None:
        super().patch()  # gevent's monkey.patch_all()
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()  # a query waits in the hub, not in the process

    def handle(self, listener, client, addr) -> None:
        host = addr[0] if isinstance(addr, tuple) and addr else str(addr)
        if self.connections[host] >= self.per_address:
            self.refuse(client)
            return
        self.connections[host] += 1
        try:
            client.setblocking(1)
            client.settimeout(self.idle_timeout or None)  # each read and write; the websocket lifts it
            AsyncWorker.handle(self, listener, client, addr)
        finally:
            self.connections[host] -= 1
            if not self.connections[host]:
                del self.connections[host]

    def refuse(self, client) -> None:
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(_BUSY)}\r\n\r\n"
        )
        try:
            client.settimeout(1)
            client.sendall(head.encode() + _BUSY)
        except OSError:
            pass
        finally:
            client.close()


_s = _settings()
worker_class = "rack_api.server.Worker"
workers = _s.api_workers
worker_connections = _s.log_followers_max + 256  # followers, plus room for every other request
keepalive = _s.header_timeout  # the gevent worker reads each request's headers within this
timeout = 120  # the worker's own heartbeat to the master (a greenlet), not a request's duration
graceful_timeout = 10
limit_request_line = 8190
limit_request_fields = 100

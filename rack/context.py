"""The rack's handles on its backing services, made once per process and passed to domain calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import redis

from rack.config import Settings
from rack.db import Database
from rack.storage import Store, open_store


def no_queue(build_id: str, *args: str) -> None:
    """Refuse to enqueue: the default for processes that do not hand builds to workers."""
    raise RuntimeError("this process cannot enqueue builds")


def no_events(hook_id: str, body: str) -> None:
    """Drop events: the default for processes with no queue to deliver them from (scripts, unit tests)."""


@dataclass
class Rack:
    """Settings plus lazily opened connections; nothing connects until first used."""

    settings: Settings
    enqueue_build: Callable[[str], None] = field(default=no_queue)
    send_event: Callable[[str, str], None] = field(default=no_events)  # (hook id, JSON body) to deliver
    # (build id, image, source user, source password): copy an image into a build on a worker
    enqueue_import: Callable[[str, str, str, str], None] = field(default=no_queue)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def store(self) -> Store:
        return open_store(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=15
        )

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.close()
        if "redis" in self.__dict__:
            self.redis.close()

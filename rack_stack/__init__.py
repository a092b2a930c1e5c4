"""Run the rack's services on loopback: Postgres, Redis, a Docker engine, a registry, the API and a worker."""

from __future__ import annotations

from rack_stack.procs import StartError
from rack_stack.stack import APP_SERVICES, SERVICES, Stack

__all__ = ["APP_SERVICES", "SERVICES", "StartError", "Stack"]

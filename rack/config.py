"""Settings: read once from `RACK_*` environment variables into one typed object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from rack.errors import RackError

GiB = 1024**3
BUILDERS = ("buildkit", "classic")
# Where a build's RUN steps run, and the network mode that every builder passes for it
# (`network_mode` of the engine's build API, `--network` of `docker build` with BuildKit).
BUILD_NETWORKS = {
    "isolated": "default",  # the engine's own bridge: egress only, no route to the rack or the host
    "none": "none",  # no network at all
    "host": "host",  # the engine's host network: only for a trusted, single-user machine
}


class ConfigError(RackError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything the API, the worker and the CLI-side tools need to know about this rack."""

    password: str = field(repr=False)
    database_url: str = field(default="postgresql://rack@127.0.0.1:5432/rack", repr=False)
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    broker_url: str = field(default="", repr=False)
    storage: str = "file:///var/lib/rack/objects"
    s3_endpoint_url: str = ""
    registry: str = "127.0.0.1:5000"
    registry_username: str = ""
    registry_password: str = field(default="", repr=False)
    docker_host: str = "unix:///var/run/docker.sock"
    name: str = "rack"
    max_upload_bytes: int = 2 * GiB
    build_timeout: int = 1800
    heartbeat_interval: int = 10
    heartbeat_timeout: int = 60
    queue_expiry: int = 3600
    extract_max_bytes: int = 8 * GiB
    extract_max_entries: int = 200_000
    extract_max_ratio: int = 100  # an archive may expand to this many times its size (at least 64 MiB)
    extract_max_depth: int = 256  # folders deep; deeper trees break tools that walk them recursively
    log_format: str = "text"  # the rack's own log lines: "text" or "json"
    keep_sources: bool = False  # keep a build's uploaded source after it ends (for debugging)
    build_dir: str = ""  # where workers make build folders; "" is <tmp>/rack-builds
    fast_push: bool = True  # images mostly made by the build stream from the engine's save (layers.py)
    direct_build: bool = True  # copy-only Dockerfiles' images written by the rack (pipeline/direct)
    manifest_max_bytes: int = 1024 * 1024
    form_max_bytes: int = 1024 * 1024  # a request's form parameters, all together
    env_max_value_bytes: int = 64 * 1024  # one environment value
    env_max_bytes: int = 512 * 1024  # an app's whole environment
    build_memory: int = 0
    build_cpus: float = 0.0
    build_cgroup: str = ""  # the engine's --cgroup-parent, where the worker sets the two limits above
    builder: str = "buildkit"  # or "classic": the engine's classic builder, for an engine without BuildKit
    build_parallel: int = 2  # services of one build built side by side
    log_stream_ttl: int = 3600
    api_workers: int = 2  # gunicorn processes serving the API
    log_followers_max: int = 1000  # open log streams per API process; past it 503 with Retry-After
    header_timeout: int = 10  # seconds a client has to send a request's headers
    idle_timeout: int = 60  # seconds a read or write of a request or response may make no progress
    connections_per_address: int = 256  # per API process
    log_max_bytes: int = 64 * 1024 * 1024  # a build's log; past it output is dropped and the cut noted
    metrics_token: str = field(default="", repr=False)  # Bearer token for /metrics; "" = the rack password
    metrics_port: int = 0  # each worker serves /metrics on this port; 0 = not at all
    app_max_running: int = 2  # builds of one app running at once; the others wait their turn
    build_attempts: int = 2  # runs of a build whose worker was lost, counting the first
    source_retention: int = 7 * 24 * 3600  # seconds a source's contents outlive the last build using them
    source_sweep_interval: int = 3600  # seconds between a worker's sweeps of unneeded contents
    source_folders_max_bytes: int = 10 * 1024**3  # the apps' source folders on a worker, all together
    git_allow_local: bool = False  # let builds clone file:// and path URLs (tests); never for shared racks
    build_network: str = "isolated"  # see BUILD_NETWORKS
    git_allow_private: bool = False  # let git URLs point at loopback, link-local and private addresses

    @property
    def celery_broker(self) -> str:
        return self.broker_url or self.redis_url


def _coerce(name: str, kind: type, raw: str):
    if kind is bool:
        if raw.strip().lower() in ("true", "1", "yes"):
            return True
        if raw.strip().lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"RACK_{name.upper()} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"RACK_{name.upper()} must be a whole number, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"RACK_{name.upper()} must be a number, got {raw!r}") from None
    return raw


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Build the settings from `RACK_<NAME>` variables; `overrides` win over the environment."""
    env = os.environ if env is None else env
    values: dict = {}
    for f in fields(Settings):
        raw = env.get(f"RACK_{f.name.upper()}")
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, type(f.default), raw)
    values.update(overrides)
    for name in ("app_max_running", "build_attempts"):
        if name in values and values[name] < 1:
            raise ConfigError(f"RACK_{name.upper()} must be at least 1, got {values[name]}")
    if values.get("build_network", "isolated") not in BUILD_NETWORKS:
        raise ConfigError(
            f"RACK_BUILD_NETWORK must be one of {', '.join(BUILD_NETWORKS)}, got {values['build_network']!r}"
        )
    if not values.get("password"):
        raise ConfigError("RACK_PASSWORD is required: set it to the password clients log in with")
    if values.get("builder", "buildkit") not in BUILDERS:
        raise ConfigError(f"RACK_BUILDER must be one of {', '.join(BUILDERS)}, got {values['builder']!r}")
    if not 1 <= values.get("build_parallel", 1) <= 16:
        raise ConfigError(f"RACK_BUILD_PARALLEL must be from 1 to 16, got {values['build_parallel']}")
    return Settings(**values)


def variables() -> dict[str, bool]:
    """Return every `RACK_*` variable `load_settings` reads, mapped to whether it holds a credential."""
    return {f"RACK_{f.name.upper()}": not f.repr for f in fields(Settings)}


def build_network_mode(settings: Settings) -> str:
    """Return the network mode a builder gives a build's RUN steps, from RACK_BUILD_NETWORK."""
    return BUILD_NETWORKS[settings.build_network]

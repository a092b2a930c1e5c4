"""The rack's numbers in Prometheus' format, read from Postgres and Redis at each scrape.

Counts that span processes (builds, the queue, phases, log sizes, uploads, workers) live in Postgres and
the live follower count in Redis, so every API pod and every worker answers the same numbers. Each
process's own numbers (Python's GC, memory) come from prometheus_client's default collectors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from rack.context import Rack
from rack.db import execute, fetchall
from rack.errors import RackError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FOLLOWERS_KEY = "rack:metrics:followers"
PHASE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def count(conn, name: str, amount: int) -> None:
    """Add `amount` to a counter shared by every process (e.g. upload bytes)."""
    execute(
        conn,
        "INSERT INTO counters (name, value) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET value = counters.value + EXCLUDED.value",
        (name, amount),
    )


def add_upload_bytes(rack: Rack, size: int) -> None:
    """Count an upload's bytes; the upload stands even if Postgres cannot count it now."""
    try:
        with rack.db.transaction() as conn:
            count(conn, "upload_bytes", size)
    except RackError as exc:
        log.warning("upload of %d bytes not counted: %s", size, exc)


def worker_heartbeat(rack: Rack, name: str) -> None:
    """Record that the worker `name` is alive (its reaper thread calls this every heartbeat interval)."""
    with rack.db.transaction() as conn:
        execute(
            conn,
            "INSERT INTO workers (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET heartbeat = now()",
            (name,),
        )


def follow(rack: Rack, chunks: Iterator) -> Iterator:
    """Yield from `chunks`, counted as one live log follower while it lasts."""
    _add_follower(rack, 1)
    try:
        yield from chunks
    finally:
        _add_follower(rack, -1)


def _add_follower(rack: Rack, delta: int) -> None:
    try:
        rack.redis.incrby(FOLLOWERS_KEY, delta)
    except Exception as exc:  # the count is only a number to watch: never break a log read for it
        log.debug("follower count not updated: %s", exc)


class RackCollector(Collector):
    """Read the rack's numbers from Postgres and Redis each time Prometheus asks."""

    def __init__(self, rack: Rack) -> None:
        self.rack = rack

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rack_metrics_up", "1 if Postgres answered this scrape, else 0")
        try:
            with self.rack.db.transaction() as conn:
                metrics = list(self._from_postgres(conn))
        except RackError as exc:
            log.warning("metrics: Postgres unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics
        followers = GaugeMetricFamily("rack_log_followers", "Clients following a live build log now")
        try:
            value = cast(bytes | None, self.rack.redis.get(FOLLOWERS_KEY))
            followers.add_metric([], max(0, int(value or 0)))
            yield followers
        except Exception as exc:
            log.warning("metrics: Redis unavailable: %s", exc)

    def _from_postgres(self, conn) -> Iterator[Metric]:
        builds = GaugeMetricFamily(
            "rack_builds", "Builds by status and failure reason code", labels=["status", "reason"]
        )
        rows = fetchall(
            conn,
            "SELECT status, split_part(reason, ': ', 1) AS code, count(*) AS n FROM builds"
            " GROUP BY status, code ORDER BY status, code",
        )
        for row in rows:
            builds.add_metric([row["status"], row["code"] if row["status"] == "failed" else ""], row["n"])
        yield builds

        depth = GaugeMetricFamily("rack_queue_depth", "Builds waiting for a worker", labels=["app"])
        oldest = GaugeMetricFamily(
            "rack_queue_oldest_seconds", "Age of the oldest build waiting for a worker", labels=["app"]
        )
        running = GaugeMetricFamily("rack_builds_running", "Builds running now", labels=["app"])
        rows = fetchall(
            conn,
            "SELECT app, count(*) FILTER (WHERE status = 'created') AS waiting,"
            " count(*) FILTER (WHERE status = 'running') AS running,"
            " COALESCE(EXTRACT(EPOCH FROM now() - min(started) FILTER (WHERE status = 'created')), 0) AS age"
            " FROM builds WHERE status IN ('created', 'running') AND repository = ''"
            " GROUP BY app ORDER BY app",
        )
        for row in rows:
            depth.add_metric([row["app"]], row["waiting"])
            oldest.add_metric([row["app"]], float(row["age"]))
            running.add_metric([row["app"]], row["running"])
        yield from (depth, oldest, running)

        yield self._phases(conn)

        sizes = fetchall(
            conn,
            "SELECT COALESCE(sum(log_lines), 0) AS lines, COALESCE(sum(log_bytes), 0) AS bytes FROM builds",
        )[0]
        yield CounterMetricFamily("rack_log_lines", "Lines of build logs written", value=sizes["lines"])
        yield CounterMetricFamily("rack_log_bytes", "Bytes of build logs written", value=sizes["bytes"])
        counters = {r["name"]: r["value"] for r in fetchall(conn, "SELECT name, value FROM counters")}
        yield CounterMetricFamily(
            "rack_upload_bytes", "Bytes uploaded as objects (sources)", value=counters.get("upload_bytes", 0)
        )

        beats = GaugeMetricFamily(
            "rack_worker_heartbeat_timestamp_seconds",
            "When each worker last reported alive",
            labels=["worker"],
        )
        alive = 0
        timeout = self.rack.settings.heartbeat_timeout
        for row in fetchall(
            conn,
            "SELECT name, EXTRACT(EPOCH FROM heartbeat) AS at, heartbeat > now() - make_interval(secs => %s)"
            " AS alive FROM workers WHERE heartbeat > now() - interval '1 day' ORDER BY name",
            (timeout,),
        ):
            beats.add_metric([row["name"]], float(row["at"]))
            alive += bool(row["alive"])
        yield beats
        yield GaugeMetricFamily(
            "rack_workers_alive", f"Workers that reported alive in the last {timeout}s", value=alive
        )

    def _phases(self, conn) -> Metric:
        """Build duration by phase, as a histogram over every build that timed the phase."""
        family = HistogramMetricFamily(
            "rack_build_phase_seconds", "How long each phase of a build took", labels=["phase"]
        )
        bounds = list(PHASE_BUCKETS)
        rows = fetchall(
            conn,
            "SELECT p.key AS phase, count(*) AS n, sum(p.value::float) AS total,"
            " array_agg(width_bucket(p.value::float, %s::float[])) AS buckets"
            " FROM builds b, jsonb_each_text(b.phases) p GROUP BY p.key ORDER BY p.key",
            (bounds,),
        )
        for row in rows:
            # width_bucket: 0 below the first bound, i when bounds[i-1] <= value < bounds[i].
            per_bucket = [0] * (len(bounds) + 1)
            for index in row["buckets"]:
                per_bucket[index] += 1
            cumulative, running = [], 0
            for bound, n in zip(bounds, per_bucket, strict=False):
                running += n
                cumulative.append((str(bound), running))
            cumulative.append(("+Inf", row["n"]))
            family.add_metric([row["phase"]], cumulative, sum_value=float(row["total"]))
        return family


def registry_for(rack: Rack, *, process_metrics: bool = True) -> CollectorRegistry:
    """Return a registry with the rack's collector (and this process's own numbers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RackCollector(rack))
    if process_metrics:
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Return the registry's metrics in Prometheus' text format."""
    return generate_latest(registry)

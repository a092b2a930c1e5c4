"""A build's log is capped: past RACK_LOG_MAX_BYTES the build goes on, the log says it was cut and by how
much, the live stream stays under the cap, and the worker streams the log instead of holding it."""

from __future__ import annotations

import io
import re

import pytest

from rack import apps, objects
from rack.builds import record as builds
from rack.logs.stream import BuildLog
from rack.pipeline.steps import Output
from tests.helpers import PeakRss, Workers, tarball, wait_for, workers_enqueue

MiB = 1024 * 1024
CUT = re.compile(rb"--- log cut: (\d+) bytes past the limit of (\d+) bytes left out ---\n\Z")


def test_past_the_cap_output_is_dropped_counted_and_the_rack_still_has_its_say(redis_client):
    log = BuildLog(redis_client, "BCAPCAPCAPX")
    out = Output(log, max_bytes=1 * MiB)
    line = "x" * 99 + "\n"
    for _ in range(5 * 1024 * 1024 // 100):
        out.write(line)
    out.line("ERROR: the last step failed")
    stored = out.close().read()
    assert len(stored) <= 1 * MiB
    assert stored.startswith(line.encode() * 100)
    match = CUT.search(stored)
    assert match is not None, stored[-300:]
    kept_output = stored.count(line.encode())
    assert int(match.group(1)) == (5 * 1024 * 1024 // 100 - kept_output) * 100  # exactly what was left out
    assert b"ERROR: the last step failed\n" in stored[-400:]
    assert log.text() == stored  # the live stream holds the same, under the cap
    out.discard()


def test_the_cut_notice_starts_on_a_line_of_its_own(redis_client):
    out = Output(BuildLog(redis_client, "BCAPCAPCAPY"), max_bytes=64 * 1024)
    out.write("first line\n" + "y" * 100_000 + "\n" + "a last line with no end")
    stored = out.close().read()
    assert stored == (
        b"first line\na last line with no end\n"
        b"--- log cut: 100001 bytes past the limit of 65536 bytes left out ---\n"
    )


@pytest.mark.docker
def test_a_build_printing_100_mib_completes_with_a_capped_log_and_a_small_worker(
    docker_stack, settings, rack, monkeypatch, tmp_path
):
    # the classic builder passes a step's output on whole (BuildKit clips each step's at 2 MiB itself)
    env = workers_enqueue(rack, monkeypatch, docker_stack.env, storage=settings.storage, builder="classic")
    apps.create(rack, name="loud")
    dockerfile = "FROM busybox\nRUN yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789 | head -c 104857600\n"
    body = tarball({"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": dockerfile})
    url = objects.put(rack, "loud", "tmp/src.tgz", io.BytesIO(body))
    with Workers(env, tmp_path) as workers:
        (worker,) = workers.start("loud")
        with PeakRss(worker.pid) as rss:
            row = builds.create(rack, "loud", url=url)
            row = wait_for(
                lambda: (r := builds.get(rack, "loud", row["id"]))["status"] in ("complete", "failed") and r,
                timeout=240,
                what="the loud build to end",
            )
    assert row["status"] == "complete", row["reason"]
    _, key = objects.parse_url(row["logs"])
    size = rack.store.size(f"loud/{key}")
    assert size <= 64 * MiB
    with objects.open_object(rack, "loud", key) as fh:
        fh.seek(size - 4096)
        tail = fh.read()
    match = CUT.search(tail)
    assert match is not None, tail[-300:]
    assert int(match.group(2)) == 64 * MiB
    assert int(match.group(1)) > 30 * MiB  # most of the 36 MiB over the cap, less the engine's own lines
    live = sum(len(chunk) for chunk in BuildLog(rack.redis, row["id"]).chunks())
    assert live == size
    print(f"worker peak RSS {rss.peak / MiB:.0f} MiB for a 100 MiB build output, log {size / MiB:.1f} MiB")
    assert rss.peak < 200 * MiB

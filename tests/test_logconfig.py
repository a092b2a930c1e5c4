"""The rack's own log lines: time, level and logger on each; the build and task on each line of a build's
work, in its threads too; one JSON object a line when RACK_LOG_FORMAT=json."""

from __future__ import annotations

import io
import json
import logging
import re
import threading

import pytest

from rack import apps, logconfig, objects
from rack.builds import record as builds
from tests.helpers import Workers, tarball, wait_for, workers_enqueue


@pytest.fixture
def captured():
    """The rack's handler on a string, removed afterwards (it is once per process otherwise)."""
    streams = {}

    def configure(fmt: str) -> io.StringIO:
        stream = streams[fmt] = io.StringIO()
        handlers.append(logconfig.configure(fmt, stream=stream))
        return stream

    handlers: list[logging.Handler] = []
    yield configure
    for handler in handlers:
        logging.getLogger().removeHandler(handler)


def test_json_lines_carry_the_build_and_task_in_its_threads_too(captured):
    stream = captured("json")
    log = logging.getLogger("rack.test")
    log.info("before any build")
    with logconfig.build_context("BABCDEFGHIJ", "task-1"):
        log.warning("inside the build")
        thread = threading.Thread(target=logconfig.in_context(lambda: log.info("from a thread of the build")))
        thread.start()
        thread.join()
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    log.info("after the build")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "before any build", "inside the build", "from a thread of the build", "it failed", "after the build"
    ]  # fmt: skip
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["logger"] == "rack.test" and line["level"] in ("INFO", "WARNING", "ERROR")
    assert [(line.get("build"), line.get("task")) for line in lines] == [
        (None, None), *[("BABCDEFGHIJ", "task-1")] * 3, (None, None)
    ]  # fmt: skip
    assert "ValueError: boom" in lines[3]["traceback"]


def test_text_lines_name_the_build(captured):
    stream = captured("text")
    with logconfig.build_context("BABCDEFGHIJ", "t2"):
        logging.getLogger("rack.x").info("hello")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO rack\.x build=BABCDEFGHIJ task=t2: hello\n",
        stream.getvalue(),
    )


@pytest.mark.docker
def test_a_worker_logs_json_with_the_build_and_task_on_its_build_lines(
    docker_stack, settings, rack, monkeypatch, tmp_path
):
    env = workers_enqueue(rack, monkeypatch, docker_stack.env, storage=settings.storage, log_format="json")
    apps.create(rack, name="logged")
    url = objects.put(rack, "logged", "tmp/src.tgz", io.BytesIO(tarball({"convox.yml": "services: [\n"})))
    with Workers(env, tmp_path) as workers:
        (worker,) = workers.start("logged")
        row = builds.create(rack, "logged", url=url)
        wait_for(
            lambda: builds.get(rack, "logged", row["id"])["status"] == "failed", timeout=60, what="the build"
        )
        worker.wait_for_log(f"build {row['id']} ended failed")
        text = worker.text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(" ready." in line["message"] for line in lines)  # Celery's own lines in the same format
    mine = [line for line in lines if row["id"] in line["message"]]
    assert [m["message"].split(" ")[2] for m in mine if m["logger"] == "rack.pipeline.run"] == ["of", "ended"]
    for line in mine:
        if line["logger"].startswith("rack."):
            assert line["build"] == row["id"]
            assert line["task"] and line["task"] in (builds.get(rack, "logged", row["id"])["process"])

"""The local stack: real Postgres, Redis, dockerd and registry started, restarted and stopped."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import time
import urllib.request

import psycopg2
import pytest
import redis
from click.testing import CliRunner

from rack_stack import SERVICES, Stack, procs, registry
from rack_stack.app import CHECKOUT
from rack_stack.cli import main
from tests.helpers import run_image


def test_ports_and_password_are_chosen_once(tmp_path):
    first = Stack(tmp_path / "s")
    again = Stack(tmp_path / "s")
    moved = Stack(tmp_path / "s", {"api": 1234})

    assert again.ports == first.ports and again.password == first.password
    assert len(set(first.ports.values())) == 4
    assert moved.ports == {**first.ports, "api": 1234}
    assert json.loads((tmp_path / "s" / "ports.json").read_text())["api"] == 1234
    assert stat.S_IMODE((tmp_path / "s" / "password").stat().st_mode) == 0o600
    assert moved.env["RACK_API_URL"] == "http://127.0.0.1:1234"
    assert moved.env["RACK_STORAGE"] == f"file://{tmp_path / 's' / 'objects'}"
    assert moved.env["RACK_DOCKER_HOST"] == f"unix://{tmp_path / 's' / 'docker.sock'}"


def test_cli_env_prints_shell_exports(tmp_path):
    result = CliRunner().invoke(main, ["env", "--home", str(tmp_path / "s")], env={"RACK_API_PORT": "2345"})

    assert result.exit_code == 0, result.output
    assert "export RACK_API_URL=http://127.0.0.1:2345\n" in result.output
    secret = (tmp_path / "s" / "secrets" / "postgres").read_text().strip()
    assert f"export RACK_DATABASE_URL=postgresql://rack:{secret}@127.0.0.1:15432/rack\n" in result.output
    assert (tmp_path / "s" / "rack.env").read_text() == result.output


def test_next_steps_are_lines_to_paste(tmp_path):
    home = tmp_path / "s"
    result = CliRunner().invoke(main, ["next-steps", "--home", str(home)], env={"RACK_API_PORT": "2345"})
    assert result.exit_code == 0, result.output
    password = (home / "password").read_text().strip()
    lines = result.output.splitlines()
    path_line = f'    export PATH="{CHECKOUT / ".venv" / "bin"}:$PATH"'
    assert path_line in lines
    assert f"    export RACK_URL=http://convox:{password}@127.0.0.1:2345" in lines
    tries = lines[lines.index("Then try:") + 1 :]
    assert [t.split()[:2] for t in tries] == [["convox", "apps"], ["convox", "deploy"], ["convox", "builds"]]
    convox = subprocess.run(  # the PATH line finds this checkout's convox, not another one
        ["bash", "-c", path_line.strip() + " && command -v convox"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert convox.stdout.strip() == str(CHECKOUT / ".venv" / "bin" / "convox")


@pytest.mark.docker
def test_start_restart_build_stop(tmp_path):
    stack = Stack(tmp_path / "stack", fast=True)
    try:
        began = time.monotonic()
        assert stack.start() == dict.fromkeys(SERVICES, True)
        cold = time.monotonic() - began
        _assert_all_answer(stack)
        pids = {name: stack.services[name].pid() for name in SERVICES}

        began = time.monotonic()
        assert Stack(tmp_path / "stack", fast=True).start() == dict.fromkeys(SERVICES, False)
        assert time.monotonic() - began < 2
        assert {name: stack.services[name].pid() for name in SERVICES} == pids

        stack.seed_base_image()
        stack.seed_base_image()
        _assert_builds_from_busybox(stack)

        # Crashed processes leave stale pidfiles: start brings them back, Redis with its streams.
        for name in ("postgres", "redis", "dockerd"):
            os.kill(pids[name], signal.SIGKILL)
        assert stack.start() == {"postgres": True, "redis": True, "dockerd": True, "registry": False}
        _assert_all_answer(stack)
        assert redis.Redis.from_url(stack.env["RACK_REDIS_URL"]).xlen("stack-test") == 2
        client = stack.docker()
        assert run_image(client, "busybox", "echo", "again", entrypoint=False) == "again\n"
        client.close()
        print(f"cold start {cold:.2f}s")
    finally:
        stopped = stack.stop()

    assert stopped == {"worker": False, "api": False, **dict.fromkeys(SERVICES, True)}
    assert not [name for name, service in stack.services.items() if service.pid()]
    assert not [name for name, pid in pids.items() if procs.alive(pid)]
    assert procs.pids_with(str(tmp_path)) == procs.pids_with(str(stack.run_dir)) == []
    with open("/proc/self/mountinfo") as mounts:
        assert not [line for line in mounts if str(tmp_path) in line or str(stack.run_dir) in line]
    assert stack.run_dir == stack.home or not stack.run_dir.exists()
    assert stack.stop() == {"worker": False, "api": False, **dict.fromkeys(SERVICES, False)}


def _assert_all_answer(stack: Stack) -> None:
    with psycopg2.connect(stack.env["RACK_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database()")
        assert cur.fetchone() == ("rack", "rack")
    conn.close()
    assert redis.Redis.from_url(stack.env["RACK_REDIS_URL"]).xadd("stack-test", {"line": "hi"})
    client = stack.docker()
    assert client.ping()
    client.close()
    with urllib.request.urlopen(_registry(stack, "")) as response:
        assert response.status == 200


def _assert_builds_from_busybox(stack: Stack) -> None:
    client = stack.docker()
    dockerfile = io.BytesIO(b"FROM busybox\nRUN echo hi > /greeting\n")
    events = list(client.api.build(fileobj=dockerfile, tag="stack-test:1", network_mode="host", decode=True))
    assert not [e for e in events if "error" in e], events
    output = run_image(client, "stack-test:1", "sh", "-c", "cat /greeting; echo ok", entrypoint=False)
    assert output == "hi\nok\n"
    client.close()
    with urllib.request.urlopen(_registry(stack, "busybox/tags/list")) as response:
        assert json.load(response)["tags"] == ["latest"]


def _registry(stack: Stack, path: str) -> urllib.request.Request:
    env = stack.env
    return registry.request(
        env["RACK_REGISTRY"],
        path,
        username=env["RACK_REGISTRY_USERNAME"],
        password=env["RACK_REGISTRY_PASSWORD"],
    )

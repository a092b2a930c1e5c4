"""Every internal service refuses callers without credentials, and the credentials never show."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

import docker
import psycopg2
import pytest
import redis
import requests

from rack_stack import registry
from tests.helpers import Workers, start_api, tarball, wait_for, worker_env_for


def test_credentials_are_generated_once_into_private_files(stack):
    folder = stack.home / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name, value in stack.secrets.items():
        path = folder / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == value and len(value) >= 32
    assert len(set(stack.secrets.values())) == len(stack.secrets)
    assert stat.S_IMODE((stack.home / "redis.conf").stat().st_mode) == 0o600


def test_postgres_refuses_callers_without_the_password(stack):
    port = stack.ports["postgres"]
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(host="127.0.0.1", port=port, user="rack", dbname="rack", connect_timeout=5)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host="127.0.0.1", port=port, user="rack", dbname="rack", password="guess", connect_timeout=5
        )
    # The superuser has no TCP line at all, with or without a password.
    with pytest.raises(psycopg2.OperationalError, match='no pg_hba.conf entry .*user "postgres"'):
        psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", password="x", connect_timeout=5
        )
    with psycopg2.connect(stack.env["RACK_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False, False)
    conn.close()
    hashed = stack.services["postgres"].admin(
        "SELECT rolsuper, rolpassword FROM pg_authid WHERE rolname='rack'"
    )
    assert hashed.startswith("f|SCRAM-SHA-256$")
    rules = stack.services["postgres"].admin("SELECT type, auth_method FROM pg_hba_file_rules").split()
    assert rules == ["local|peer", "host|scram-sha-256"]


def test_redis_refuses_callers_without_the_password(stack):
    bare = redis.Redis(host="127.0.0.1", port=stack.ports["redis"], socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        bare.ping()
    with pytest.raises(redis.AuthenticationError):
        bare.xadd("builds:stolen", {"line": "x"})
    bare.close()
    wrong = redis.Redis(host="127.0.0.1", port=stack.ports["redis"], password="guess", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()
    assert redis.Redis.from_url(stack.env["RACK_REDIS_URL"]).ping()


@pytest.mark.docker
def test_registry_refuses_callers_without_credentials(docker_stack):
    env = docker_stack.env
    address = env["RACK_REGISTRY"]
    for path in ("", "_catalog", "busybox/tags/list", "busybox/manifests/latest"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{address}/v2/{path}", timeout=10)
        assert refused.value.code == 401
    # A blob upload (the first step of a push) without credentials.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            urllib.request.Request(f"http://{address}/v2/evil/blobs/uploads/", method="POST")
        )
    assert refused.value.code == 401
    auth = {"username": env["RACK_REGISTRY_USERNAME"], "password": env["RACK_REGISTRY_PASSWORD"]}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(registry.request(address, "", username=auth["username"], password="guess"))
    assert refused.value.code == 401
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    head = registry.request(
        address, "busybox/manifests/latest", method="HEAD", headers={"Accept": accept}, **auth
    )
    with urllib.request.urlopen(head, timeout=10) as response:
        digest = response.headers["Docker-Content-Digest"]
    delete = urllib.request.Request(f"http://{address}/v2/busybox/manifests/{digest}", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(delete, timeout=10)
    assert refused.value.code == 401  # only the rack's credentials delete (a failed build's tags)
    with urllib.request.urlopen(head, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == digest
    client = docker.DockerClient(base_url=docker_stack.env["RACK_DOCKER_HOST"])  # not logged in
    client.images.get("busybox:latest").tag(f"{address}/unauthorized", "1")
    events = list(client.api.push(f"{address}/unauthorized", "1", stream=True, decode=True))
    client.api.remove_image(f"{address}/unauthorized:1")
    client.close()
    assert any("no basic auth credentials" in json.dumps(e) for e in events), events


@pytest.mark.docker
def test_a_build_through_api_and_worker_shows_no_credential(docker_stack, tmp_path):
    """API and worker run with every credential; none is in any argv, their logs or the build's JSON."""
    env = worker_env_for(docker_stack.env, storage=f"file://{tmp_path}/objects")
    secrets = [*docker_stack.secrets.values(), docker_stack.password]
    http = requests.Session()
    http.auth = ("convox", docker_stack.password)
    api = start_api(env, log_dir=tmp_path)
    try:
        with Workers(env, tmp_path) as workers:
            workers.start("creds")
            argv = _all_command_lines()
            assert http.post(f"{api.url}/apps", data={"name": "creds"}).status_code == 200
            source = {
                "convox.yml": "services:\n  web:\n    build: .\n",
                "Dockerfile": "FROM busybox\nRUN true\n",
            }
            url = http.post(f"{api.url}/apps/creds/objects/tmp/src.tgz", data=tarball(source)).json()["Url"]
            build = http.post(f"{api.url}/apps/creds/builds", data={"url": url}).json()

            def final():
                row = http.get(f"{api.url}/apps/creds/builds/{build['id']}").json()
                return row if row["status"] in ("complete", "failed") else None

            row = wait_for(final, timeout=90, what="the build to end")
            argv += _all_command_lines()
            log = http.get(f"{api.url}/apps/creds/builds/{build['id']}/logs").text
    finally:
        api.stop()
    assert row["status"] == "complete", row["reason"]
    texts = {"argv": "\n".join(argv), "build": json.dumps(row), "log": log}
    texts.update(
        {
            p.name: p.read_text(errors="replace")
            for p in [*tmp_path.glob("*.log"), *docker_stack.home.glob("*.log")]
        }
    )
    assert "celery" in texts["argv"] and "gunicorn" in texts["argv"] and "postgres" in texts["argv"]
    leaks = [(name, secret[:4]) for name, text in texts.items() for secret in secrets if secret in text]
    assert leaks == []


def _all_command_lines() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found

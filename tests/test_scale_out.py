"""Scaling out: two workers, each with its own Docker engine, share Postgres, Redis, S3 and the registry."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import boto3
import pytest
import requests

from rack_stack import Stack
from rack_stack.base_image import CHANGES, NAME, TAG, rootfs_tar
from tests.helpers import Workers, run_image, start_api, tarball, wait_for, worker_env_for

SOURCE = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    # Slow enough that the first worker is still busy when the second build is handed out.
    "Dockerfile": 'FROM busybox\nRUN sleep 3 && echo built > /built\nCMD ["cat", "/built"]\n',
}


@pytest.fixture
def second_engine(docker_stack):
    """A second Docker engine, as on a second worker host, with the base image in it."""
    home = Path(tempfile.mkdtemp(prefix="rack-engine2-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home, fast=True)
    stack.start(["dockerd"])
    stack.services["dockerd"].forward(docker_stack.ports["registry"])  # the shared registry
    client = stack.docker()
    client.api.import_image_from_data(rootfs_tar(), repository=NAME, tag=TAG, changes=CHANGES)
    yield stack
    client.close()
    stack.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def s3_storage(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="rack")
    yield {"storage": "s3://rack/objects", "s3_endpoint_url": endpoint}
    server.stop()


@pytest.mark.docker
def test_two_workers_on_two_engines_share_one_rack(docker_stack, second_engine, s3_storage, tmp_path):
    env = worker_env_for(docker_stack.env, **s3_storage)
    env2 = {**env, "RACK_DOCKER_HOST": second_engine.env["RACK_DOCKER_HOST"]}
    http = requests.Session()
    http.auth = ("convox", docker_stack.password)
    api = start_api(env, log_dir=tmp_path)
    try:
        with Workers(env, tmp_path) as one, Workers(env2, tmp_path) as two:
            one.start("host1")
            two.start("host2")
            assert http.post(f"{api.url}/apps", data={"name": "scale"}).status_code == 200
            url = http.post(f"{api.url}/apps/scale/objects/tmp/src.tgz", data=tarball(SOURCE)).json()["Url"]
            ids = [
                http.post(f"{api.url}/apps/scale/builds", data={"url": url}).json()["id"] for _ in range(2)
            ]

            def final():
                rows = [http.get(f"{api.url}/apps/scale/builds/{i}").json() for i in ids]
                return rows if all(r["status"] in ("complete", "failed") for r in rows) else None

            rows = wait_for(final, timeout=90, what="both builds to end")
    finally:
        api.stop()
    assert [r["status"] for r in rows] == ["complete", "complete"], [r["reason"] for r in rows]
    # Each build ran on its own host's engine, and both images reached the shared registry.
    assert {r["process"].split("@")[0] for r in rows} == {"host1", "host2"}
    for row in rows:
        image = row["images"]["web"]["image"]
        engine = docker_stack if row["process"].startswith("host1") else second_engine
        client = engine.docker()
        try:
            assert run_image(client, image) == "built\n"
        finally:
            client.close()
    # The logs went to S3, where any API process reads them.
    s3 = boto3.client("s3", endpoint_url=s3_storage["s3_endpoint_url"])
    for row in rows:
        key = row["logs"].split("/", 3)[3]
        body = s3.get_object(Bucket="rack", Key=f"objects/scale/{key}")["Body"].read()
        assert b"RUN sleep 3" in body

"""The container images, built on the local Debian base: the API answers, the worker builds the example."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import docker
import pytest
import requests

from cli.source import package
from rack_stack import images
from rack_stack.base_image import CHANGES, NAME, TAG, rootfs_tar
from rack_stack.dockerd import Dockerd
from tests.helpers import free_port, wait_for, worker_env_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "myapp"


@pytest.fixture(scope="module")
def host_engine(docker_stack):
    """An engine on the host's network, as a trusted machine's: the rack's containers reach loopback.

    The stack's own engine sits in a namespace of its own, from which nothing reaches the host.
    """
    engine = Dockerd(docker_stack, index=9, network="host")
    engine.start()
    client = docker.DockerClient(base_url=engine.address, timeout=300)
    client.api.import_image_from_data(rootfs_tar(), repository=NAME, tag=TAG, changes=CHANGES)
    yield engine, client
    client.close()
    engine.stop()


@pytest.fixture(scope="module")
def rack_images(host_engine):
    """Build both images in that engine (the base's tar is made once per machine and cached)."""
    _, client = host_engine
    began = time.monotonic()
    base = images.ensure_local_base(client)
    built = images.build(client, base=base, tag_prefix="rack-test")
    print(f"\nimages built in {time.monotonic() - began:.0f} s: {built}")
    return built


def _container_env(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith("RACK_")}


def _run(client, image: str, *, env: dict[str, str], command: list[str] | None = None, volumes=None):
    """Start a container of `image` on the host's network (the engine has no bridge), as the image's user.

    The user joins the group of the engine's socket (root:docker, 0660), as the worker's pod joins dockerd's.
    """
    group = os.stat(env["RACK_DOCKER_HOST"].removeprefix("unix://")).st_gid
    return client.containers.run(
        image, command=command, environment=_container_env(env), network_mode="host",
        volumes=volumes or {}, group_add=[str(group)], detach=True,
    )  # fmt: skip


def _logs(container) -> str:
    return container.logs().decode(errors="replace")[-3000:]


@pytest.mark.docker
def test_api_image_answers_check_and_the_worker_image_builds_the_example(
    docker_stack, host_engine, rack_images, tmp_path
):
    objects = tmp_path / "objects"
    objects.mkdir(mode=0o777)
    objects.chmod(0o777)  # the images run as uid 10001
    engine, client = host_engine
    env = worker_env_for(
        {**docker_stack.env, "RACK_DOCKER_HOST": engine.address},
        storage=f"file://{objects}",
        build_network="host",
    )
    port = free_port()
    socket = engine.address.removeprefix("unix://")
    mounts = {str(objects): {"bind": str(objects), "mode": "rw"}}
    containers = []
    try:
        # The API image's own entry point for the migration job, then gunicorn on a free port.
        migrate = _run(client, rack_images["api"], env=env, command=["python", "-m", "rack", "migrate"])
        containers.append(migrate)
        assert migrate.wait(timeout=60)["StatusCode"] == 0, _logs(migrate)
        bind = [
            "gunicorn",
            "--config",
            "python:rack_api.server",
            "--bind",
            f"127.0.0.1:{port}",
            "rack_api.wsgi:app",
        ]
        api = _run(client, rack_images["api"], env=env, command=bind, volumes=mounts)
        containers.append(api)
        # The image's own command, with a name to find its builds by.
        command = [
            *client.images.get(rack_images["worker"]).attrs["Config"]["Cmd"],
            "--hostname",
            "imaged@%h",
        ]
        worker = _run(
            client, rack_images["worker"], env=env, command=command,
            volumes={**mounts, socket: {"bind": socket, "mode": "rw"}},
        )  # fmt: skip
        containers.append(worker)
        url = f"http://127.0.0.1:{port}"

        def answers():
            try:
                return requests.get(f"{url}/check", timeout=2)
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                api.reload()
                assert api.status in ("created", "running"), _logs(api)
                return None

        check = wait_for(answers, timeout=60, what="the API container to answer /check")
        assert check.status_code == 200
        assert check.text.strip()
        assert requests.get(f"{url}/apps", timeout=5).status_code == 401  # auth is on in the image too

        http = requests.Session()
        http.auth = ("convox", docker_stack.password)
        assert http.post(f"{url}/apps", data={"name": "imaged"}).status_code == 200
        with package(EXAMPLE) as source:
            object_url = http.post(f"{url}/apps/imaged/objects/tmp/src.tgz", data=source).json()["Url"]
        build = http.post(f"{url}/apps/imaged/builds", data={"url": object_url}).json()

        def ended():
            row = http.get(f"{url}/apps/imaged/builds/{build['id']}").json()
            if row["status"] in ("complete", "failed"):
                return row
            worker.reload()
            assert worker.status == "running", _logs(worker)
            return None

        row = wait_for(ended, timeout=180, what="the example's build to end")
        assert row["status"] == "complete", (row["reason"], _logs(worker))
        assert row["release"].startswith("R")
        # The worker inside its container ran it and pushed each built service to the registry.
        assert row["process"].startswith("imaged@")
        for service in ("web", "worker"):
            image = row["images"][service]["image"]
            assert image.startswith(docker_stack.env["RACK_REGISTRY"] + "/imaged:")
        logs = http.get(f"{url}/apps/imaged/builds/{build['id']}/logs").text
        assert "baked: greeting=hello" in logs
        # The API image exports with its own skopeo: build.json, then one OCI archive per service.
        export = http.get(f"{url}/apps/imaged/builds/{build['id']}.tgz", timeout=120)
        assert export.status_code == 200, export.text[:500]
        with tarfile.open(fileobj=io.BytesIO(export.content), mode="r:gz") as archive:
            names = archive.getnames()
        assert names == ["build.json", *(f"{s}.{build['id']}.tar" for s in sorted(row["images"]))], names
    finally:
        for container in containers:
            container.remove(force=True)

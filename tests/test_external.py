"""Builds the rack does not run itself, driven as Convox's CLI drives them: `convox builds import-image SRC`
(copied by the rack from a second registry on loopback) and `convox build --external` (built and pushed by
the local Docker engine), each ending as a complete build with its images recorded and a release."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import exports, external, releases, skopeo
from rack.builds import record as builds
from rack.context import Rack
from tests.helpers import LiveRack, Proc, _answers, basic, free_port, oci_archive, printed, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def upstream(docker_stack):
    """A second registry on loopback that wants credentials (me / s3cret), holding `upstream/hello:1` and
    `upstream/tools:2`."""
    with warnings.catch_warnings():  # bcrypt by libxcrypt, as the registry's htpasswd wants (3.11 has it)
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    home = Path(tempfile.mkdtemp(prefix="rack-upstream-"))
    (home / "htpasswd").write_text(
        "me:" + crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)) + "\n"
    )
    port = free_port()
    (home / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {home}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: upstream\n    path: {home}/htpasswd\n"
    )
    proc = Proc(
        "upstream", ["docker-registry", "serve", home / "config.yml"], os.environ, home / "registry.log"
    )
    registry = f"127.0.0.1:{port}"
    docker_stack.services["dockerd"].forward(port)  # the engine sits in a namespace of its own
    wait_for(lambda: _answers(f"http://{registry}"), timeout=20, what="the upstream registry")
    creds = {registry: ("me", "s3cret")}
    for name, text in (("hello:1", "hello from upstream\n"), ("tools:2", "tools from upstream\n")):
        path = home / f"{name.replace(':', '-')}.tar"
        path.write_bytes(oci_archive({"hello.txt": text}, cmd=["cat", "/hello.txt"]))
        skopeo.copy(
            f"oci-archive:{path}", f"docker://{registry}/upstream/{name}", creds=creds, what="seeding"
        )
    yield registry
    proc.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def live(docker_stack, tmp_path, monkeypatch):
    """The API over HTTP; an image import it queues runs in a thread, as a worker would run it."""
    env = {**docker_stack.env, "RACK_STORAGE": f"file://{tmp_path}/objects"}
    live = LiveRack(env, app="myapp", monkeypatch=monkeypatch, config=tmp_path / "cfg")
    r = live.rack
    r.enqueue_import = lambda *args: live.spawn(external.run_import, r, *args)
    r.enqueue_build = lambda build_id: None
    monkeypatch.setenv("DOCKER_HOST", docker_stack.env["RACK_DOCKER_HOST"])
    yield r, live.server
    live.close()


def test_import_image_from_another_registry(live, upstream, docker_stack, tmp_path, monkeypatch):
    rack, web = live
    manifest = tmp_path / "convox.yml"
    manifest.write_text(
        f"services:\n  web:\n    build: .\n  tools:\n    image: {upstream}/upstream/tools:2\n"
    )
    monkeypatch.setenv("UPSTREAM_PASSWORD", "s3cret")
    args = ["builds", "import-image", f"{upstream}/upstream/hello:1", "-a", "myapp", "-m", str(manifest)]
    result = CliRunner().invoke(
        main, [*args, "--src-creds-user", "me", "--src-creds-pass-env", "UPSTREAM_PASSWORD"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    build_id = re.fullmatch(r"Creating build\.\.\. OK, (B[A-Z]{10})", lines[0]).group(1)
    assert lines[1:3] == [
        f"Relaying image {upstream}/upstream/hello:1... OK",
        "Waiting for import to complete... OK",
    ]
    release = re.fullmatch(r"Creating release\.\.\. OK, (R[A-Z]{10})", lines[3]).group(1)
    assert lines[4:] == [f"Build:   {build_id}", f"Release: {release}"]
    row = builds.get(rack, "myapp", build_id)
    assert (row["status"], row["release"], row["reason"]) == ("complete", release, "")
    assert releases.get(rack, "myapp", release)["build"] == build_id
    assert set(row["images"]) == {"web", "tools"}
    registry = rack.settings.registry
    assert row["images"]["web"]["image"] == f"{registry}/myapp:web.{build_id}"
    assert printed(docker_stack, row["images"]["web"]["image"]) == "hello from upstream\n"
    assert printed(docker_stack, row["images"]["tools"]["image"]) == "tools from upstream\n"  # its own image:
    assert list(exports.export(rack, "myapp", build_id))  # an imported build exports like any other
    # A missing image fails the build with a reason; a bad reference and a second import are refused.
    client = web.server.app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic(rack.settings.password)["Authorization"]
    made = client.post("/apps/myapp/builds", data={"external": "true"}).get_json()
    creds = (
        f"{rack.settings.registry_username}:{rack.settings.registry_password}@"  # the client pushes with them
    )
    assert made["status"] == "created" and made["repository"] == f"http://{creds}{registry}/myapp"
    client.put(f"/apps/myapp/builds/{made['id']}", data={"manifest": "services:\n  web:\n    build: .\n"})
    for image, status, error in (
        ("", 422, "image param required"),
        ("-oops", 400, "is not an image reference"),
        ("host//x", 400, "is not an image reference"),
    ):
        resp = client.post(f"/apps/myapp/builds/{made['id']}/image", data={"image": image})
        assert (resp.status_code, error in resp.get_json()["error"]) == (status, True), image
    resp = client.post(
        f"/apps/myapp/builds/{made['id']}/image", data={"image": f"{upstream}/upstream/none:1"}
    )
    assert (resp.status_code, resp.data) == (202, b"")
    again = client.post(
        f"/apps/myapp/builds/{made['id']}/image", data={"image": f"{upstream}/upstream/hello:1"}
    )
    assert again.status_code == 409
    unauthorized = client.post("/apps/myapp/builds", data={"external": "true"}).get_json()
    client.put(
        f"/apps/myapp/builds/{unauthorized['id']}", data={"manifest": "services:\n  web:\n    build: .\n"}
    )
    image = {"image": f"{upstream}/upstream/hello:1"}
    assert client.post(f"/apps/myapp/builds/{unauthorized['id']}/image", data=image).status_code == 202
    refused = wait_final(rack, unauthorized["id"])  # no credentials: the upstream registry says no
    assert refused["status"] == "failed" and "unauthorized" in refused["reason"].lower(), refused["reason"]
    failed = wait_final(rack, made["id"])
    assert failed["status"] == "failed"
    assert failed["reason"].startswith(f"user:image: importing {upstream}/upstream/none:1: ")


def wait_final(rack: Rack, build_id: str) -> dict:
    return wait_for(
        lambda: (row := builds.get(rack, "myapp", build_id))["status"] in ("complete", "failed") and row,
        timeout=60, what="the import to end",
    )  # fmt: skip


def test_build_external_pushes_from_the_local_engine(live, docker_stack, tmp_path):
    rack, _ = live
    project = tmp_path / "project"
    project.mkdir()
    (project / "convox.yml").write_text("services:\n  web:\n    build: .\n")
    (project / "Dockerfile").write_text(
        'FROM busybox\nARG WORD=none\nRUN echo "built $WORD" > /out.txt\nCMD cat /out.txt\n'
    )
    result = CliRunner().invoke(
        main, ["build", str(project), "-a", "myapp", "--external", "--build-args", "WORD=outside"]
    )
    assert result.exit_code == 0, result.output
    assert f"Building: {project}" in result.output and "Running: docker push " in result.output
    build_id = re.search(r"^Build:   (B[A-Z]{10})$", result.output, re.M).group(1)
    release = re.search(r"^Release: (R[A-Z]{10})$", result.output, re.M).group(1)
    row = builds.get(rack, "myapp", build_id)
    assert (row["status"], row["release"]) == ("complete", release)
    assert row["manifest"] == "services:\n  web:\n    build: .\n"
    assert [r["id"] for r in releases.list_for_app(rack, "myapp")] == [
        release
    ]  # one release, not Convox's two
    image = row["images"]["web"]
    assert image["image"] == f"{rack.settings.registry}/myapp:web.{build_id}" and image["digest"].startswith(
        "sha256:"
    )
    docker_stack.docker().images.remove(image["image"])  # run what the registry holds
    assert printed(docker_stack, image["image"]) == "built outside\n"

"""Builds the rack does not run itself, driven as Convox's CLI drives them: `convox builds import-image SRC`
(copied by the rack from a second registry on loopback) and `convox build --external` (built and pushed by
the local Docker engine), each ending as a complete build with its images recorded and a release."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import exports, external, releases, skopeo
from rack.builds import record as builds
from rack.context import Rack
from rack_stack import Stack
from tests.helpers import LiveRack, basic, oci_archive, printed, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def upstream(docker_stack):
    """A second registry on loopback holding `upstream/hello:1` and `upstream/tools:2`."""
    home = Path(tempfile.mkdtemp(prefix="rack-upstream-"))
    stack = Stack(home, fast=True)
    stack.start(services=("registry",))
    registry = stack.env["RACK_REGISTRY"]
    for name, text in (("hello:1", "hello from upstream\n"), ("tools:2", "tools from upstream\n")):
        path = home / f"{name.replace(':', '-')}.tar"
        path.write_bytes(oci_archive({"hello.txt": text}, cmd=["cat", "/hello.txt"]))
        skopeo.copy(f"oci-archive:{path}", f"docker://{registry}/upstream/{name}", what="seeding")
    yield registry
    stack.stop(services=("registry",))
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
    assert made["status"] == "created" and made["repository"] == f"http://{registry}/myapp"
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

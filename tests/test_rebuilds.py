"""Exact rebuilds on the real stack: a build with an earlier complete one's inputs reuses its images."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rack import apps, registry, releases
from rack.builds import record as builds
from rack.pipeline import run as pipeline
from rack.registry import Registry
from rack.sources import contents
from tests.helpers import build, build_log, lose_content, run_image, send_tree, write_app

pytestmark = pytest.mark.docker

DOCKERFILE = 'ARG BASE=busybox\nFROM ${BASE}\nARG GREETING\nRUN echo "$GREETING" > /greeting\nCOPY . /app\n'
MANIFEST = "services:\n  web:\n    build: .\n"


@pytest.fixture
def rrack(docker_stack, rack):
    apps.create(rack, name="myapp")
    return rack


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_app(
        tmp_path / "myapp",
        {"convox.yml": MANIFEST, "Dockerfile": DOCKERFILE, "app.txt": "one\n", "lib/x.txt": "x\n"},
    )


def send_and_build(rack, folder: Path, **options) -> tuple[dict, int]:
    """Send the folder as `convox build` does (only missing contents) and build it: the row, how many sent."""
    url, sent = send_tree(rack, "myapp", folder)
    row = builds.create(rack, "myapp", url=url, **options)
    done = pipeline.run_build(rack, row["id"], process="tests:1")
    assert done is not None and done["status"] == "complete", done and done["reason"]
    return done, sent


def reused(rack, row: dict) -> str | None:
    for line in build_log(rack, row).splitlines():
        if line.startswith("Reusing the images of build "):
            return line.split()[5].rstrip(":")
    return None


def test_an_unchanged_tree_uploads_nothing_and_reuses_the_images(rrack, folder, docker_stack):
    first, sent = send_and_build(rrack, folder, build_args=["GREETING=hi"])
    assert sent == 4 and reused(rrack, first) is None
    again, sent = send_and_build(rrack, folder, build_args=["GREETING=hi", "UNDECLARED=changes nothing"])
    assert sent == 0
    assert reused(rrack, again) == first["id"]
    assert again["images"] == first["images"] and again["id"] != first["id"]
    assert again["inputs"] == first["inputs"] != ""
    release = releases.get(rrack, "myapp", again["release"])
    assert release["build"] == again["id"] and again["release"] != first["release"]
    assert again["entrypoint"] == first["entrypoint"]
    client = docker_stack.docker()
    try:
        assert run_image(client, again["images"]["web"]["image"], "cat", "/greeting") == "hi\n"
    finally:
        client.close()
    # a reuse reads only the manifest and the Dockerfile: a data file's content is never fetched
    (data,) = [e for e in contents.load_tree(rrack, again["source_url"]) if e.path == "lib/x.txt"]
    lose_content(rrack, "myapp", data.sha256)
    row = builds.create(rrack, "myapp", url=again["source_url"], build_args=["GREETING=hi"])
    third = pipeline.run_build(rrack, row["id"], process="tests:1")
    assert third is not None and third["status"] == "complete" and reused(rrack, third) == again["id"]
    assert third["images"] == first["images"]
    # the Convox wire path (one .tgz object) reuses too
    via_archive = build(rrack, "myapp", folder, build_args=["GREETING=hi"])
    assert via_archive["status"] == "complete" and reused(rrack, via_archive) is None  # another tree digest
    assert reused(rrack, build(rrack, "myapp", folder, build_args=["GREETING=hi"])) == via_archive["id"]


def test_a_changed_file_build_arg_base_image_or_no_cache_builds_for_real(rrack, folder, docker_stack):
    first, _ = send_and_build(rrack, folder, build_args=["GREETING=hi"])
    (folder / "app.txt").write_text("two\n")
    changed, sent = send_and_build(rrack, folder, build_args=["GREETING=hi"])
    assert sent == 1 and reused(rrack, changed) is None
    assert changed["images"]["web"]["digest"] != first["images"]["web"]["digest"]
    other_arg, _ = send_and_build(rrack, folder, build_args=["GREETING=hello"])
    assert reused(rrack, other_arg) is None and other_arg["inputs"] != changed["inputs"]
    no_cache, _ = send_and_build(rrack, folder, build_args=["GREETING=hello"], no_cache=True)
    assert reused(rrack, no_cache) is None and no_cache["inputs"] == other_arg["inputs"]
    # the same FROM name, another image behind it: a new base image digest
    client = docker_stack.docker()
    try:
        client.images.get("busybox").tag("rebuild-base", "v1")
        on_v1, _ = send_and_build(rrack, folder, build_args=["GREETING=hello", "BASE=rebuild-base:v1"])
        assert reused(rrack, on_v1) is None  # a FROM the earlier builds did not have
        same, _ = send_and_build(rrack, folder, build_args=["GREETING=hello", "BASE=rebuild-base:v1"])
        assert reused(rrack, same) == on_v1["id"]
        newer = client.images.build(
            fileobj=io.BytesIO(b"FROM busybox\nRUN echo newer > /base\n"), tag="rebuild-base:v1", rm=True,
            network_mode="host",
        )[0]  # fmt: skip
        assert newer.id != client.images.get("busybox").id
        rebuilt, _ = send_and_build(rrack, folder, build_args=["GREETING=hello", "BASE=rebuild-base:v1"])
        assert reused(rrack, rebuilt) is None and rebuilt["inputs"] != same["inputs"]
        assert run_image(client, rebuilt["images"]["web"]["image"], "cat", "/base") == "newer\n"
    finally:
        client.close()


def test_an_earlier_build_whose_images_left_the_registry_is_not_reused(rrack, folder):
    first, _ = send_and_build(rrack, folder, build_args=["GREETING=hi"])
    # every tag of the repository goes (an earlier test's identical image would keep the digest held)
    assert registry.remove_app(rrack.settings, "myapp")
    again, sent = send_and_build(rrack, folder, build_args=["GREETING=hi"])
    assert sent == 0 and again["inputs"] == first["inputs"]
    assert reused(rrack, again) is None  # built for real: a reuse would point at an image that is gone
    with Registry(rrack.settings) as held:
        tag = again["images"]["web"]["image"].rsplit(":", 1)[1]
        assert held.digest("myapp", tag) == again["images"]["web"]["digest"]

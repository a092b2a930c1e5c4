"""Pushing images on the real stack: an image the build mostly made goes up with skopeo at a fast gzip
level, and is the same image to the registry and to an engine pulling it back."""

from __future__ import annotations

import os

import pytest

from rack import apps
from rack.builds import record as builds
from rack.pipeline import run as pipeline
from tests.helpers import build_log, registry_open, run_image, send_tree, write_app

pytestmark = pytest.mark.docker
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKERFILE = "FROM busybox\nCOPY big.bin /app/big.bin\nCOPY small.txt /app/small.txt\n"


def test_a_mostly_new_image_is_copied_by_skopeo_and_pulls_back_whole(
    docker_stack, rack, tmp_path, monkeypatch
):
    apps.create(rack, name="bigapp")
    folder = write_app(
        tmp_path / "bigapp",
        {"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": DOCKERFILE, "small.txt": "one\n"},
    )
    (folder / "big.bin").write_bytes(os.urandom(40 * 1024 * 1024))

    def build() -> dict:
        row = builds.create(rack, "bigapp", url=send_tree(rack, "bigapp", folder)[0])
        done = pipeline.run_build(rack, row["id"], process="tests:1")
        assert done is not None and done["status"] == "complete", done and done["reason"]
        return done

    done = build()
    assert "MB new: skopeo copies it at gzip level 1" in build_log(rack, done)
    image, digest = done["images"]["web"]["image"], done["images"]["web"]["digest"]
    tag = image.rsplit(":", 1)[1]
    with registry_open(rack.settings, f"bigapp/manifests/{tag}", method="HEAD", accept=MANIFEST_V2) as resp:
        assert resp.headers["Docker-Content-Digest"] == digest
    client = docker_stack.docker()
    try:
        client.images.remove(image)  # so the engine pulls what the registry holds
        assert run_image(client, image, "sh", "-c", "wc -c < /app/big.bin").strip() == str(40 * 1024 * 1024)
    finally:
        client.close()
    # only the small layer is new (the big one is the previous image's): the engine's push, which reads
    # just that layer, not skopeo, which would read the whole image
    (folder / "small.txt").write_text("two\n")
    again = build()
    assert "skopeo" not in build_log(rack, again) and again["images"]["web"]["digest"] != digest

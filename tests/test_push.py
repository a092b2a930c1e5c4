"""Pushing images on the real stack: an image the build mostly made is streamed from the engine's save
into the registry (plain tar for data gzip cannot shrink, gzip level 1 for data it can), and is the same
image to the registry and to an engine pulling it back; a cancel stops the stream and tags nothing."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import pytest

from rack import apps
from rack.builds import record as builds
from rack.errors import BuildError, BuildPlatformError
from rack.pipeline import layers
from rack.pipeline import run as pipeline
from rack.pipeline.engine.classic import Engine
from rack.reasons import Reason
from rack.registry import Registry
from tests.helpers import build_log, registry_open, run_image, send_tree, write_app

pytestmark = pytest.mark.docker
DOCKERFILE = "FROM busybox\nCOPY big.bin /app/big.bin\nCOPY small.txt /app/small.txt\n"
MB = 1024 * 1024


def manifest_of(settings, repository: str, reference: str) -> tuple[dict, str]:
    with registry_open(settings, f"{repository}/manifests/{reference}", accept=layers.MANIFEST) as resp:
        return json.loads(resp.read()), resp.headers["Docker-Content-Digest"]


def build(rack, app: str, folder) -> dict:
    row = builds.create(rack, app, url=send_tree(rack, app, folder)[0])
    done = pipeline.run_build(rack, row["id"], process="tests:1")
    assert done is not None and done["status"] == "complete", done and done["reason"]
    return done


def test_a_mostly_new_image_is_streamed_to_the_registry_and_pulls_back_whole(
    docker_stack, rack, tmp_path, monkeypatch
):
    monkeypatch.setattr(rack, "settings", replace(rack.settings, direct_build=False))  # the engine builds
    apps.create(rack, name="bigapp")
    folder = write_app(
        tmp_path / "bigapp",
        {"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": DOCKERFILE, "small.txt": "one\n"},
    )
    data = os.urandom(40 * MB)
    (folder / "big.bin").write_bytes(data)

    done = build(rack, "bigapp", folder)
    assert "MB new: streamed from the engine" in build_log(rack, done)
    image, digest = done["images"]["web"]["image"], done["images"]["web"]["digest"]
    manifest, served = manifest_of(rack.settings, "bigapp", image.rsplit(":", 1)[1])
    assert served == digest and manifest["mediaType"] == layers.MANIFEST
    biggest = max(manifest["layers"], key=lambda layer: layer["size"])
    assert biggest["mediaType"] == layers.TAR and biggest["size"] > 40 * MB  # random data: not gzipped
    client = docker_stack.docker()
    try:
        client.images.remove(image)  # so the engine pulls what the registry holds
        printed = run_image(client, image, "sh", "-c", "sha256sum /app/big.bin; cat /app/small.txt")
        assert printed.split()[0] == hashlib.sha256(data).hexdigest() and printed.split()[-1] == "one"
    finally:
        client.close()
    # only the small layer is new (the big one is the previous image's): the engine's push, which reads
    # just that layer, not the save, which would read the whole image
    (folder / "small.txt").write_text("two\n")
    again = build(rack, "bigapp", folder)
    assert "streamed" not in build_log(rack, again) and again["images"]["web"]["digest"] != digest


def test_a_layer_that_shrinks_is_gzipped_and_a_cancel_stops_the_stream(docker_stack, rack, tmp_path):
    folder = write_app(tmp_path / "text", {"Dockerfile": "FROM busybox\nCOPY . /app\n"})
    text = b"".join(b"line %d of a source file that compresses well\n" % n for n in range(400_000))
    (folder / "code.txt").write_bytes(text)
    client = docker_stack.docker()
    tag = f"{rack.settings.registry}/textapp:web.one"
    try:
        client.images.build(path=str(folder), tag=tag, network_mode="host", rm=True)
        engine = Engine(rack.settings)
        try:
            digest = layers.push(engine, tag, check=lambda: None)
            manifest, served = manifest_of(rack.settings, "textapp", "web.one")
            assert served == digest
            code = max(manifest["layers"], key=lambda layer: layer["size"])
            assert code["mediaType"] == layers.GZIP and code["size"] < len(text) / 4
            client.images.remove(tag)
            assert run_image(client, tag, "sh", "-c", "sha256sum < /app/code.txt").split()[0] == (
                hashlib.sha256(text).hexdigest()
            )

            calls = []

            def cancel_on_the_fifth_chunk() -> None:
                calls.append(1)
                if len(calls) == 5:
                    raise BuildPlatformError(Reason.CANCELLED, "cancelled while pushing")

            client.images.get(tag).tag(f"{rack.settings.registry}/textapp", "web.two")
            with pytest.raises(BuildError, match="cancelled while pushing"):
                layers.push(
                    engine, f"{rack.settings.registry}/textapp:web.two", check=cancel_on_the_fifth_chunk
                )
            assert len(calls) == 5
            with Registry(rack.settings) as registry:
                assert registry.tags("textapp") == ["web.one"]
        finally:
            engine.close()
    finally:
        client.close()


def test_a_registry_that_refuses_the_push_fails_it_as_the_registry(docker_stack, rack):
    client = docker_stack.docker()
    tag = f"{rack.settings.registry}/refused:web.one"
    try:
        client.images.get("busybox").tag(f"{rack.settings.registry}/refused", "web.one")
        engine = Engine(replace(rack.settings, registry_password="not-the-password"))
        try:
            with pytest.raises(BuildPlatformError, match="HTTP 401") as failed:
                layers.push(engine, tag, check=lambda: None)
            assert failed.value.code == Reason.REGISTRY
        finally:
            engine.close()
        with Registry(rack.settings) as registry:
            assert registry.tags("refused") == []
    finally:
        client.close()

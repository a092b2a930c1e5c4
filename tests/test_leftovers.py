"""Nothing left behind: a build's uploaded source goes when it ends, a failed build's pushed tags go, and an
app's images go from the registry when it is deleted and from the engines at their workers' sweep."""

from __future__ import annotations

import dataclasses
import io

import pytest

from rack import apps, objects
from rack.builds import record
from rack.pipeline import leftovers
from rack.registry import Registry
from tests.helpers import build, write_app

GOOD = {"Dockerfile": "FROM busybox\nRUN echo good > /good\n"}


@pytest.fixture
def lrack(docker_stack, rack, monkeypatch):
    """The rack on the Docker stack, services built one after another."""
    settings = dataclasses.replace(rack.settings, build_parallel=1, keep_sources=False)
    monkeypatch.setattr(rack, "settings", settings)
    return rack


def tags(rack, app: str) -> list[str]:
    with Registry(rack.settings) as registry:
        return registry.tags(app)


def source_kept(rack, row: dict) -> bool:
    app, key = objects.parse_url(row["source_url"])
    return rack.store.exists(f"{app}/{key}")


@pytest.mark.docker
def test_a_finished_build_leaves_no_source_unless_asked(lrack, tmp_path, monkeypatch):
    apps.create(lrack, name="gone")
    folder = write_app(tmp_path, {"convox.yml": "services:\n  web:\n    build: .\n", **GOOD})
    row = build(lrack, "gone", folder)
    assert row["status"] == "complete", row["reason"]
    assert row["source_url"].startswith("object://gone/tmp/")
    assert not source_kept(lrack, row)
    monkeypatch.setattr(lrack, "settings", dataclasses.replace(lrack.settings, keep_sources=True))
    kept = build(lrack, "gone", folder)
    assert source_kept(lrack, kept)


@pytest.mark.docker
def test_a_build_failing_after_a_push_lists_no_images_and_leaves_no_tag(lrack, tmp_path):
    apps.create(lrack, name="half")
    folder = write_app(
        tmp_path,
        {
            # services are pushed in order after all are built: the second one's pull fails after a push
            "convox.yml": "services:\n  web:\n    build: .\n  bad:\n    image: nosuch/image:1\n",
            **GOOD,
        },
    )
    ok = build(
        lrack, "half", write_app(tmp_path / "ok", {"convox.yml": "services:\n  web:\n    build: .\n", **GOOD})
    )
    assert ok["status"] == "complete", ok["reason"]
    row = build(lrack, "half", folder)
    assert row["status"] == "failed"
    assert row["reason"].startswith("user:image:"), row["reason"]
    assert "Running: docker push" in _log(lrack, row)  # the first service was pushed before the failure
    assert row["images"] == {}
    assert [t for t in tags(lrack, "half") if t.endswith(row["id"])] == []
    # the complete build's image stays, although the failed build pushed the same image
    assert f"web.{ok['id']}" in tags(lrack, "half")
    with Registry(lrack.settings) as registry:
        assert registry.digest("half", f"web.{ok['id']}") == ok["images"]["web"]["digest"]


def _log(rack, row: dict) -> str:
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, row["app"], key) as fh:
        return fh.read().decode()


@pytest.mark.docker
def test_deleting_an_app_removes_its_images_from_the_registry_and_the_engine(lrack, tmp_path, docker_stack):
    apps.create(lrack, name="doomed")
    apps.create(lrack, name="stays")
    folder = write_app(tmp_path, {"convox.yml": "services:\n  web:\n    build: .\n", **GOOD})
    doomed, stays = build(lrack, "doomed", folder), build(lrack, "stays", folder)
    assert doomed["status"] == stays["status"] == "complete"
    assert tags(lrack, "doomed") == [f"web.{doomed['id']}"]
    apps.delete(lrack, "doomed")
    assert tags(lrack, "doomed") == []
    assert tags(lrack, "stays") == [f"web.{stays['id']}"]
    registry = lrack.settings.registry
    removed = leftovers.sweep_images(lrack)
    assert f"{registry}/doomed:web.{doomed['id']}" in removed
    client = docker_stack.docker()
    try:
        local = {tag for image in client.images.list() for tag in image.tags}
    finally:
        client.close()
    assert f"{registry}/doomed:web.{doomed['id']}" not in local
    assert f"{registry}/stays:web.{stays['id']}" in local


@pytest.mark.parametrize("keep", [False, True])
def test_uploads_no_build_uses_go_after_a_grace(rack, monkeypatch, keep):
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, keep_sources=keep))
    rack.redis.delete("rack:orphan-uploads")
    apps.create(rack, name="orphans")
    lost = objects.put(rack, "orphans", "tmp/never-built.tgz", io.BytesIO(b"x"))
    waiting = objects.put(rack, "orphans", "tmp/waiting.tgz", io.BytesIO(b"y"))
    objects.put(rack, "orphans", "kept/other.bin", io.BytesIO(b"z"))  # not an upload to build
    build = record.create(rack, "orphans", url=waiting)  # `created`: its worker will want it
    assert leftovers.sweep_uploads(rack, now=1000.0) == []  # first seen: an upload may await its build
    removed = leftovers.sweep_uploads(rack, grace=3600, now=1000.0 + 3600)
    assert removed == ([] if keep else ["orphans/tmp/never-built.tgz"])
    assert rack.store.exists("orphans/tmp/never-built.tgz") == keep
    assert rack.store.exists("orphans/tmp/waiting.tgz")
    assert rack.store.exists("orphans/kept/other.bin")
    assert build["status"] == "created"
    assert lost == "object://orphans/tmp/never-built.tgz"

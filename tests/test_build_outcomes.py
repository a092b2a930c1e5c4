"""Every build ends with a recorded outcome, and leaves no folder behind, whatever goes wrong in it."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from rack import apps, objects
from rack.builds import record as builds
from rack.logs.stream import BuildLog
from rack.pipeline import folders
from rack.pipeline import run as pipeline
from rack.pipeline.steps import BuildRun
from rack.sql import builds as builds_sql

MANIFEST = b"services:\n  web:\n    build: .\n"


def deep_tgz(levels: int = 1000) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            ("convox.yml", MANIFEST),
            ("Dockerfile", b"FROM busybox\n"),
            ("d/" * levels + "f", b"x"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def work(docker_stack, rack, tmp_path, monkeypatch):
    """The rack with its build folders under <tmp>/builds and an app `out` to build."""
    monkeypatch.setattr(
        rack, "settings", dataclasses.replace(rack.settings, build_dir=str(tmp_path / "builds"))
    )
    apps.create(rack, name="out")
    return tmp_path / "builds"


def run(rack, body: bytes, **options) -> dict:
    url = objects.put(rack, "out", "tmp/src.tgz", io.BytesIO(body))
    row = builds.create(rack, "out", url=url, **options)
    done = pipeline.run_build(rack, row["id"], process="outcomes:1")
    assert done is not None
    assert BuildLog(rack.redis, row["id"]).last_entry().end_status == done["status"]
    return done


@pytest.mark.docker
def test_a_tree_deeper_than_the_limit_fails_at_once_and_leaves_no_folder(rack, work):
    row = run(rack, deep_tgz())
    assert row["status"] == "failed"
    assert row["reason"].startswith("user:source: source archive entry 'd/d/d/"), row["reason"]
    assert "is 1001 levels deep; the limit is 256" in row["reason"]
    assert list(work.iterdir()) == []


@pytest.mark.docker
def test_a_tree_too_deep_for_the_engine_client_is_a_user_error_and_is_removed(rack, work, monkeypatch):
    # past the depth limit (raised here) the docker SDK's recursive walk of the context gives up
    deep = dataclasses.replace(rack.settings, extract_max_depth=5000, builder="classic", direct_build=False)
    monkeypatch.setattr(rack, "settings", deep)
    row = run(rack, deep_tgz(1200))
    assert row["status"] == "failed"
    assert row["reason"] == "user:source: the build context 'src' nests too deep to send", row["reason"]
    assert list(work.iterdir()) == []


@pytest.mark.docker
def test_an_unexpected_error_in_the_pipeline_fails_the_build_as_internal(rack, work, monkeypatch, caplog):
    def boom(self):
        raise KeyError("no such thing")

    monkeypatch.setattr(BuildRun, "run", boom)
    row = run(rack, deep_tgz(1))
    assert row["status"] == "failed"
    assert row["reason"] == "platform:internal: KeyError: 'no such thing'"
    assert "Traceback" in caplog.text and "KeyError" in caplog.text
    assert list(work.iterdir()) == []


@pytest.mark.docker
def test_an_outcome_refused_by_the_database_is_recorded_as_internal(rack, work, monkeypatch):
    def refused(*args, **kwargs):
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")

    monkeypatch.setattr(pipeline, "_complete", refused)
    row = run(rack, deep_tgz(1))
    assert row["status"] == "failed"
    assert (
        row["reason"]
        == "platform:internal: ValueError: A string literal cannot contain NUL (0x00) characters."
    )


def test_a_nul_in_a_reason_is_stored_escaped():
    assert pipeline.storable("user:image: busy\x00box") == "user:image: busy\\x00box"
    assert len(pipeline.storable("x" * 10_000)) == 4096


def test_removing_a_tree_1000_folders_deep_never_recurses(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1000):  # os.makedirs itself recurses
        os.mkdir("d", dir_fd=fd)
        fd, up = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(up)
    os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    os.symlink("/etc", top / "d" / "etc")  # removed as a link, never followed
    (top / "d" / "ro").mkdir(mode=0o500)
    assert folders.depth_over(top, 256)
    assert not folders.depth_over(top, 1001)
    assert folders.remove(top)
    assert not top.exists()
    assert os.path.isdir("/etc")
    assert folders.remove(tmp_path / "missing")


def test_a_sweep_removes_only_folders_no_running_build_owns(rack, tmp_path, monkeypatch):
    root = tmp_path / "builds"
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, build_dir=str(root)))
    apps.create(rack, name="sweep")
    url = objects.put(rack, "sweep", "tmp/x.tgz", io.BytesIO(b"x"))
    done, running = builds.create(rack, "sweep", url=url), builds.create(rack, "sweep", url=url)
    with rack.db.transaction() as conn:
        builds_sql.finish(conn, id=done["id"], status="failed", reason="cancelled: test")
        builds_sql.mark_running(conn, id=running["id"], process="elsewhere:1")
    ids = {"done": done["id"], "running": running["id"], "unknown": "BZZZZZZZZZZ", "old": "BYYYYYYYYYY"}
    made = {name: folders.make(rack, build_id) for name, build_id in ids.items()}
    for path in made.values():
        os.makedirs(path / "src" / "a" / "b")
    old = time.time() - folders.ABANDONED_AFTER - 60
    os.utime(made["old"], (old, old))
    (root / "not-a-build").mkdir()
    removed = folders.sweep(rack)
    assert sorted(removed) == sorted([made["done"].name, made["old"].name])
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [made["running"].name, made["unknown"].name, "not-a-build"]
    )


def test_the_folder_root_is_private(rack, tmp_path, monkeypatch):
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, build_dir=str(tmp_path / "b")))
    assert Path(folders.make(rack, "BAAAAAAAAAA")).parent == tmp_path / "b"
    assert (tmp_path / "b").stat().st_mode & 0o077 == 0

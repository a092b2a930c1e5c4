"""The app's source folder on a worker, kept between builds: updated in place, never shared, never trusted
when an update was cut short, and a context BuildKit sends only the changes of."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from rack import apps
from rack.builds import record as builds
from rack.errors import BuildUserError
from rack.pipeline import run as pipeline
from rack.sources import contents, worktree
from tests.helpers import build_log, lose_content, run_image, send_tree, write_app

MANIFEST = "services:\n  web:\n    build: .\n"


@pytest.fixture
def folder(tmp_path, rack) -> Path:
    apps.create(rack, name="myapp")
    files = {f"data/f{n:02d}.bin": os.urandom(40_000).hex() for n in range(20)}
    files |= {"convox.yml": MANIFEST, "Dockerfile": "FROM busybox\nCOPY . /app\n", "gone.txt": "bye\n"}
    return write_app(tmp_path / "myapp", files)


@pytest.fixture
def own_dir(rack, tmp_path, monkeypatch):
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, build_dir=str(tmp_path / "b")))
    return rack


def send(rack, folder: Path, app: str = "myapp") -> str:
    return send_tree(rack, app, folder)[0]


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_folder_is_updated_in_place_writing_only_what_changed(own_dir, folder):
    rack = own_dir
    with worktree.checkout(rack, send(rack, folder)) as first:
        assert first is not None and first.fresh and first.written == 24  # 23 files and data/
        kept = os.stat(first.path / "data/f03.bin")
    (folder / "data/f07.bin").write_text("changed\n")
    (folder / "gone.txt").unlink()
    (folder / "new.txt").write_text("new\n")
    with worktree.checkout(rack, send(rack, folder)) as second:
        assert second is not None and not second.fresh and second.path == first.path
        assert (second.written, second.removed) == (2, 1)  # f07 and new.txt written, gone.txt removed
        assert second.generation == first.generation
        assert files_of(second.path) == files_of(folder)
        same = os.stat(second.path / "data/f03.bin")
        assert (same.st_ino, same.st_mtime_ns, same.st_ctime_ns) == (
            kept.st_ino, kept.st_mtime_ns, kept.st_ctime_ns,
        )  # fmt: skip
        # whatever else lands in the folder, or a file changed there, is put right by the next update
        (second.path / "stray.txt").write_text("not in the tree\n")
        (second.path / "data" / "f03.bin").write_text("tampered")
        (second.path / "extra").mkdir()
    with worktree.checkout(rack, send(rack, folder)) as third:
        assert third is not None and third.written == 1 and third.removed == 2
        assert files_of(third.path) == files_of(folder) and not (third.path / "extra").exists()


def test_a_rewritten_file_never_shows_the_size_and_mtime_of_its_earlier_version(own_dir, folder):
    rack = own_dir
    path = folder / "data/f00.bin"
    stamp = os.stat(path).st_mtime
    with worktree.checkout(rack, send(rack, folder)) as first:
        assert first is not None
        before = os.stat(first.path / "data/f00.bin")
    path.write_text("x" * before.st_size)  # same size, same mtime to the second: BuildKit would skip it
    os.utime(path, (stamp, stamp))
    with worktree.checkout(rack, send(rack, folder)) as second:
        assert second is not None and second.written == 1
        after = os.stat(second.path / "data/f00.bin")
        assert after.st_size == before.st_size and after.st_mtime_ns != before.st_mtime_ns
        assert int(after.st_mtime) == int(before.st_mtime)  # the second a layer records is the file's


def test_an_update_cut_short_leaves_no_state_and_the_next_starts_from_empty(own_dir, folder):
    rack = own_dir
    with worktree.checkout(rack, send(rack, folder)) as first:
        assert first is not None
    (folder / "data/f01.bin").write_text("needed, then lost\n")
    url = send(rack, folder)
    (lost,) = [e for e in contents.load_tree(rack, url) if e.path == "data/f01.bin"]
    lose_content(rack, "myapp", lost.sha256)
    with pytest.raises(BuildUserError, match="is gone from the rack"):
        with worktree.checkout(rack, url):
            pass
    assert not (first.path.parent / worktree.STATE).exists()
    (folder / "data/f01.bin").write_text("uploaded again\n")
    with worktree.checkout(rack, send(rack, folder)) as again:
        assert again is not None and again.fresh and again.generation != first.generation
        assert files_of(again.path) == files_of(folder)


def test_apps_never_share_a_folder_nor_do_builds_of_one_app_running_at_once(own_dir, folder, monkeypatch):
    rack = own_dir
    apps.create(rack, name="other")
    with (
        worktree.checkout(rack, send(rack, folder)) as mine,
        worktree.checkout(rack, send(rack, folder, "other")) as theirs,
    ):
        assert mine is not None and theirs is not None
        assert mine.path != theirs.path and mine.generation != theirs.generation
        with worktree.checkout(rack, send(rack, folder)) as beside:  # a second build of myapp at once
            assert beside is not None and beside.path != mine.path
            monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, app_max_running=2))
            with worktree.checkout(rack, send(rack, folder)) as third:
                assert third is None  # every slot held: the build writes a private folder
    # an app deleted and made again under its name starts from empty
    apps.delete(rack, "other")
    apps.create(rack, name="other")
    with worktree.checkout(rack, send(rack, folder, "other")) as reborn:
        assert reborn is not None and reborn.fresh and reborn.generation != theirs.generation
    assert worktree.sweep(rack, idle=0) == ["myapp/0", "myapp/1", "other/0"]


def transferred(log: str) -> int:
    """The bytes BuildKit's last context transfer sent, from its `transferring context: 1.2MB` line."""
    sizes = re.findall(r"transferring context: ([\d.]+)([kMG]?B)", log)
    number, unit = sizes[-1]
    return int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])


@pytest.mark.docker
def test_builds_send_buildkit_only_the_changes_and_survive_a_failed_build(
    docker_stack, own_dir, folder, monkeypatch
):
    rack = own_dir  # the engine builds (what it is sent is what this measures), not the rack itself
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, direct_build=False))

    def build(**options) -> dict:
        row = builds.create(rack, "myapp", url=send(rack, folder), **options)
        done = pipeline.run_build(rack, row["id"], process="tests:1")
        assert done is not None
        return done

    first = build()
    assert first["status"] == "complete", first["reason"]
    assert transferred(build_log(rack, first)) > 1_000_000  # the whole tree, 1.6 MB
    (folder / "Dockerfile").write_text("FROM busybox\nCOPY . /app\nRUN false\n")
    failed = build()
    assert failed["status"] == "failed" and failed["reason"].startswith("user:step")
    (folder / "Dockerfile").write_text("FROM busybox\nCOPY . /app\n")
    (folder / "gone.txt").unlink()
    (folder / "data/f05.bin").write_text("five\n")
    third = build()
    assert third["status"] == "complete", third["reason"]
    log = build_log(rack, third)
    assert "Source: the app's folder on this worker (2 written, 1 removed)" in log
    assert transferred(log) < 100_000  # the Dockerfile and f05, not the tree
    client = docker_stack.docker()
    try:
        image = third["images"]["web"]["image"]
        assert "gone.txt" not in run_image(client, image, "ls", "/app")
        assert run_image(client, image, "cat", "/app/data/f05.bin") == "five\n"
        assert run_image(client, image, "cat", "/app/data/f06.bin") == (folder / "data/f06.bin").read_text()
    finally:
        client.close()


def disk_use(slot: Path) -> int:
    """What a folder's tree takes on disk, measured here."""
    return sum(os.lstat(p).st_blocks * 512 for p in [slot / "tree", *(slot / "tree").rglob("*")])


def test_the_folders_keep_under_their_cap_removing_the_least_recently_used_idle_ones(
    own_dir, tmp_path, monkeypatch
):
    rack = own_dir
    urls = {}
    for app in ("a", "b", "c"):
        apps.create(rack, name=app)
        files = {"big.bin": os.urandom(100_000).hex(), "convox.yml": MANIFEST}
        urls[app] = send(rack, write_app(tmp_path / app, files), app)
    slot = {app: worktree.base(rack) / app / "0" for app in urls}

    def build(app: str) -> worktree.Checkout:
        with worktree.checkout(rack, urls[app]) as held:
            assert held is not None
            return held

    assert build("a").fresh
    limit = int(disk_use(slot["a"]) * 2.5)  # room for two of the three folders
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, source_folders_max_bytes=limit))
    build("b")
    assert slot["a"].joinpath("tree").exists()  # two fit
    build("c")
    assert not slot["a"].joinpath("tree").exists() and not slot["a"].joinpath(worktree.STATE).exists()
    assert sum(disk_use(slot[app]) for app in "bc") <= limit
    assert build("a").fresh  # its state went with it: the next build writes it from empty
    assert not slot["b"].joinpath("tree").exists()  # now the least recently used
    # a folder a build holds stays, however far over the cap, and however long unused
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, source_folders_max_bytes=1))
    with worktree.checkout(rack, urls["c"]) as held:
        assert held is not None and not held.fresh
        assert build("b").fresh
        assert files_of(held.path)["big.bin"] and slot["c"].joinpath(worktree.STATE).exists()
        assert not slot["a"].joinpath("tree").exists()  # idle: removed
        assert worktree.cap(rack) == ["b/0"]  # idle once its build ended; the held one stays
        assert worktree.cap(rack) == []
    assert worktree.cap(rack) == ["c/0"]

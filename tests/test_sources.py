"""Content-addressed sources against the real API, Postgres and object store: only missing contents go up."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli import sources as cli_sources
from cli.client import RackClient
from cli.settings import Endpoint
from rack import apps
from rack.builds import record as builds
from rack.db import execute, fetchall
from rack.errors import BuildUserError, Invalid
from rack.pipeline.source import extract_tarball
from rack.sources import contents, sweep, tree
from rack.sources.assemble import assemble
from tests.helpers import CuttingProxy, tarball


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def project(tmp_path, rack):
    apps.create(rack, name="myapp")
    files = {f"data/f{n:02d}.bin": os.urandom(20_000) for n in range(30)}
    files |= {
        "convox.yml": b"services:\n  web:\n    build: .\n",
        "Dockerfile": b"FROM busybox\nCOPY . /app\n",
    }
    files |= {"secret.env": b"TOKEN=1\n", ".dockerignore": b"secret.env\n"}
    return write(tmp_path / "myapp", files)


@pytest.fixture
def client(live_server):
    return RackClient(Endpoint(live_server.url, live_server.password))


def send(client, folder: Path) -> cli_sources.Sent:
    sent = cli_sources.send(client, "myapp", cli_sources.scan(folder))
    assert sent is not None
    return sent


def stored(rack) -> set[str]:
    with rack.db.transaction() as conn:
        return {r["sha256"] for r in fetchall(conn, "SELECT sha256 FROM source_contents WHERE app = 'myapp'")}


def packs(rack) -> list[str]:
    return rack.store.list_keys("myapp/.sources/packs", limit=100)


def shas(rack, url: str) -> set[str]:
    return {e.sha256 for e in contents.load_tree(rack, url) if e.kind == "file"}


def test_unchanged_tree_uploads_no_content_and_a_changed_file_only_itself(rack, client, project):
    first = send(client, project)
    assert (first.files, first.total_files) == (33, 33)  # 30 data files, manifest, Dockerfile, .dockerignore
    assert first.size == first.total_size > 600_000
    assert first.url.startswith("manifest://myapp/")
    assert len(packs(rack)) == 1  # one batch, one object in the store: not one per file
    again = send(client, project)
    assert (again.files, again.size, again.url) == (0, 0, first.url)
    assert again.summary() == f"sent 0 of 33 files, 0 B of {cli_sources.human(first.total_size)}"
    (project / "data" / "f07.bin").write_bytes(b"changed\n")
    changed = send(client, project)
    assert (changed.files, changed.size) == (1, 8)
    assert changed.url != first.url
    assert changed.summary().startswith("sent 1 of 33 files, 8 B of ")
    entries = contents.load_tree(rack, changed.url)
    assert {e.path for e in entries} >= {"data/f07.bin", "convox.yml"}
    assert "secret.env" not in {e.path for e in entries}  # the .dockerignore selection, as for archives
    row = builds.create(rack, "myapp", url=changed.url)
    assert row["source_url"] == changed.url


def test_assembled_tree_is_the_folder(rack, client, project, tmp_path):
    os.chmod(project / "data" / "f00.bin", 0o755)
    os.symlink("data/f01.bin", project / "link")
    (project / "empty").mkdir()
    url = send(client, project).url
    dest = tmp_path / "src"
    dest.mkdir()
    assert assemble(rack, url, dest) == tree.parse_url(url)[1]
    for name in ("data/f00.bin", "data/f29.bin", "convox.yml"):
        assert (dest / name).read_bytes() == (project / name).read_bytes()
    assert os.stat(dest / "data/f00.bin").st_mode & 0o777 == 0o755
    assert os.readlink(dest / "link") == "data/f01.bin" and (dest / "empty").is_dir()
    assert not (dest / "secret.env").exists()


def test_assembly_keeps_to_the_size_limit(rack, client, project, tmp_path, monkeypatch):
    url = send(client, project).url
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, extract_max_bytes=100_000))
    dest = tmp_path / "src"
    dest.mkdir()
    with pytest.raises(BuildUserError, match="larger than 100000 bytes"):
        assemble(rack, url, dest)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= 100_000


def test_a_cut_upload_resumes_where_it_stopped(rack, live_server, project, monkeypatch):
    monkeypatch.setattr(cli_sources, "BATCH_BYTES", 100_000)  # 5 contents a batch: 7 batches
    proxy = CuttingProxy(live_server.server.server_port, cut_after=250_000)  # in the third batch
    try:
        client = RackClient(Endpoint(f"http://127.0.0.1:{proxy.port}", live_server.password))
        scanned = cli_sources.scan(project)
        sent = cli_sources.send(client, "myapp", scanned)
    finally:
        proxy.close()
    assert sent is not None and proxy.cuts == 1
    assert sent.files == 33  # all went up, once each as far as the rack is concerned
    assert stored(rack) == set(scanned.sizes)
    # resumed, not restarted: what crossed the link is the tree once plus less than one batch again
    assert proxy.sent < scanned.size + 100_000 + 3 * 40_000


def test_a_batch_cut_short_keeps_the_contents_before_the_cut(rack, project):
    blobs = [os.urandom(5000) for _ in range(4)]
    body = tarball({hashlib.sha256(b).hexdigest(): b for b in blobs}, gzip=False)
    whole = tarfile.open(fileobj=io.BytesIO(body))
    cut = whole.getmembers()[2].offset_data + 100  # inside the third content
    with pytest.raises(Invalid, match="cut short after 2 contents"):
        contents.receive(rack, "myapp", io.BytesIO(body[:cut]))
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    assert contents.missing(rack, "myapp", shas) == shas[2:]


def test_a_content_that_does_not_match_its_name_is_not_kept(rack, project, client):
    fake = "0" * 64
    resp = client.session.post(
        client.url("/apps/myapp/contents"), data=tarball({fake: b"not what the name says"}, gzip=False)
    )
    assert resp.status_code == 400 and "does not match its sha256" in resp.json()["error"]
    assert contents.missing(rack, "myapp", [fake]) == [fake]
    assert not rack.store.exists(contents.key("myapp", fake)) and packs(rack) == []


def refusal_of_tarball(member: tarfile.TarInfo, tmp_path: Path) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    dest = tmp_path / "tar"
    dest.mkdir()
    with pytest.raises(BuildUserError) as caught:
        extract_tarball(io.BytesIO(buf.getvalue()), dest, max_bytes=10**6, max_entries=10)
    return caught.value.message


SHA = hashlib.sha256(b"x").hexdigest()
UNSAFE = {
    "dotdot": {"path": "../escape", "type": "file", "size": 1, "sha256": SHA},
    "absolute": {"path": "/etc/passwd", "type": "file", "size": 1, "sha256": SHA},
    "link out": {"path": "link", "type": "link", "link": "../../etc"},
    "absolute link": {"path": "link", "type": "link", "link": "/etc/passwd"},
}


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_paths_are_refused_as_tar_members_are(rack, client, project, tmp_path, name):
    entry = tree.Entry(**{("kind" if k == "type" else k): v for k, v in UNSAFE[name].items()})
    expected = refusal_of_tarball(entry.member(), tmp_path)
    resp = client.session.post(client.url("/apps/myapp/sources"), json={"files": [UNSAFE[name]]})
    assert resp.status_code == 400 and resp.json()["error"] == expected
    # a tree that reached the database some other way is refused by the worker with the same words
    digest = "f" * 64
    with rack.db.transaction() as conn:
        execute(
            conn,
            "INSERT INTO source_trees (app, digest, entries, files, bytes) VALUES (%s, %s, %s, 1, 1)",
            ("myapp", digest, json.dumps([UNSAFE[name]])),
        )
    contents.receive(rack, "myapp", io.BytesIO(tarball({SHA: b"x"}, gzip=False)))
    dest = tmp_path / "assembled"
    dest.mkdir()
    with pytest.raises(BuildUserError) as caught:
        assemble(rack, tree.url("myapp", digest), dest)
    assert caught.value.message == expected and caught.value.code.value == "user:source"


def test_a_link_followed_by_a_path_through_it_is_refused_when_assembled(rack, client, project, tmp_path):
    body = {"files": [{"path": "l", "type": "link", "link": "."}, {"path": "l/x", "size": 1, "sha256": SHA}]}
    contents.receive(rack, "myapp", io.BytesIO(tarball({SHA: b"x"}, gzip=False)))
    answer = contents.create_tree(rack, "myapp", json.dumps(body).encode())
    dest = tmp_path / "src"
    dest.mkdir()
    with pytest.raises(BuildUserError, match="is inside the symlink 'l'"):
        assemble(rack, answer["Url"], dest)


def test_bad_listings_get_clear_errors(rack, client, project):
    post = lambda body: client.session.post(client.url("/apps/myapp/sources"), data=body)  # noqa: E731
    assert post(b"not json").status_code == 400
    assert "sha256 must be 64" in post(json.dumps({"files": [{"path": "a", "sha256": "x"}]})).json()["error"]
    twice = {"files": [{"path": "a", "size": 1, "sha256": SHA}, {"path": "a/", "size": 1, "sha256": SHA}]}
    assert "names a path twice" in post(json.dumps(twice)).json()["error"]
    missing = post(json.dumps({"files": [{"path": "a", "size": 1, "sha256": SHA}]}))
    assert missing.status_code == 200 and missing.json() == {"missing": [SHA]}
    assert client.session.post(client.url("/apps/nope/sources"), data=b"{}").status_code == 404
    resp = client.session.post(client.url("/apps/myapp/builds"), data={"url": tree.url("myapp", "e" * 64)})
    assert resp.status_code == 409 and "upload the source again" in resp.json()["error"]


def test_contents_are_shared_between_builds_and_swept_when_no_recent_build_needs_them(rack, client, project):
    first = send(client, project)
    (project / "data" / "f00.bin").write_bytes(b"second version\n")
    second = send(client, project)
    assert second.files == 1  # everything else is shared with the first tree
    old = builds.create(rack, "myapp", url=first.url)
    new = builds.create(rack, "myapp", url=second.url)
    only_first = shas(rack, first.url) - shas(rack, second.url)
    assert len(only_first) == 1
    now = datetime.now(UTC)
    week = timedelta(days=7)

    def age(build_id: str, days: int) -> None:
        with rack.db.transaction() as conn:
            execute(
                conn,
                "UPDATE builds SET status = 'complete', started = %s WHERE id = %s",
                (now - timedelta(days=days), build_id),
            )
            execute(conn, "UPDATE source_contents SET used = %s", (now - timedelta(days=30),))
            execute(conn, "UPDATE source_trees SET used = %s", (now - timedelta(days=30),))

    age(old["id"], 10)
    age(new["id"], 1)
    removed = sweep.sweep(rack, retention=int(week.total_seconds()))
    assert removed == {"contents": 1, "trees": 1, "packs": 0}  # the first tree and its one unshared content
    assert stored(rack) == shas(rack, second.url)
    (gone,) = only_first
    with pytest.raises(FileNotFoundError):
        contents.open_content(rack, "myapp", gone)
    for sha in stored(rack):
        with contents.open_content(rack, "myapp", sha) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == sha
    assert len(packs(rack)) == 2  # the first one still holds contents the second tree needs
    kept = len(stored(rack))
    age(new["id"], 8)
    removed = sweep.sweep(rack, retention=int(week.total_seconds()))
    assert removed == {"contents": kept, "trees": 1, "packs": 0}
    assert stored(rack) == set() and packs(rack) == []  # each pack went with its last content
    again = send(client, project)  # a later build uploads what was swept
    assert again.files == again.total_files == 33


def test_asking_again_refreshes_an_old_use_and_leaves_a_recent_one_as_it_is(rack, client, project):
    first = send(client, project)
    long_ago = datetime.now(UTC) - timedelta(days=30)
    with rack.db.transaction() as conn:
        execute(conn, "UPDATE source_contents SET used = %s", (long_ago,))
        execute(conn, "UPDATE source_trees SET used = %s", (long_ago,))

    def uses() -> list[datetime]:
        with rack.db.transaction() as conn:
            rows = fetchall(conn, "SELECT used FROM source_contents UNION ALL SELECT used FROM source_trees")
        return sorted(row["used"] for row in rows)

    assert send(client, project).url == first.url
    marked = uses()
    assert len(marked) == 34 and min(marked) > datetime.now(UTC) - timedelta(seconds=contents.touch_lag(rack))
    assert sweep.sweep(rack, retention=7 * 24 * 3600) == {"contents": 0, "trees": 0, "packs": 0}
    send(client, project)  # within the lag: no row is written again
    assert uses() == marked


def test_a_pack_whose_contents_were_never_recorded_is_swept_after_its_grace(rack, client, project):
    send(client, project)  # packs with recorded contents, made just now
    recorded = packs(rack)
    assert recorded
    now = datetime.now(UTC)
    hour = 3600
    # a worker that died between storing a pack and recording its contents left these behind
    old = contents.pack_name((now - timedelta(seconds=sweep.PACK_GRACE + hour)).timestamp())
    fresh = contents.pack_name((now - timedelta(seconds=sweep.PACK_GRACE - hour)).timestamp())
    for name in (old, fresh):
        rack.store.put_stream(contents.pack_key("myapp", name), io.BytesIO(b"orphaned bytes"))
    assert sweep.sweep(rack) == {"contents": 0, "trees": 0, "packs": 1}
    assert sorted(packs(rack)) == sorted([*recorded, contents.pack_key("myapp", fresh)])  # in flight, maybe
    later = now + timedelta(hours=2)  # the fresh one's grace is over; recorded packs stay, however old
    assert sweep.sweep(rack, retention=10 * 24 * hour, now=later)["packs"] == 1
    assert packs(rack) == recorded
    for sha in stored(rack):
        with contents.open_content(rack, "myapp", sha) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == sha


def test_contents_stored_alone_before_packs_are_still_read(rack, project):
    data = b"stored under its own sha256"
    sha = hashlib.sha256(data).hexdigest()
    rack.store.put_stream(contents.key("myapp", sha), io.BytesIO(data))
    with rack.db.transaction() as conn:
        execute(
            conn, "INSERT INTO source_contents (app, sha256, size) VALUES ('myapp', %s, %s)", (sha, len(data))
        )
    assert contents.missing(rack, "myapp", [sha]) == []
    with contents.open_content(rack, "myapp", sha) as fh:
        assert fh.read() == data


def test_objects_api_cannot_touch_stored_contents(rack, client, project):
    send(client, project)
    sha = next(iter(stored(rack)))
    key = contents.key("myapp", sha)[len("myapp/") :]
    resp = client.session.post(client.url(f"/apps/myapp/objects/{key}"), data=b"poison")
    assert resp.status_code == 400 and "reserved" in resp.json()["error"]
    assert client.session.delete(client.url(f"/apps/myapp/objects/{key}")).status_code == 400
    with contents.open_content(rack, "myapp", sha) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == sha

"""Build export and import on the real engine and registries: the example app exported, imported elsewhere."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import secrets
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.utils.build import tar

from rack import apps, events, exports, objects, releases
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.db import execute
from rack.errors import TooLarge
from rack.pipeline import run as pipeline
from rack.sql import builds as builds_sql
from rack_api import create_app
from rack_stack import Stack
from tests.helpers import basic, oci_archive, registry_open, run_image

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "myapp"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
GREETING = f"export-{secrets.token_hex(4)}"  # new layers: the engine cannot have them from another build


def make_rack(settings, **changes) -> Rack:
    r = Rack(dataclasses.replace(settings, **changes))
    r.enqueue_build = lambda build_id: None
    return r


def api(r: Rack):
    client = create_app(rack=r).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic(r.settings.password)["Authorization"]
    return client


@pytest.fixture(scope="module")
def home():
    path = Path(tempfile.mkdtemp(prefix="rack-exports-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def src(docker_stack, home):
    """The exporting rack (the stack's registry), on clean tables."""
    r = make_rack(load_settings({**docker_stack.env, "RACK_STORAGE": f"file://{home}/src"}))
    with r.db.transaction() as conn:
        execute(conn, "TRUNCATE apps, builds, releases CASCADE")
    yield r
    r.close()


@pytest.fixture(scope="module")
def dst(docker_stack, src, home):
    """The importing rack: a registry and an object store of its own (the same engine and database)."""
    stack = Stack(home / "registry2", fast=True)
    stack.start(services=("registry",))
    docker_stack.services["dockerd"].forward(stack.ports["registry"])
    r = make_rack(
        src.settings,
        registry=stack.env["RACK_REGISTRY"],
        registry_password=stack.env["RACK_REGISTRY_PASSWORD"],
        storage=f"file://{home}/dst",
    )
    yield r
    r.close()
    stack.stop(services=("registry",))


@pytest.fixture(scope="module")
def engine(docker_stack, dst):
    client = docker_stack.docker()  # logged in to the stack's registry; and to the importing rack's
    client.login(
        dst.settings.registry_username, dst.settings.registry_password, registry=dst.settings.registry
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def original(src, engine):
    """The example app built on the pipeline, with what its web image prints and its unique stamp."""
    apps.create(src, name="myapp")
    releases.set_env(src, "myapp", set_vars={"COLOR": "green"})
    url = objects.put(src, "myapp", "tmp/src.tgz", tar(str(EXAMPLE), exclude=["debug.log"], gzip=True))
    row = builds.create(src, "myapp", url=url, build_args=[f"GREETING={GREETING}"], description="orig")
    row = pipeline.run_build(src, row["id"], process="tests:1")
    assert row["status"] == "complete", row["reason"]
    web = row["images"]["web"]["image"]
    return row, run(engine, web), run(engine, web, "cat", "/app/build-stamp.txt")


def run(client, image: str, *command: str) -> str:
    return run_image(client, image, *command)


def members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        return [(m.name, t.extractfile(m).read()) for m in t]


def tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(src, original, engine):
    """Export the build through the API, then drop its images from the engine, as if on another host."""
    row = original[0]
    began = time.monotonic()
    resp = api(src).get(f"/apps/myapp/builds/{row['id']}.tgz")
    assert resp.is_streamed and "Content-Length" not in resp.headers  # sent as it is made
    print(f"\nexport: {len(resp.data)} bytes in {time.monotonic() - began:.2f}s")
    assert resp.status_code == 200, resp.data
    assert resp.content_type == "application/octet-stream"
    for image in row["images"].values():
        with contextlib.suppress(docker.errors.ImageNotFound):  # one the rack wrote was never in it
            engine.images.remove(image["image"])
    return resp.data


@pytest.fixture(scope="module")
def imported(dst, archive):
    apps.create(dst, name="copy")
    began = time.monotonic()
    resp = api(dst).post("/apps/copy/builds/import", data=archive, content_type="application/octet-stream")
    print(f"\nimport: {time.monotonic() - began:.2f}s")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_export_is_build_json_then_one_oci_archive_per_service(src, original, archive):
    """Convox's shape: what a Convox rack's `builds import` reads (skopeo oci-archive per service)."""
    row = original[0]
    names = [name for name, _ in members(archive)]
    assert names == ["build.json", *(f"{s}.{row['id']}.tar" for s in ("tools", "web", "worker"))]
    build_json = members(archive)[0][1]
    assert json.loads(build_json) == api(src).get(f"/apps/myapp/builds/{row['id']}").get_json()
    assert build_json.startswith(b'{\n  "id": ')
    for name, data in members(archive)[1:]:
        with tarfile.open(fileobj=io.BytesIO(data)) as image:
            files = set(image.getnames())
            assert json.load(image.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
            index = json.load(image.extractfile("index.json"))
            (entry,) = index["manifests"]
            manifest = json.load(image.extractfile(f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}"))
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        for blob in [manifest["config"], *manifest["layers"]]:
            assert f"blobs/sha256/{blob['digest'].removeprefix('sha256:')}" in files, name
        assert exports.archive_kind(save(name, data)) == "oci-archive"  # every blob matches its digest


def save(name: str, data: bytes) -> Path:
    path = Path(tempfile.mkdtemp(prefix="rack-test-")) / name
    path.write_bytes(data)
    return path


def test_import_makes_a_complete_build_and_release_with_images_pushed(dst, original, imported, engine):
    row, new = original[0], imported
    assert new["status"] == "complete" and new["id"] != row["id"] and new["app"] == "copy"
    copied = (new["description"], new["manifest"], new["entrypoint"])
    assert copied == ("orig", row["manifest"], "/app/bin/web")
    assert new["started"] <= new["ended"]
    release = releases.get(dst, "copy", new["release"])
    assert release["build"] == new["id"] and release["manifest"] == row["manifest"]
    registry = dst.settings.registry
    assert set(new["images"]) == {"web", "worker", "tools"}
    for service, image in new["images"].items():
        assert image["image"] == f"{registry}/copy:{service}.{new['id']}"
        path = f"copy/manifests/{service}.{new['id']}"
        accept = f"{MANIFEST_V2}, application/vnd.oci.image.manifest.v1+json"
        with registry_open(dst.settings, path, method="HEAD", accept=accept) as response:
            assert response.headers["Docker-Content-Digest"] == image["digest"]
    _, key = objects.parse_url(new["logs"])
    log = objects.open_object(dst, "copy", key).read().decode()
    assert f"Importing build {row['id']} of app myapp as {new['id']}\n" in log
    web = new["images"]["web"]["image"]
    assert f"Running: skopeo copy oci-archive:web.{row['id']}.tar docker://{web}\n" in log
    tags = {t for image in engine.images.list() for t in image.tags}
    assert not any(t.endswith(row["id"]) for t in tags)  # the exporting rack's names were not left behind


def test_the_imported_image_is_the_original_and_prints_the_same(original, imported, engine):
    _, printed, stamp = original
    image = imported["images"]["web"]["image"]
    assert printed == f"web: greeting={GREETING} color=green\n"
    assert run(engine, image) == printed
    assert run(engine, image, "cat", "/app/build-stamp.txt") == stamp


def test_export_needs_no_engine_copy_of_the_images(src, original, imported, engine):
    row = original[0]  # `archive` removed the images from the engine: the export reads the registry
    resp = api(src).get(f"/apps/myapp/builds/{row['id']}.tgz")
    assert resp.status_code == 200
    names = [name for name, _ in members(resp.data)]
    assert names[1:] == [f"{s}.{row['id']}.tar" for s in ("tools", "web", "worker")]
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(row["images"]["web"]["image"])


def test_build_json_is_sent_before_any_image_is_saved(src, original, monkeypatch):
    saved, copy = [], exports.skopeo.copy
    monkeypatch.setattr(
        exports.skopeo, "copy", lambda src, dest, **kw: saved.append(src) or copy(src, dest, **kw)
    )
    resp = api(src).get(f"/apps/myapp/builds/{original[0]['id']}.tgz", buffered=False)
    unzip, head, chunks = zlib.decompressobj(31), b"", iter(resp.response)
    while len(head) < 2 * 512:  # the build.json member: a header block, then the JSON
        head += unzip.decompress(next(chunks))
    assert head[:10] == b"build.json" and saved == []
    resp.close()  # a client leaving mid-export ends the stream: nothing more is saved
    assert saved == []


def test_a_convox_export_imports(dst, engine, monkeypatch):
    """An archive as a Convox rack exports it: build.json (no images field) and a skopeo OCI archive."""
    apps.create(dst, name="fromconvox")
    sent: list[str] = []
    monkeypatch.setattr(dst, "send_event", lambda hook_id, body: sent.append(json.loads(body)["action"]))
    events.add(dst, "https://example.com/events", app="fromconvox")
    build = {
        "id": "BCONVOXMADE", "app": "theirs", "description": "built on convox", "entrypoint": "",
        "git-sha": "abc123", "logs": "object://theirs/build/BCONVOXMADE/logs",
        "manifest": "services:\n  web:\n    build: .\n", "process": "build-abcde", "release": "RCONVOXMADE",
        "reason": "", "repository": "", "status": "complete",
        "started": "2026-01-02T03:04:05.123456789Z", "ended": "2026-01-02T03:05:06Z",
    }  # fmt: skip
    image = oci_archive({"hello.txt": "hello from convox\n"}, cmd=["cat", "/hello.txt"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        root = tarfile.TarInfo("")  # Convox also writes its temp folder, as an entry with no name
        root.type = tarfile.DIRTYPE
        t.addfile(root)
        for name, data in (
            ("build.json", json.dumps(build, indent=2).encode()),
            ("web.BCONVOXMADE.tar", image),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            t.addfile(info, io.BytesIO(data))
    resp = api(dst).post("/apps/fromconvox/builds/import", data=buf.getvalue())
    assert resp.status_code == 200, resp.get_json()
    new = resp.get_json()
    assert (new["status"], new["description"], new["git-sha"]) == ("complete", "built on convox", "abc123")
    web = new["images"]["web"]["image"]
    assert web == f"{dst.settings.registry}/fromconvox:web.{new['id']}"
    assert new["images"]["web"]["digest"].startswith("sha256:")
    assert run(engine, web) == "hello from convox\n"
    assert sent == ["build:create", "build:complete", "release:create"]
    # A corrupt blob is refused before anything is pushed.
    spoilt = bytearray(image)
    at = spoilt.index(b"hello from convox")
    spoilt[at] ^= 1
    body = tgz({"build.json": json.dumps(build).encode(), "web.BCONVOXMADE.tar": bytes(spoilt)})
    resp = api(dst).post("/apps/fromconvox/builds/import", data=body)
    assert resp.status_code == 400
    assert "does not match its digest (the archive is corrupt)" in resp.get_json()["error"]
    assert len(builds.list_for_app(dst, "fromconvox")) == 1


def nothing_created(r: Rack, app: str) -> None:
    assert builds.list_for_app(r, app) == []
    assert releases.list_for_app(r, app) == []
    assert not (Path(r.settings.storage.removeprefix("file://")) / app / "build").exists()


def test_a_failed_push_fails_the_import_and_records_nothing(dst, archive):
    down = make_rack(dst.settings, registry="127.0.0.1:9")
    apps.create(down, name="unpushed")
    resp = api(down).post("/apps/unpushed/builds/import", data=archive)
    assert resp.status_code == 502
    assert resp.get_json()["error"].startswith("pushing 127.0.0.1:9/unpushed:tools.B")
    nothing_created(down, "unpushed")
    down.close()


def bad_archives(archive: bytes) -> dict[str, tuple[bytes, str]]:
    real = dict(members(archive))
    source = json.loads(real["build.json"])
    web = f"web.{source['id']}.tar"
    only_web = {**source, "images": {"web": source["images"]["web"]}}
    return {
        "garbage": (b"not an archive at all\n" * 100, "the import is not a gzip'd tar"),
        "empty": (b"", "the import is empty: send the whole output of `convox builds export`"),
        "bad deflate": (tgz({})[:10] + b"x" * 10, "the import is not a gzip'd tar"),
        "gzip, not tar": (gzip.compress(b"hello\n" * 200), "the import is not a tar"),
        "truncated": (archive[: len(archive) // 2], "the import is truncated"),
        "no gzip trailer": (archive[:-8], "the import is truncated"),  # every tar member whole
        "no build.json": (tgz({web: real[web]}), "the import has no build.json"),
        "bad build.json": (tgz({"build.json": b"{nope"}), "build.json is not valid JSON"),
        "missing image": (tgz({"build.json": real["build.json"], web: real[web]}), "image of: tools"),
        "foreign image": (
            tgz({"build.json": json.dumps(only_web).encode(), web: real[web], "db." + web[4:]: real[web]}),
            "the build has no service 'db'",
        ),
        "other build's": (tgz({"build.json": real["build.json"], "web.BOTHERBUILD.tar": b""}), "not an"),
        "misnamed": (
            tgz({"build.json": real["build.json"], "web.tar": b""}),
            "expected <service>.<BUILD ID>",
        ),
        "not docker save": (
            tgz({"build.json": json.dumps(only_web).encode(), web: tgz({"x": b"y"})}),
            f"{web} is not an image archive",
        ),
    }


def test_a_bad_archive_is_a_400_and_creates_nothing(dst, archive):
    apps.create(dst, name="refused")
    client = api(dst)
    for case, (body, error) in bad_archives(archive).items():
        resp = client.post("/apps/refused/builds/import", data=body)
        assert resp.status_code == 400, (case, resp.get_json())
        assert error in resp.get_json()["error"], (case, resp.get_json())
    nothing_created(dst, "refused")


def test_an_import_over_the_size_limit_is_413(dst, archive):
    small = make_rack(dst.settings, max_upload_bytes=1000)
    assert api(small).post("/apps/copy/builds/import", data=archive).status_code == 413
    with pytest.raises(TooLarge):  # a chunked body has no length: counted as it is read
        exports.import_build(small, "copy", io.BytesIO(archive))
    small.close()


def test_only_a_complete_build_exports(src, original):
    client = api(src)
    for status in ("created", "running", "failed"):
        with src.db.transaction() as conn:
            row = builds_sql.insert(
                conn, id=f"BEXPORT{status[:4].upper()}", app="myapp", source_url="", options={},
                description="", git_sha="", status=status,
            )  # fmt: skip
        resp = client.get(f"/apps/myapp/builds/{row['id']}.tgz")
        error = f"build {row['id']} is {status}: only a complete build can be exported"
        assert (resp.status_code, resp.get_json()) == (409, {"error": error})
    assert client.get("/apps/myapp/builds/BNOSUCHBUILD.tgz").status_code == 404
    missing = client.get("/apps/myapp/builds/BNOSUCHBUIL.tgz")
    assert (missing.status_code, missing.get_json()) == (404, {"error": "build not found: BNOSUCHBUIL"})
    assert client.get(f"/apps/nope/builds/{original[0]['id']}.tgz").status_code == 404
    assert client.get(f"/apps/myapp/builds/{original[0]['id']}").content_type == "application/json"


def test_an_older_export_of_docker_save_archives_still_imports(dst, original, engine):
    row, printed, _ = original
    web = row["images"]["web"]["image"]
    engine.images.pull(web)
    saved = b"".join(engine.api.get_image(web))
    only_web = {**builds.serialize(row), "images": {"web": row["images"]["web"]}}
    body = tgz({"build.json": json.dumps(only_web).encode(), f"web.{row['id']}.tar": saved})
    apps.create(dst, name="older")
    resp = api(dst).post("/apps/older/builds/import", data=body)
    assert resp.status_code == 200, resp.get_json()
    assert run(engine, resp.get_json()["images"]["web"]["image"]) == printed


def _retagged(image_tar: bytes, tags: list[str]) -> bytes:
    """Return a `docker save` archive whose manifest.json and `repositories` name other tags."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(image_tar)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest[0]["RepoTags"] = tags
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
        legacy = json.dumps({"busybox": {"latest": "0" * 64}}).encode()
        info = tarfile.TarInfo("repositories")
        info.size = len(legacy)
        dst.addfile(info, io.BytesIO(legacy))
    return out.getvalue()


def test_a_crafted_import_retags_nothing_but_its_own_image(dst, original, engine):
    """A docker-save archive whose RepoTags name a base image and another app's tag repoints neither."""
    row, printed, _ = original
    victim = f"{dst.settings.registry}/victim:web.BVICTIMXXXX"
    engine.images.get("busybox:latest").tag(victim)
    auth = {"username": dst.settings.registry_username, "password": dst.settings.registry_password}
    assert "error" not in engine.api.push(victim, auth_config=auth)
    accept = f"{MANIFEST_V2}, application/vnd.oci.image.manifest.v1+json"

    def digest(tag: str) -> str:
        path = tag.removeprefix(dst.settings.registry + "/").replace(":", "/manifests/")
        with registry_open(dst.settings, path, method="HEAD", accept=accept) as response:
            return response.headers["Docker-Content-Digest"]

    before = ({name: engine.images.get(name).id for name in ("busybox:latest", victim)}, digest(victim))
    web = row["images"]["web"]["image"]
    engine.images.pull(web)  # from the exporting rack's registry, which the client is logged in to
    crafted = _retagged(b"".join(engine.api.get_image(web)), ["busybox:latest", victim])
    only_web = {**builds.serialize(row), "images": {"web": row["images"]["web"]}}
    apps.create(dst, name="crafted")
    body = tgz({"build.json": json.dumps(only_web).encode(), f"web.{row['id']}.tar": crafted})
    resp = api(dst).post("/apps/crafted/builds/import", data=body)
    assert resp.status_code == 200, resp.get_json()
    after = ({name: engine.images.get(name).id for name in ("busybox:latest", victim)}, digest(victim))
    assert after == before  # neither the engine's tags nor the registry's moved
    imported = resp.get_json()["images"]["web"]["image"]
    assert imported == f"{dst.settings.registry}/crafted:web.{resp.get_json()['id']}"
    assert run(engine, imported) == printed  # the archive's own image, under the rack's own name
    engine.images.remove(victim)

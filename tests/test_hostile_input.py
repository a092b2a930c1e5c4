"""Hostile input end to end: uploaded through the API, built by the pipeline, contained.

The extractor, the manifest and the API each have unit tests for hostile input (test_source.py,
test_manifest.py, test_api_*.py, test_fuzz_api.py). Here the same kinds of input go the whole way, as a
client would send them: each build fails with a clear `user:` reason, nothing outside the build's own temp
folder is touched (a sentinel folder beside it stays as it was, the temp folder is gone afterwards), no
shell ever sees a value, and the rack goes on serving and building.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import secrets
import tarfile
import tempfile
from pathlib import Path

import pytest

from rack import objects
from rack.pipeline import run as pipeline
from tests.helpers import run_image

MiB = 1024 * 1024
MANIFEST = "services:\n  web:\n    build: .\n"
DOCKERFILE = "FROM busybox\nRUN echo built\n"
# The build's source folder is <tmp>/work/<id>-<random>/src: three levels up is <tmp>.
UP = "../../../"


@pytest.fixture
def box(docker_stack, rack, tmp_path, monkeypatch):
    """Builds' temp folders under <tmp>/work, a sentinel folder <tmp>/outside, small extraction limits."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "target").write_text("original\n")
    (outside / "Dockerfile").write_text(DOCKERFILE)  # would build fine if a build could reach it
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    small = dataclasses.replace(
        rack.settings, extract_max_bytes=8 * MiB, extract_max_entries=200, build_dir=str(work)
    )
    monkeypatch.setattr(rack, "settings", small)
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple]:
    """Describe every path under root with its type, size, mode, mtime and link count or target."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, target)
    return found


def member(name: str, data: bytes | None = b"", *, kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 1_700_000_000
    info.size = len(data or b"") if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def archive(*members, files: bool = True) -> bytes:
    """A .tgz of a valid app (unless `files` is false) followed by the given members."""
    valid = [member("convox.yml", MANIFEST.encode()), member("Dockerfile", DOCKERFILE.encode())]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [*(valid if files else []), *members]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def build_through_api(client, rack, body: bytes, **data: str) -> dict:
    """Upload `body`, create a build of it through the API, run it as a worker would; return the row."""
    if client.get("/apps/hostile").status_code == 404:
        assert client.post("/apps", data={"name": "hostile"}).status_code == 200
    url = client.post("/apps/hostile/objects/tmp/src.tgz", data=body).get_json()["Url"]
    resp = client.post("/apps/hostile/builds", data={"url": url, **data})
    assert resp.status_code == 200, resp.data
    build_id = resp.get_json()["id"]
    assert pipeline.run_build(rack, build_id, process="hostile:1") is not None
    return client.get(f"/apps/hostile/builds/{build_id}").get_json()


def stored_log(rack, row: dict) -> str:
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, "hostile", key) as fh:
        return fh.read().decode()


def assert_failed_and_contained(rack, row: dict, box: Path, before: dict, reason: str) -> None:
    assert row["status"] == "failed"
    assert row["reason"].startswith(reason), row["reason"]
    assert stored_log(rack, row).endswith(f"ERROR: {row['reason'].split(': ', 1)[1]}\n")
    assert snapshot(box / "outside") == before
    assert sorted(p.name for p in box.iterdir()) == ["objects", "outside", "work"]
    assert list((box / "work").iterdir()) == []  # the build's own folder is gone too


TRUNCATED = archive()[:-40]
ARCHIVES = {
    "dotdot path": lambda out: archive(member(f"{UP}outside/owned", b"x")),
    "absolute path": lambda out: archive(member(f"{out}/owned", b"x")),
    "write through a relative symlink": lambda out: archive(
        member("esc", kind=tarfile.SYMTYPE, link=f"{UP}outside"), member("esc/owned", b"x")
    ),
    "write through an absolute symlink": lambda out: archive(
        member("esc", kind=tarfile.SYMTYPE, link=str(out)), member("esc/owned", b"x")
    ),
    "symlinked Dockerfile outside": lambda out: archive(
        member("convox.yml", MANIFEST.encode()),
        member("Dockerfile", kind=tarfile.SYMTYPE, link=f"{UP}outside/Dockerfile"),
        files=False,
    ),
    "hard link to a file outside": lambda out: archive(
        member("t", kind=tarfile.LNKTYPE, link=f"{out}/target")
    ),
    "hard link to /etc/passwd": lambda out: archive(member("p", kind=tarfile.LNKTYPE, link="/etc/passwd")),
    "char device": lambda out: archive(member("null2", kind=tarfile.CHRTYPE)),
    "fifo": lambda out: archive(member("pipe", kind=tarfile.FIFOTYPE)),
    "size bomb": lambda out: archive(member("zeros", bytes(16 * MiB))),
    "entry bomb": lambda out: archive(*(member(f"f{i}", b"") for i in range(300))),
    "1000 folders deep": lambda out: archive(member("d/" * 1000 + "f", b"x")),
    "truncated": lambda out: TRUNCATED,
    "not gzip": lambda out: b"this is not a tarball\n" * 10,
    "gzip of text": lambda out: gzip.compress(b"hello world\n" * 100),
}


@pytest.mark.docker
@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_hostile_archives_fail_the_build_and_touch_nothing(box, client, rack, kind):
    before, passwd = snapshot(box / "outside"), os.stat("/etc/passwd")
    row = build_through_api(client, rack, ARCHIVES[kind](box / "outside"))
    assert_failed_and_contained(rack, row, box, before, "user:source: ")
    assert os.stat("/etc/passwd") == passwd
    assert client.get("/apps/hostile").status_code == 200  # the rack keeps serving


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)
BAD_MANIFESTS = {
    "dockerfile-dotdot": "services:\n  web:\n    build: {path: ., manifest: ../x/Dockerfile}\n",
    "path-dotdot": f"services:\n  web:\n    build: {UP}outside\n",
    "path-root": "services:\n  web:\n    build: /\n",
    "service-semicolon": 'services:\n  "web;touch OUT/owned":\n    build: .\n',
    "service-subshell": 'services:\n  "$(touch OUT/owned)":\n    build: .\n',
    "alias-bomb": ALIAS_BOMB + "services:\n  web:\n    build: .\n",
    "huge": "services:\n  web:\n    build: .\n" + "# padding\n" * 150_000,
    "not-yaml": "\x00\x01 services: [\n",
    "nul-in-image": 'services:\n  web:\n    image: "busy\\0box"\n',
    "space-in-image": 'services:\n  web:\n    image: "busybox; touch OUT/owned"\n',
}


@pytest.mark.docker
@pytest.mark.parametrize(
    ("manifest", "dockerfile", "reason"),
    [
        *((text, None, "user:manifest: ") for text in BAD_MANIFESTS.values()),
        (MANIFEST, f"FROM busybox\nCOPY {UP}outside/target /t\n", "user:step: "),
    ],
    ids=[*BAD_MANIFESTS, "copy-out"],
)
def test_bad_manifests_and_paths_out_of_the_source_fail_the_build(
    box, client, rack, manifest, dockerfile, reason
):
    before = snapshot(box / "outside")
    files = [member("convox.yml", manifest.replace("OUT", str(box / "outside")).encode())]
    files.append(member("Dockerfile", (dockerfile or DOCKERFILE).encode()))
    row = build_through_api(client, rack, archive(*files, files=False))
    assert_failed_and_contained(rack, row, box, before, reason)
    assert row["images"] == {}


@pytest.mark.docker
@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_copy_of_the_folder_above_the_source_takes_nothing_from_outside(
    box, client, rack, docker_stack, monkeypatch, builder
):
    """The classic builder refuses `COPY ../`; BuildKit reads it as the context's own root."""
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, builder=builder))
    before = snapshot(box / "outside")
    dockerfile = 'FROM busybox\nCOPY ../ /up\nCMD ["ls", "/up"]\n'
    row = build_through_api(
        client,
        rack,
        archive(member("convox.yml", MANIFEST.encode()), member("Dockerfile", dockerfile.encode())),
    )
    if builder == "classic":
        assert_failed_and_contained(rack, row, box, before, "user:step: ")
        return
    assert row["status"] == "complete", row["reason"]
    assert snapshot(box / "outside") == before
    client_ = docker_stack.docker()
    try:
        assert run_image(client_, row["images"]["web"]["image"]).split() == ["Dockerfile", "convox.yml"]
    finally:
        client_.close()


@pytest.mark.docker
def test_build_args_and_env_with_shell_metacharacters_reach_the_build_verbatim(
    box, client, rack, docker_stack
):
    out = box / "outside"
    values = {
        "V1": f"$(touch {out}/owned-1)",
        "V2": f"`touch {out}/owned-2`; echo pwned && rm -rf / || true",
        "V3": "'\"\\ | & > < * ? ~ {a..b} [x] ! # % $HOME ${PATH} \t end",
        "V4": f"-o /dev/null --output={out}/owned-4",
    }
    env = {"E1": f"a,b;c $(touch {out}/owned-5) `id` 'q' \"dq\"", "E2": "x\\ny"}
    before = snapshot(out)
    assert client.post("/apps", data={"name": "hostile"}).status_code == 200
    body = "".join(f"{name}={value}\n" for name, value in env.items())
    assert client.post("/apps/hostile/releases", data={"env": body}).status_code == 200
    names = [*values, *env]
    dockerfile = "FROM busybox\n" + "".join(f"ARG {n}\n" for n in names)
    dockerfile += (
        "RUN " + " && ".join(f"printf '%s' \"${n}\" > /{n}" for n in names) + ' && echo "got: $V1"\n'
    )
    token = secrets.token_hex(4)  # a RUN step of its own, never from the cache
    dockerfile += f"RUN echo {token}\n"
    tgz = archive(
        member("convox.yml", MANIFEST.encode()), member("Dockerfile", dockerfile.encode()), files=False
    )
    args = ",".join(f"{name}={value}" for name, value in values.items())  # the API splits on commas
    row = build_through_api(client, rack, tgz, **{"build-args": args})
    assert row["status"] == "complete", row["reason"]
    assert f"got: {values['V1']}\n" in stored_log(rack, row)
    assert read_files(docker_stack, row["images"]["web"]["image"], list(names)) == {**values, **env}
    assert snapshot(out) == before  # no owned-* file: no shell on the rack's side saw a value
    assert list((box / "work").iterdir()) == []


def read_files(docker_stack, image: str, names: list[str]) -> dict[str, str]:
    """Read files at / of an image from a created (never started) container: no output to race for."""
    engine = docker_stack.docker()
    container = engine.containers.create(image, ["true"], network_disabled=True)
    try:
        found = {}
        for name in names:
            chunks, _ = container.get_archive(f"/{name}")
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                found[name] = tar.extractfile(name).read().decode()
        return found
    finally:
        container.remove(force=True)
        engine.close()


@pytest.mark.docker
@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:9/r.git#$(touch OUT/owned)",
        "https://127.0.0.1:9/r.git#x;touch OUT/owned",
        "ssh://-oProxyCommand=touch%20OUT%2Fowned/r.git",
        "file://OUT/../../../etc",
    ],
    ids=["ref-subshell", "ref-semicolon", "ssh-proxycommand", "file-url"],
)
def test_hostile_git_urls_fail_the_build_and_run_nothing(box, client, rack, url):
    before = snapshot(box / "outside")
    assert client.post("/apps", data={"name": "hostile"}).status_code == 200
    resp = client.post("/apps/hostile/builds", data={"url": url.replace("OUT", str(box / "outside"))})
    if resp.status_code == 200:
        build_id = resp.get_json()["id"]
        assert pipeline.run_build(rack, build_id, process="hostile:1") is not None
        row = client.get(f"/apps/hostile/builds/{build_id}").get_json()
        assert_failed_and_contained(rack, row, box, before, "user:source: ")
    else:
        assert resp.status_code == 400, resp.data
    assert snapshot(box / "outside") == before


@pytest.mark.docker
def test_the_rack_still_builds_after_hostile_input(box, client, rack):
    token = secrets.token_hex(4)
    tgz = archive(
        member("convox.yml", MANIFEST.encode()),
        member("Dockerfile", f"FROM busybox\nRUN echo fine {token}\n".encode()),
        files=False,
    )
    row = build_through_api(client, rack, tgz)
    assert row["status"] == "complete", row["reason"]
    assert f"fine {token}\n" in stored_log(rack, row)
    assert list((box / "work").iterdir()) == []


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("post", "/apps/nul/builds", {"url": "object://nul/tmp/s.tgz", "build-args": "A=1\x00"}),
        ("post", "/apps/nul/builds", {"url": "object://nul/tmp/s.tgz", "description": "a\x00b"}),
        ("post", "/apps/nul/builds", {"url": "object://nul/tmp/s.tgz", "git-sha": "\x00"}),
        ("post", "/apps/nul/builds", {"url": "object://nul/tmp/s\x00.tgz"}),
        ("post", "/apps/nul/releases", {"env": "A=\x00"}),
        ("post", "/apps/nul/releases", {"description": "\x00"}),
        ("put", "/apps/nul/builds/BNOSUCHBLDX", {"description": "\x00"}),
        ("post", "/apps", {"name": "nul\x00"}),
    ],
)
def test_nul_bytes_in_parameters_are_400_and_write_nothing(client, method, path, data):
    assert client.post("/apps", data={"name": "nul"}).status_code == 200
    client.post("/apps/nul/objects/tmp/s.tgz", data=b"x")
    resp = getattr(client, method)(path, data=data)
    assert resp.status_code == 400, resp.data
    assert "NUL" in resp.get_json()["error"]
    assert client.get("/apps/nul/builds").get_json() == []
    assert len(client.get("/apps/nul/releases").get_json()) == 0
    assert [a["name"] for a in client.get("/apps").get_json()] == ["nul"]

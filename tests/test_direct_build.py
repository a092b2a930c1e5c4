"""Copy-only Dockerfiles on the real stack: the rack writes their images into the registry itself, file
for file and setting for setting what BuildKit and the classic builder make, and a one-file change sends
one small layer."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from rack import apps
from rack.builds import record as builds
from rack.context import Rack
from rack.errors import BuildError, BuildPlatformError
from rack.pipeline import run as pipeline
from rack.pipeline.direct.image import Prepared, prepare
from rack.pipeline.direct.plan import Plan
from rack.pipeline.direct.plan import read as read_plan
from rack.pipeline.engine.classic import Engine
from rack.reasons import Reason
from rack.registry import Registry
from tests.helpers import build, build_log, run_image, send_tree, write_app

pytestmark = pytest.mark.docker

MANIFEST = "services:\n  web:\n    build: .\n"
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels")
WRITTEN = "Wrote the image from its files"
# what the engine puts in every container it creates, stamped with that time
MADE_BY_THE_ENGINE = {
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
    "dev/pts",
    "dev/shm",
}


@pytest.fixture
def rrack(docker_stack, rack):
    apps.create(rack, name="myapp")
    return rack


def source(root: Path, dockerfile: str) -> Path:
    """An app with nested folders of several modes, an executable, a link and an empty folder."""
    write_app(
        root,
        {"convox.yml": MANIFEST, "Dockerfile": dockerfile, "a.txt": "a\n", "lib/b.txt": "b\n",
         "lib/deep/c.txt": "c\n", "bin/run": "#!/bin/sh\necho ran \"$@\"\n"},
    )  # fmt: skip
    (root / "bin" / "run").chmod(0o755)
    (root / "lib" / "deep").chmod(0o700)
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link")
    for n, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, (1_600_000_000 + n, 1_600_000_000 + n), follow_symlinks=False)
    return root


def run(rack: Rack, folder: Path, **options) -> dict:
    url, _ = send_tree(rack, "myapp", folder)
    row = builds.create(rack, "myapp", url=url, **options)
    done = pipeline.run_build(rack, row["id"], process="tests:1")
    assert done is not None and done["status"] == "complete", done and done["reason"]
    return done


def filesystem(client, image: str) -> dict[str, tuple]:
    """Every path of the image as a container sees it: type, mode, owner, size, link, content digest,
    and a file's mtime (folders' are the build's time under BuildKit)."""
    client.images.pull(image)
    container = client.containers.create(image, command=["true"], network_mode="none")
    try:
        data = b"".join(container.export())
    finally:
        container.remove(force=True)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            content = tar.extractfile(m).read() if m.isfile() else b""
            out[m.name.rstrip("/")] = (
                m.type, m.mode, m.uid, m.gid, m.size, m.linkname, hashlib.sha256(content).hexdigest(),
                m.mtime if not m.isdir() and m.name not in MADE_BY_THE_ENGINE else None,
            )  # fmt: skip
    return out


def config(client, image: str) -> dict:
    found = client.api.inspect_image(image)["Config"]
    return {k: found.get(k) or None for k in CONFIG_FIELDS}


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM busybox\nCOPY . /app\n",
        'FROM busybox\nWORKDIR /srv/app\nCOPY --chown=5:6 . .\nENV A=1 PATH=/x:/bin\nLABEL l="v w"\n'
        'EXPOSE 8080 53/udp\nUSER 5\nCMD ["cat", "/srv/app/a.txt"]\n',
        "FROM busybox\nCOPY a.txt lib /opt/x/\nCOPY bin/run /usr/local/bin/run\nENV B two words\n"
        'ENTRYPOINT ["/usr/local/bin/run"]\nCMD echo $HOME\n',
    ],
    ids=["copy-all", "workdir-chown-settings", "files-and-entrypoint"],
)
@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_the_written_image_is_the_one_the_engine_makes(rrack, tmp_path, docker_stack, dockerfile, builder):
    folder = source(tmp_path / "myapp", dockerfile)
    written = run(rrack, folder)
    assert WRITTEN in build_log(rrack, written)
    engine_settings = dataclasses.replace(rrack.settings, direct_build=False, builder=builder)
    engine_rack = Rack(engine_settings, enqueue_build=lambda _: None)
    try:
        built = run(engine_rack, folder, no_cache=True)
    finally:
        engine_rack.close()
    assert WRITTEN not in build_log(rrack, built)
    client = docker_stack.docker()
    try:
        mine, theirs = (r["images"]["web"]["image"] for r in (written, built))
        assert mine != theirs
        assert filesystem(client, mine) == filesystem(client, theirs)
        assert config(client, mine) == config(client, theirs)
        assert written["entrypoint"] == built["entrypoint"]
        if "ENTRYPOINT" in dockerfile:
            assert run_image(client, mine, "/usr/local/bin/run", "x") == "ran x\n"
    finally:
        client.close()


IGNORE = "*.log\nDockerfile\n.dockerignore\nlib/deep\n!lib/deep/c.txt\nempty\n"


@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_dockerignore_leaves_out_what_the_engine_leaves_out(rrack, tmp_path, docker_stack, builder):
    folder = source(tmp_path / "myapp", "FROM busybox\nCOPY . /app\n")
    write_app(folder, {".dockerignore": IGNORE, "x.log": "log\n", "lib/deep/d.txt": "d\n"})
    mine = Rack(dataclasses.replace(rrack.settings, builder=builder), enqueue_build=lambda _: None)
    theirs = Rack(dataclasses.replace(mine.settings, direct_build=False), enqueue_build=lambda _: None)
    try:  # the whole folder is sent (as a .tgz), so the rack reads .dockerignore as the engine does
        written, built = (
            build(mine, "myapp", folder, dockerignore=False),
            build(theirs, "myapp", folder, dockerignore=False),
        )
    finally:
        mine.close()
        theirs.close()
    assert written["status"] == built["status"] == "complete", (written["reason"], built["reason"])
    assert WRITTEN in build_log(rrack, written) and WRITTEN not in build_log(rrack, built)
    client = docker_stack.docker()
    try:
        seen = filesystem(client, written["images"]["web"]["image"])
        assert seen == filesystem(client, built["images"]["web"]["image"])
    finally:
        client.close()
    assert "app/lib/deep/c.txt" in seen and "app/a.txt" in seen
    assert not {"app/x.log", "app/lib/deep/d.txt", "app/empty"} & set(seen)
    assert ("app/Dockerfile" in seen) == (builder == "classic")


def test_a_one_file_change_sends_one_small_layer(rrack, tmp_path, docker_stack):
    folder = write_app(
        tmp_path / "myapp", {"convox.yml": MANIFEST, "Dockerfile": "FROM busybox\nCOPY . /app\n"}
    )
    for n in range(200):
        (folder / f"d{n % 5}").mkdir(exist_ok=True)
        (folder / f"d{n % 5}" / f"f{n:03d}.bin").write_bytes(os.urandom(20_000))
    first = run(rrack, folder)
    line = next(x for x in build_log(rrack, first).splitlines() if x.startswith(WRITTEN))
    made, total = (int(w) for w in line.split(": ", 1)[1].split()[0:3:2])
    assert made == total >= 16  # every part of the copy sent
    (folder / "d3" / "f003.bin").write_bytes(b"changed\n")
    second = run(rrack, folder)
    line = next(x for x in build_log(rrack, second).splitlines() if x.startswith(WRITTEN))
    assert line.split(": ", 1)[1].startswith(f"1 of {total} layers sent"), line
    sent, whole = (float(w) for w in line.split("(")[1].split()[0:4:3])
    assert whole > 4 and sent < whole / 8  # MB: the one part holding the file, of a 4 MB copy
    client = docker_stack.docker()
    try:
        image = second["images"]["web"]["image"]
        assert run_image(client, image, "cat", "/app/d3/f003.bin") == "changed\n"
        assert run_image(client, image, "sh", "-c", "ls /app/d* | grep -c bin") == "200\n"
    finally:
        client.close()
    again = run(rrack, folder, no_cache=True)
    line = next(x for x in build_log(rrack, again).splitlines() if x.startswith(WRITTEN))
    assert line.split(": ", 1)[1].startswith(f"{total} of {total} layers sent"), line


@pytest.mark.parametrize(
    "dockerfile, files, reason",
    [
        (
            "FROM busybox\nCOPY . /app\n",
            {"Dockerfile.dockerignore": "*.log\n"},
            "the Dockerfile has its own .dockerignore",
        ),
        ("FROM busybox\nCOPY . /bin/\n", {}, "/bin is in the base image"),
        ("FROM busybox\nUSER 5\nWORKDIR /w\nCOPY . .\n", {}, "a WORKDIR comes under a USER"),
        ("FROM busybox\nWORKDIR /usr\nCOPY . .\n", {}, "/usr is in the base image"),
        ("FROM busybox\nCOPY missing /app/\n", {}, None),
    ],
)
def test_what_the_rack_does_not_reproduce_is_left_to_the_engine(rrack, tmp_path, dockerfile, files, reason):
    folder = write_app(
        tmp_path / "myapp", {"convox.yml": MANIFEST, "Dockerfile": dockerfile, "a.txt": "a\n", **files}
    )
    url, _ = send_tree(rrack, "myapp", folder)
    row = builds.create(rrack, "myapp", url=url)
    done = pipeline.run_build(rrack, row["id"], process="tests:1")
    log = build_log(rrack, done)
    assert WRITTEN not in log
    if reason is None:
        assert done["status"] == "failed" and "missing" in done["reason"]
    else:
        assert done["status"] == "complete", done["reason"]
        assert f"Building with the engine: {reason}" in log


def test_a_cancel_while_planning_or_writing_or_a_refusing_registry_leaves_no_tag(rrack, tmp_path):
    folder = source(tmp_path / "myapp", "FROM busybox\nCOPY . /app\n")
    for n in range(40):
        (folder / f"f{n:02d}.bin").write_bytes(os.urandom(50_000))
    plan = read_plan("FROM busybox\nCOPY . /app\n", {})
    assert isinstance(plan, Plan)
    engine = Engine(rrack.settings)
    try:

        def cancelled() -> None:
            raise BuildPlatformError(Reason.CANCELLED, "cancelled while reading")

        with pytest.raises(BuildError, match="cancelled while reading"):  # files no tree names are read
            prepare(engine, plan, folder, hashes={}, check=cancelled)
        prepared = prepare(engine, plan, folder, hashes={})
        assert isinstance(prepared, Prepared) and prepared.layer_count >= 16
        calls = []

        def cancel_on_the_tenth_file() -> None:
            calls.append(1)
            if len(calls) == 10:
                raise BuildPlatformError(Reason.CANCELLED, "cancelled while writing")

        tag = f"{rrack.settings.registry}/cutapp:web.cut"  # a repository of its own
        with pytest.raises(BuildError, match="cancelled while writing"):
            prepared.write(tag, previous=None, fresh=False, check=cancel_on_the_tenth_file)
        refused = Engine(dataclasses.replace(rrack.settings, registry_password="not-the-password"))
        try:
            again = prepare(refused, plan, folder, hashes={})
            assert isinstance(again, Prepared)
            with pytest.raises(BuildPlatformError, match="HTTP 401") as failed:
                again.write(tag, previous=None, fresh=False, check=lambda: None)
            assert failed.value.code == Reason.REGISTRY
        finally:
            refused.close()
        with Registry(rrack.settings) as registry:
            assert registry.tags("cutapp") == []
        made, wrote = prepared.write(tag, previous=None, fresh=False, check=lambda: None)
        assert wrote and made.made == prepared.layer_count
        with Registry(rrack.settings) as registry:
            assert registry.tags("cutapp") == ["web.cut"]
    finally:
        engine.close()

"""Packaging a build context: Docker's .dockerignore rules, a streamed temp file, a sized upload body."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tracemalloc

import pytest

from cli.source import Upload, package, read_dockerignore, source_files
from tests.helpers import write_app


def members(fh) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=fh, mode="r:*") as tar:
        return {m.name: m for m in tar.getmembers()}


TREE = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\n",
    "app.py": "print(1)\n",
    "README.md": "docs\n",
    "notes.md": "ignored\n",
    "secret.env": "TOKEN=1\n",
    "logs/a.log": "x\n",
    "logs/keep.log": "kept by an exception\n",
    "src/deep/x.pyc": "bytecode\n",
    "src/deep/x.py": "code\n",
    "node_modules/lib/index.js": "js\n",
    "# not a comment.txt": "a file whose name starts with a hash\n",
    ".git/HEAD": "ref: refs/heads/main\n",
}

IGNORE = """
# comments and blank lines are skipped

*.md
!README.md
secret.env
logs
!logs/keep.log
**/*.pyc
node_modules/
.git
"""


def test_dockerignore_semantics(tmp_path):
    root = write_app(tmp_path, {**TREE, ".dockerignore": IGNORE})
    assert read_dockerignore(root)[0] == "*.md"
    with package(root) as fh:
        names = set(members(fh))
    assert {"convox.yml", "Dockerfile", "app.py", "README.md", ".dockerignore"} <= names
    assert {"logs/keep.log", "src/deep/x.py", "# not a comment.txt"} <= names
    for gone in ("notes.md", "secret.env", "logs/a.log", "src/deep/x.pyc", "node_modules", ".git/HEAD"):
        assert gone not in names
    assert not any(n.startswith(("node_modules", ".git/")) for n in names)


def test_manifest_dockerfile_and_dockerignore_are_always_sent(tmp_path):
    root = write_app(tmp_path, {**TREE, "other.yml": "services: {}\n", ".dockerignore": "*\n!app.py\n"})
    assert set(source_files(root, manifest="other.yml")) == {
        "other.yml",
        "Dockerfile",
        ".dockerignore",
        "app.py",
    }


AWKWARD = {  # names that patterns treat specially: case, dots, brackets, stars, spaces, deep folders
    "Dockerfile": "FROM busybox\n",
    "convox.yml": "services: {}\n",
    "App.PY": "x",
    "a/b/c/d.txt": "x",
    "a/b/keep.txt": "x",
    "a/B/x.log": "x",
    "build/out/bin": "x",
    "build/out/keep/me": "x",
    "docs/[draft].md": "x",
    "docs/star*name": "x",
    "docs/q?.txt": "x",
    "docs/with space.txt": "x",
    ".hidden/file": "x",
    ".env": "x",
    "node_modules/pkg/index.js": "x",
    "src/node_modules/pkg/index.js": "x",
    "src/main.go": "x",
    "src/main_test.go": "x",
    "deep/1/2/3/4/5/leaf.tmp": "x",
}

IGNORES = [
    "",
    "*\n!src\n",
    "*\n!a/b/keep.txt\n",
    "a\n!a/b\na/b/c\n",
    "**/*.tmp\n**/node_modules\n!src/node_modules/pkg\n",
    "*.py\n*.PY\n[a-c]*\n!App.PY\n",
    "docs/[[]draft].md\ndocs/star\\*name\ndocs/q?.txt\ndocs/with space.txt\n",
    "docs/[!w]*\ndocs/[^q]*\ndocs/[\n",
    "./build/../build/out\n!build/out/keep\n/.hidden/\n.env\n",
    "build/**\n!build/**/me\n**\n!**/*.go\n",
    "src/*_test.go\n  deep  \n!deep/1/2\n!Dockerfile\nconvox.yml\n",
    "a/?/\nA/b\n.\n..\n!\n",
]


@pytest.mark.parametrize("ignore", IGNORES)
def test_dockerignore_selection_is_the_docker_sdks(tmp_path, ignore):
    from docker.utils.build import exclude_paths

    root = write_app(tmp_path / "ctx", {**AWKWARD, ".dockerignore": ignore})
    os.symlink("a/b", root / "link-to-dir")
    os.symlink("missing", root / "dangling")
    os.symlink("../outside", root / "a" / "up")
    expected = sorted(exclude_paths(str(root), [*read_dockerignore(root), "!convox.yml"]))
    assert source_files(root) == expected


def test_no_dockerignore_sends_everything_and_keeps_modes_and_links(tmp_path):
    root = write_app(tmp_path / "ctx", {"run.sh": "#!/bin/sh\n", "data/x": "1"})
    os.chmod(root / "run.sh", 0o755)
    os.symlink("data/x", root / "link")
    (tmp_path / "outside").write_text("not sent")
    with package(root) as fh:
        got = members(fh)
    assert set(got) == {"run.sh", "data", "data/x", "link"}
    assert got["run.sh"].mode & 0o777 == 0o755
    assert got["link"].issym() and got["link"].linkname == "data/x"
    assert got["data"].isdir()


def test_package_follows_a_symlinked_root(tmp_path):
    real = write_app(tmp_path / "real", {"a.txt": "a"})
    os.symlink(real, tmp_path / "alias")
    with package(tmp_path / "alias") as fh:
        assert set(members(fh)) == {"a.txt"}


def test_package_streams_to_disk_not_memory(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    with open(root / "blob.bin", "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1024 * 1024))
    tracemalloc.start()
    try:
        fh = package(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with fh:
        assert os.fstat(fh.fileno()).st_size > 24 * 1024 * 1024  # random data does not compress
        assert peak < 4 * 1024 * 1024, f"packaging held {peak} bytes in memory"
        assert fh.tell() == 0


def test_package_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        package(tmp_path / "f")


def test_upload_body_has_a_length_and_reports_progress(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (2 * 1024 * 1024 + 5))
    seen = []
    with open(path, "rb") as fh:
        body = Upload(fh, progress=lambda sent, total: seen.append((sent, total)))
        assert len(body) == 2 * 1024 * 1024 + 5
        data = b"".join(body)
        assert data == path.read_bytes()
        assert b"".join(body) == data  # re-iterable, e.g. when a request is retried
    total = len(data)
    assert seen[:3] == [(1024 * 1024, total), (2 * 1024 * 1024, total), (total, total)]


@pytest.mark.parametrize("compressible", [True, False])
def test_package_gzips_only_what_compresses_and_the_rack_extracts_both(tmp_path, compressible):
    from rack.pipeline.source import extract_tarball

    root = tmp_path / "ctx"
    root.mkdir()
    for n in range(20):
        (root / f"f{n}").write_bytes(b"line of text\n" * 5000 if compressible else os.urandom(65000))
    with package(root) as fh:
        head = fh.read(2)
        fh.seek(0)
        assert (head == b"\x1f\x8b") is compressible
        dest = tmp_path / "out"
        dest.mkdir()
        extract_tarball(fh, dest, max_bytes=10**8, max_entries=100)
    assert all((dest / f"f{n}").read_bytes() == (root / f"f{n}").read_bytes() for n in range(20))


def test_scan_hashes_only_files_changed_since_the_last_scan(tmp_path):
    from cli import sources

    root = write_app(tmp_path / "ctx", {f"f{n}": f"content {n}\n" for n in range(10)})
    old = 1_700_000_000  # older than the racy window: such files are remembered
    for n in range(10):
        os.utime(root / f"f{n}", (old, old))
    cache = tmp_path / "config" / "hashes.json"
    first = sources.scan(root, cache=cache)
    assert first.hashed == first.files == 10
    assert os.stat(cache).st_mode & 0o777 == 0o600
    again = sources.scan(root, cache=cache)
    assert again.hashed == 0 and again.entries == first.entries
    (root / "f3").write_text("changed\n")  # a new mtime (now, inside the racy window: hashed every time)
    changed = sources.scan(root, cache=cache)
    assert changed.hashed == 1
    (entry,) = [e for e in changed.entries if e["path"] == "f3"]
    assert entry["sha256"] == hashlib.sha256(b"changed\n").hexdigest()
    assert sources.scan(root, cache=cache).hashed == 1  # still racy: not trusted from the cache
    (root / "f3").write_text("changed\n")
    os.utime(root / "f3", (old + 5, old + 5))
    assert sources.scan(root, cache=cache).hashed == 1
    assert sources.scan(root, cache=cache).hashed == 0
    saved = os.stat(cache).st_mtime_ns
    os.utime(cache, ns=(saved - 10**9, saved - 10**9))
    assert sources.scan(root, cache=cache).hashed == 0
    assert os.stat(cache).st_mtime_ns == saved - 10**9  # nothing new: the cache is not written again


def test_scan_sees_a_same_size_rewrite_that_put_the_old_mtime_back(tmp_path):
    from cli import sources

    root = write_app(tmp_path / "ctx", {"f": "version 1\n"})
    old = 1_700_000_000_123_456_789
    os.utime(root / "f", ns=(old, old))
    cache = tmp_path / "hashes.json"
    assert sources.scan(root, cache=cache).hashed == 1
    assert sources.scan(root, cache=cache).hashed == 0
    inode = os.stat(root / "f").st_ino
    with open(root / "f", "r+") as fh:  # in place: same inode, same size
        fh.write("version 2\n")
    before = os.stat(root / "f").st_ctime_ns
    os.utime(root / "f", ns=(old, old))  # as `touch -r` or a tool that keeps times would
    while os.stat(root / "f").st_ctime_ns == before:  # file times move in clock ticks (up to 10 ms)
        os.utime(root / "f", ns=(old, old))
    assert (os.stat(root / "f").st_ino, os.stat(root / "f").st_mtime_ns) == (inode, old)
    again = sources.scan(root, cache=cache)
    assert again.hashed == 1  # the ctime moved: only the kernel sets it
    assert again.entries[0]["sha256"] == hashlib.sha256(b"version 2\n").hexdigest()

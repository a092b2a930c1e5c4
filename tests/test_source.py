"""Extracting uploaded sources and cloning git URLs, including hostile archives."""

from __future__ import annotations

import gzip
import io
import os
import socket
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rack.errors import BuildPlatformError, BuildUserError
from rack.pipeline.source import TRUNCATED, clone_git, extract_tarball

MiB = 1024 * 1024


def file(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def symlink(name: str, target: str):
    return entry(name, tarfile.SYMTYPE, target)


def hardlink(name: str, target: str):
    return entry(name, tarfile.LNKTYPE, target)


def directory(name: str):
    info, _ = entry(name, tarfile.DIRTYPE)
    info.mode = 0o755
    return info, None


def archive(*members, gz: bool = True, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """Return an empty dest and a sentinel directory beside it that must stay empty."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    return dest, outside


def extract(data: bytes, dest: Path, *, max_bytes: int = 10 * MiB, max_entries: int = 1000) -> None:
    extract_tarball(io.BytesIO(data), dest, max_bytes=max_bytes, max_entries=max_entries)


def refused(data: bytes, dest: Path, outside: Path, **limits) -> str:
    """Extract data expecting a refusal; check nothing reached the sentinel; return the message."""
    with pytest.raises(BuildUserError) as caught:
        extract(data, dest, **limits)
    assert caught.value.code == "user:source"
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest", "outside"]
    return caught.value.message


def tree(root: Path) -> dict[str, str]:
    """Describe everything under root: file contents, directories and link targets."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_text()
    return found


def test_extracts_files_directories_and_links(box):
    dest, _ = box
    data = archive(
        directory("./"),
        directory("app"),
        file("app/main.py", b"print(1)\n"),
        file("convox.yml", b"services: {}\n"),
        file("deep/er/x.txt", b"x"),
        symlink("app/link.py", "main.py"),
        symlink("up", "app/../deep"),
        hardlink("copy.yml", "convox.yml"),
    )
    extract(data, dest)
    assert tree(dest) == {
        "app": "dir",
        "app/link.py": "-> main.py",
        "app/main.py": "print(1)\n",
        "convox.yml": "services: {}\n",
        "copy.yml": "services: {}\n",
        "deep": "dir",
        "deep/er": "dir",
        "deep/er/x.txt": "x",
        "up": "-> app/../deep",
    }
    assert os.stat(dest / "copy.yml").st_ino == os.stat(dest / "convox.yml").st_ino
    assert os.stat(dest / "app/main.py").st_mtime == 1_700_000_000


def test_plain_tar_is_accepted(box):
    dest, _ = box
    extract(archive(file("a.txt", b"plain"), gz=False), dest)
    assert (dest / "a.txt").read_text() == "plain"


def test_gnu_format_long_names(box):
    dest, _ = box
    name = "d/" + "n" * 200 + ".txt"
    extract(archive(file(name, b"long"), fmt=tarfile.GNU_FORMAT), dest)
    assert (dest / name).read_text() == "long"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(0o4755, 0o755), (0o2755, 0o755), (0o1777, 0o755), (0o666, 0o644), (0o600, 0o600), (0o400, 0o600)],
)
def test_modes_lose_setuid_and_group_write(box, mode, expected):
    dest, _ = box
    info, data = file("bin/tool", b"#!/bin/sh\n", mode)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    extract(archive((info, data)), dest)
    st_mode = os.stat(dest / "bin/tool").st_mode
    assert stat.S_IMODE(st_mode) == expected
    assert os.stat(dest / "bin/tool").st_uid == os.getuid()


def test_later_entry_replaces_a_link_instead_of_writing_through_it(box):
    dest, _ = box
    data = archive(file("target.txt", b"original"), symlink("link", "target.txt"), file("link", b"new"))
    extract(data, dest)
    assert (dest / "target.txt").read_text() == "original"
    assert not (dest / "link").is_symlink()
    assert (dest / "link").read_text() == "new"


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "//abs", "/"])
def test_absolute_paths_are_refused(box, name):
    dest, outside = box
    message = refused(archive(file(name, b"x")), dest, outside)
    assert repr(name) in message and "absolute" in message


@pytest.mark.parametrize("name", ["../outside/x", "a/../../outside/x", "a/b/../../..", "./../x", ".."])
def test_dotdot_is_refused(box, name):
    dest, outside = box
    message = refused(archive(file(name, b"x")), dest, outside)
    assert repr(name) in message and "'..'" in message


def test_symlink_to_an_absolute_path_is_refused(box):
    dest, outside = box
    message = refused(archive(symlink("a", str(outside)), file("a/pwned", b"x")), dest, outside)
    assert message == f"source archive entry 'a' is a symlink to {str(outside)!r}, outside the source"


@pytest.mark.parametrize(
    "members",
    [
        [symlink("a", "../outside")],
        [symlink("x/y/a", "../../../outside")],
        [symlink("a", "")],
        # lexically inside, but `s` is a link to the root, so `s/..` is the root's parent
        [symlink("sub/s", ".."), symlink("t", "sub/s/../outside")],
        # the same, with the link created before the link it goes through
        [symlink("t", "sub/s/../outside"), symlink("sub/s", "..")],
    ],
)
def test_symlinks_resolving_outside_are_refused(box, members):
    dest, outside = box
    message = refused(archive(*members, file("t/pwned", b"x")), dest, outside)
    assert "symlink" in message and message.startswith("source archive entry ")


def test_files_cannot_be_written_through_an_inside_symlink(box):
    dest, outside = box
    message = refused(archive(file("real/f", b"1"), symlink("a", "real"), file("a/f", b"2")), dest, outside)
    assert message == "source archive entry 'a/f' is inside the symlink 'a'"
    assert (dest / "real/f").read_text() == "1"


def test_directory_entry_over_a_symlink_is_refused(box):
    dest, outside = box
    message = refused(archive(symlink("a", "."), directory("a"), file("a/x", b"1")), dest, outside)
    assert "'a'" in message and "symlink" in message


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ([hardlink("h", "/etc/passwd")], "absolute"),
        ([hardlink("h", "../outside/x")], "'..'"),
        ([hardlink("h", "missing.txt")], "not a file earlier in the archive"),
        ([directory("d"), hardlink("h", "d")], "not a file earlier in the archive"),
        ([file("t", b"1"), symlink("s", "t"), hardlink("h", "s")], "not a file earlier in the archive"),
        ([file("h", b"1"), hardlink("h", "h")], "not a file earlier in the archive"),
    ],
)
def test_bad_hardlinks_are_refused(box, members, fragment):
    dest, outside = box
    message = refused(archive(*members), dest, outside)
    assert message.startswith("source archive entry 'h' ") and fragment in message


@pytest.mark.parametrize(
    ("kind", "word"),
    [(tarfile.CHRTYPE, "char device"), (tarfile.BLKTYPE, "block device"), (tarfile.FIFOTYPE, "fifo")],
)
def test_devices_and_fifos_are_refused(box, kind, word):
    dest, outside = box
    message = refused(archive(file("ok", b"1"), entry("dev/thing", kind)), dest, outside)
    assert message.startswith("source archive entry 'dev/thing' is a " + word)
    assert not (dest / "dev/thing").exists()


def test_too_many_entries(box):
    dest, outside = box
    data = archive(*(file(f"f{i}", b"x") for i in range(11)))
    assert refused(data, dest, outside, max_entries=10) == "the source archive has more than 10 entries"


def test_exactly_max_entries_is_fine(box):
    dest, _ = box
    extract(archive(*(file(f"f{i}", b"x") for i in range(10))), dest, max_entries=10)
    assert len(list(dest.iterdir())) == 10


def test_total_size_is_capped(box):
    dest, outside = box
    data = archive(file("a", b"x" * 600), file("b", b"y" * 600))
    message = refused(data, dest, outside, max_bytes=1000)
    assert message == "the source archive is larger than 1000 bytes when extracted"
    assert (dest / "a").stat().st_size == 600 and not (dest / "b").exists()


class Counting(io.RawIOBase):
    """A stream that counts the bytes taken from it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.taken = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.data.read(size)
        self.taken += len(chunk)
        return chunk


def gzip_bomb(claimed: int) -> bytes:
    """Return a never-ending-looking .tgz: one member of `claimed` zero bytes, cheap to build."""
    info = tarfile.TarInfo("bomb.bin")
    info.size = claimed
    zeros = bytes(MiB)
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = gz.compress(info.tobuf(tarfile.PAX_FORMAT)) + gz.compress(zeros) + gz.flush(zlib.Z_FULL_FLUSH)
    block = gz.compress(zeros) + gz.flush(zlib.Z_FULL_FLUSH)  # independent after a full flush
    return head + block * (claimed // MiB)  # no trailer: extraction must stop long before


def test_gzip_bomb_stops_early(box):
    dest, outside = box
    raw = Counting(gzip_bomb(4096 * MiB))
    started = time.monotonic()
    with pytest.raises(BuildUserError, match="larger than 1048576 bytes"):
        extract_tarball(raw, dest, max_bytes=MiB, max_entries=10)
    assert time.monotonic() - started < 5
    assert raw.taken < len(raw.data.getvalue()) // 20
    assert sum(p.stat().st_size for p in dest.rglob("*")) <= MiB
    assert list(outside.iterdir()) == []


class Trickle(Counting):
    """A stream that comes slowly, as an upload read from a slow object store does."""

    def read(self, size: int = -1) -> bytes:
        time.sleep(0.01)
        return super().read(min(size, 4096) if size >= 0 else 4096)


def test_extraction_stops_when_told(box):
    dest, outside = box
    raw = Trickle(archive(*(file(f"f{i}", b"x" * 1000) for i in range(2000)), gz=False))  # 10 s to read
    started = time.monotonic()
    with pytest.raises(BuildUserError) as caught:
        extract_tarball(
            raw, dest, max_bytes=10 * MiB, max_entries=5000, stop=lambda: time.monotonic() > started + 1
        )
    assert caught.value.code == "cancelled"
    assert time.monotonic() - started < 3
    assert 0 < len(list(dest.iterdir())) < 2000 and raw.taken < len(raw.data.getvalue()) // 2
    assert list(outside.iterdir()) == []


def test_extraction_with_a_stop_never_true_is_whole(box):
    dest, _ = box
    data = archive(*(file(f"f{i}", b"x") for i in range(10)))
    extract_tarball(io.BytesIO(data), dest, max_bytes=MiB, max_entries=10, stop=lambda: False)
    assert len(list(dest.iterdir())) == 10


def test_metadata_bomb_is_bounded(box):
    dest, outside = box
    members = []
    for i in range(40):
        info, data = file(f"f{i}", b"")
        info.pax_headers = {"comment": "z" * 900_000}
        members.append((info, data))
    message = refused(archive(*members), dest, outside, max_bytes=1000, max_entries=100)
    assert message == "the source archive is larger than 1000 bytes when extracted"
    assert len(list(dest.iterdir())) < 5


def test_huge_pax_header_is_refused(box):
    dest, outside = box
    info, data = file("f", b"")
    info.pax_headers = {"comment": "z" * (2 * MiB)}
    assert "metadata header" in refused(archive((info, data)), dest, outside, max_bytes=100 * MiB)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x1f", b"hello, world", b"PK\x03\x04" + bytes(600), bytes(511), b"\x1f\x8b" + bytes(50)],
)
def test_garbage_is_refused(box, body):
    dest, outside = box
    assert refused(body, dest, outside) == TRUNCATED


def test_gzip_of_something_else_is_refused(box):
    dest, outside = box
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        gz.write(b"just some text, not a tar archive " * 40)
    assert refused(buf.getvalue(), dest, outside) == TRUNCATED


def test_empty_archive_is_fine(box):
    dest, _ = box
    extract(archive(), dest)
    assert list(dest.iterdir()) == []


def test_dest_must_be_empty(box):
    dest, _ = box
    (dest / "x").write_text("x")
    with pytest.raises(ValueError):
        extract(archive(file("a", b"1")), dest)


SAMPLE_MEMBERS = (directory("src"), file("src/a.py", b"a" * 3000), file("b.txt", b"b" * 700))
SAMPLE = archive(*SAMPLE_MEMBERS, symlink("c", "b.txt"))
SAMPLE_TAR = archive(*SAMPLE_MEMBERS, gz=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=0, max_value=len(SAMPLE) - 1))
def test_any_truncated_tgz_is_refused(cut):
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(BuildUserError) as caught:
            extract(SAMPLE[:cut], Path(tmp))
        assert caught.value.message == TRUNCATED


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=4 * 512 + 3000 + 700 - 1))
def test_plain_tar_truncated_before_its_end_marker_is_refused(cut):
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(BuildUserError) as caught:
            extract(SAMPLE_TAR[:cut], Path(tmp))
        assert caught.value.message == TRUNCATED


PARTS = st.sampled_from(["a", "b", "..", ".", "", "c"])
NAMES = st.lists(PARTS, min_size=1, max_size=4).map("/".join)
TARGETS = st.one_of(NAMES, NAMES.map(lambda n: "/" + n), st.just("OUTSIDE"))
MEMBERS = st.lists(
    st.one_of(
        st.tuples(st.just("file"), NAMES, st.just("")),
        st.tuples(st.just("dir"), NAMES, st.just("")),
        st.tuples(st.just("sym"), NAMES, TARGETS),
        st.tuples(st.just("hard"), NAMES, NAMES),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(members=MEMBERS)
def test_random_archives_never_escape(members):
    with tempfile.TemporaryDirectory() as tmp:
        root, dest, outside = Path(tmp), Path(tmp) / "dest", Path(tmp) / "outside"
        dest.mkdir()
        outside.mkdir()
        make = {"file": lambda n, t: file(n, b"data"), "dir": lambda n, t: directory(n)}
        make |= {"sym": symlink, "hard": hardlink}
        built = [make[kind](name, target.replace("OUTSIDE", str(outside))) for kind, name, target in members]
        try:
            extract(archive(*built), dest)
            finished = True
        except BuildUserError as exc:
            assert exc.code == "user:source"
            finished = False
        assert list(outside.iterdir()) == []
        assert sorted(p.name for p in root.iterdir()) == ["dest", "outside"]
        real = os.path.realpath(dest)
        for path in dest.rglob("*"):
            # a refused archive may leave a link behind for the caller to delete; a finished one never
            if finished or not path.is_symlink():
                assert os.path.commonpath([os.path.realpath(path), real]) == real, path


# ---- git


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict[str, str]:
    """Build a bare repo with two commits on main, a tag on the first and a feature branch."""
    work = tmp_path_factory.mktemp("work")
    bare = tmp_path_factory.mktemp("bare") / "repo.git"
    git("init", "-q", "-b", "main", cwd=work)
    (work / "f.txt").write_text("one")
    git("add", "f.txt", cwd=work)
    git("commit", "-q", "-m", "one", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work).strip()
    git("tag", "v1", cwd=work)
    (work / "f.txt").write_text("two")
    git("commit", "-q", "-am", "two", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work).strip()
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "f.txt").write_text("feature")
    git("commit", "-q", "-am", "feature", cwd=work)
    feature = git("rev-parse", "HEAD", cwd=work).strip()
    git("checkout", "-q", "main", cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=work)
    return {"url": bare.as_uri(), "path": str(bare), "first": first, "second": second, "feature": feature}


@pytest.mark.parametrize(
    ("ref", "commit", "content"),
    [
        ("", "second", "two"),
        ("#main", "second", "two"),
        ("#feature", "feature", "feature"),
        ("#v1", "first", "one"),
    ],
)
def test_clone_branch_or_tag_is_shallow(repo, tmp_path, ref, commit, content):
    dest = tmp_path / "src"
    sha = clone_git(repo["url"] + ref, dest, timeout=60, allow_local=True)
    assert sha == repo[commit]
    assert (dest / "f.txt").read_text() == content
    assert git("rev-list", "--count", "HEAD", cwd=dest).strip() == "1"


@pytest.mark.parametrize("length", [40, 7])
def test_clone_a_sha(repo, tmp_path, length):
    dest = tmp_path / "src"
    assert (
        clone_git(f"{repo['url']}#{repo['first'][:length]}", dest, timeout=60, allow_local=True)
        == repo["first"]
    )
    assert (dest / "f.txt").read_text() == "one"


def test_clone_a_plain_path(repo, tmp_path):
    assert (
        clone_git(repo["path"] + "#feature", tmp_path / "s", timeout=60, allow_local=True) == repo["feature"]
    )


def test_unknown_ref_reports_git_stderr(repo, tmp_path):
    with pytest.raises(BuildUserError) as caught:
        clone_git(repo["url"] + "#nope", tmp_path / "s", timeout=60, allow_local=True)
    assert caught.value.code == "user:source"
    assert caught.value.message.startswith("git clone failed: ") and "nope" in caught.value.message


def test_unknown_sha_reports_git_stderr(repo, tmp_path):
    with pytest.raises(BuildUserError, match="^git checkout failed: .*deadbeef"):
        clone_git(repo["url"] + "#deadbeef", tmp_path / "s", timeout=60, allow_local=True)


@pytest.mark.parametrize(
    "url",
    [
        "--upload-pack=touch /tmp/pwned",
        "https://example.com/r.git#--upload-pack=touch /tmp/pwned",
        "https://example.com/r.git#-b",
    ],
)
def test_leading_dash_is_refused(tmp_path, url):
    with pytest.raises(BuildUserError, match="may start with '-'"):
        clone_git(url, tmp_path / "s", timeout=5, allow_local=True)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "url", ["ext::sh -c touch% /tmp/pwned", "ssh://git@example.com/r.git", "git@example.com:r.git", "r.git"]
)
def test_other_schemes_are_refused(tmp_path, url):
    with pytest.raises(BuildUserError, match="is not supported"):
        clone_git(url, tmp_path / "s", timeout=5, allow_local=True)


def test_local_repositories_need_allow_local(repo, tmp_path):
    for url in (repo["url"], repo["path"]):
        with pytest.raises(BuildUserError, match="is not supported"):
            clone_git(url, tmp_path / "s", timeout=5)


def test_credentials_are_not_echoed(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(BuildUserError) as caught:
        clone_git(
            f"http://bob:hunter2@127.0.0.1:{port}/r.git", tmp_path / "s", timeout=30, allow_private=True
        )
    assert "hunter2" not in caught.value.message and "git clone failed" in caught.value.message


def test_clone_times_out(tmp_path):
    with socket.socket() as sock:  # accepts connections (kernel backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        started = time.monotonic()
        with pytest.raises(BuildUserError, match=r"^git clone timed out after 1s$"):
            clone_git(
                f"http://127.0.0.1:{sock.getsockname()[1]}/r.git",
                tmp_path / "s",
                timeout=1,
                allow_private=True,
            )
    assert time.monotonic() - started < 10


def test_a_stop_kills_a_clone_that_hangs(tmp_path):
    with socket.socket() as sock:  # accepts connections (kernel backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/r.git"
        started = time.monotonic()
        with pytest.raises(BuildUserError) as caught:
            clone_git(
                url,
                tmp_path / "s",
                timeout=600,
                stop=lambda: time.monotonic() > started + 1,
                allow_private=True,
            )
        assert time.monotonic() - started < 5
        assert subprocess.run(["pgrep", "-f", url], check=False).returncode == 1  # git and its helpers
    assert (caught.value.code, caught.value.message) == ("cancelled", "git clone was stopped")


def test_a_clone_with_a_stop_never_true_completes(repo, tmp_path):
    sha = clone_git(repo["url"] + "#main", tmp_path / "s", timeout=30, allow_local=True, stop=lambda: False)
    assert sha == repo["second"]


def test_missing_git_is_a_platform_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildPlatformError):
        clone_git("https://example.com/r.git", tmp_path / "s", timeout=5, allow_private=True)


@pytest.mark.parametrize("name", ["a/" * 2000 + "f", "x" * 256, "d/" + "y" * 300 + "/f"])
def test_overlong_names_are_refused(box, name):
    dest, outside = box
    message = refused(archive(file(name, b"1")), dest, outside)
    assert message.startswith("source archive entry ") and message.endswith(" has a name that is too long")
    assert len(message) < 300  # the name is shortened in the message
    assert list(dest.iterdir()) == []


def test_overlong_symlink_target_is_refused(box):
    dest, outside = box
    assert refused(archive(symlink("l", "t" * 5000)), dest, outside).endswith("has a name that is too long")

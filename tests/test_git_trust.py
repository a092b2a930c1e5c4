"""Git URLs may not point the rack at itself; their credentials show neither in `ps` nor in the database."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from rack import apps, webhooks
from rack.builds import record as builds
from rack.db import fetchone
from rack.errors import BuildUserError, Invalid
from rack.pipeline import run as pipeline
from rack.pipeline.source import clone_git
from tests.helpers import GitHttpServer, git

TOKEN = "tok-never-in-argv-5d1e"


def _bare_repo(tmp_path: Path) -> Path:
    work, root = tmp_path / "work", tmp_path / "git"
    work.mkdir()
    root.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "convox.yml").write_text("services:\n  web:\n    build: .\n")
    (work / "Dockerfile").write_text("FROM busybox\nCOPY convox.yml /\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "app.git"), cwd=work)
    return root


@pytest.fixture
def repo(tmp_path):
    server = GitHttpServer(_bare_repo(tmp_path))
    yield server
    server.stop()
    shutil.rmtree(tmp_path / "git", ignore_errors=True)


def test_private_git_urls_are_refused_before_any_connection(rack, repo, tmp_path):
    apps.create(rack, name="inward")
    closed = "http://127.0.0.1:9/app.git"  # nothing listens there
    messages = []
    for url in (f"{repo.url}/app.git#main", closed + "#main"):
        with pytest.raises(Invalid) as refused:
            builds.create(rack, "inward", url=url)
        messages.append(re.sub(r"127\.0\.0\.1:\d+/", "HOST/", str(refused.value)))
        with pytest.raises(BuildUserError) as cloned:
            clone_git(url, tmp_path / "src", timeout=10)
        assert "resolves to a loopback address" in cloned.value.message
    # An open port and a closed one are refused alike: the answer tells nothing about the rack's ports.
    assert messages[0] == messages[1]
    assert (
        "resolves to a loopback address 127.0.0.1" in messages[0] and "RACK_GIT_ALLOW_PRIVATE" in messages[0]
    )
    for url, kind in [
        ("http://169.254.169.254/latest/app.git", "link-local"),
        ("http://10.1.2.3/app.git", "private"),
        ("https://[::1]/app.git", "loopback"),
        ("http://localhost:1/app.git", "loopback"),
        ("http://0.0.0.0/app.git", "unspecified"),
    ]:
        with pytest.raises(Invalid, match=f"resolves to an? {kind} address"):
            builds.create(rack, "inward", url=url + "#main")
        with pytest.raises(Invalid, match=f"resolves to an? {kind} address"):
            webhooks.create(rack, "inward", repo=url)
    assert repo.requests == 0
    with rack.db.transaction() as conn:
        assert fetchone(conn, "SELECT count(*) AS n FROM builds")["n"] == 0
    # The setting lets a rack on a trusted network clone from it.
    sha = clone_git(f"{repo.url}/app.git#main", tmp_path / "allowed", timeout=30, allow_private=True)
    assert len(sha) == 40 and repo.requests > 0


@pytest.mark.docker
def test_git_credentials_stay_out_of_argv_and_the_database(docker_stack, rack, tmp_path, monkeypatch):
    argv_seen: list[str] = []

    def look_at_ps() -> None:  # called while git waits for the server's answer
        for entry in Path("/proc").iterdir():
            try:
                argv_seen.append(
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue

    server = GitHttpServer(_bare_repo(tmp_path), auth=("deploy", TOKEN), on_request=look_at_ps)
    try:
        monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, git_allow_private=True))
        apps.create(rack, name="private")
        address = server.url.removeprefix("http://")
        row = builds.create(rack, "private", url=f"http://deploy:{TOKEN}@{address}/app.git#main")
        with rack.db.transaction() as conn:
            stored = fetchone(conn, "SELECT source_url, options FROM builds WHERE id = %s", (row["id"],))
        done = pipeline.run_build(rack, row["id"], process="tests:1")
    finally:
        server.stop()
    assert stored["source_url"] == f"http://{address}/app.git#main"
    assert stored["options"]["git_credentials"].startswith("sealed:")
    assert TOKEN not in json.dumps(stored, default=str) and TOKEN not in json.dumps(builds.serialize(done))
    assert done["status"] == "complete", done["reason"]
    assert server.authorized > 0  # git did send the credentials, through its askpass program
    git_lines = [line for line in argv_seen if "git" in line and address in line]
    assert git_lines, "no git process was seen during the clone"
    assert [line for line in argv_seen if TOKEN in line] == []
    assert all("deploy@" in line or "deploy" not in line for line in git_lines)

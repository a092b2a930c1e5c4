"""`convox build <git URL>[#ref]`: the rack clones the commit from a git server (smart HTTP on loopback),
builds it, and the CLI follows the log and prints the release as for a folder."""

from __future__ import annotations

import re
import shutil
import threading

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import apps
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.db import execute
from rack.pipeline import run as pipeline
from tests.conftest import LiveServer
from tests.helpers import GitHttpServer, printed
from tests.test_git_builds import git


@pytest.fixture
def server(tmp_path):
    """myproject.git on a loopback git server: `main` prints `two`; branch `release` prints `one`."""
    work, root = tmp_path / "work", tmp_path / "git"
    work.mkdir()
    root.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "convox.yml").write_text("services:\n  web:\n    build: .\n")
    (work / "Dockerfile").write_text("FROM busybox\nCOPY version.txt /version.txt\nCMD cat /version.txt\n")
    (work / "version.txt").write_text("one\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "First version", cwd=work)
    git("branch", "release", cwd=work)
    (work / "version.txt").write_text("two\n")
    git("commit", "-q", "-am", "Second version", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "myproject.git"), cwd=work)
    s = GitHttpServer(root)
    s.first = git("rev-parse", "release", cwd=work).strip()  # type: ignore[attr-defined]
    yield s
    s.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def live(docker_stack, tmp_path, monkeypatch):
    """The API over HTTP; each build it enqueues runs on the real pipeline in a thread."""
    from rack_api import create_app

    env = {**docker_stack.env, "RACK_STORAGE": f"file://{tmp_path}/objects", "RACK_GIT_ALLOW_PRIVATE": "true"}
    r = Rack(load_settings(env))
    threads: list[threading.Thread] = []

    def enqueue(build_id: str) -> None:
        t = threading.Thread(target=pipeline.run_build, args=(r, build_id), kwargs={"process": "tests:1"})
        threads.append(t)
        t.start()

    r.enqueue_build = enqueue
    with r.db.transaction() as conn:
        execute(conn, "TRUNCATE apps, builds, releases CASCADE")
    apps.create(r, name="myproject")
    web = LiveServer(create_app(rack=r), r.settings.password)
    monkeypatch.setenv("RACK_URL", web.rack_url)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "cfg"))
    yield r
    web.stop()
    for t in threads:
        t.join(60)
    r.close()


@pytest.mark.docker
def test_build_a_git_url_at_a_ref(live, server, docker_stack):
    url = f"{server.url}/myproject.git#release"
    result = CliRunner().invoke(main, ["build", url, "-a", "myproject", "-d", "from git"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Starting build... OK"  # nothing packaged or uploaded: the rack clones it
    assert f"Cloning: {url}" in result.output
    build_id = re.search(r"^Build:   (B[A-Z]{10})$", result.output, re.M).group(1)
    release = re.search(r"^Release: (R[A-Z]{10})$", result.output, re.M).group(1)
    row = builds.get(live, "myproject", build_id)
    assert (row["status"], row["release"], row["description"]) == ("complete", release, "from git")
    assert row["git_sha"] == server.first
    assert printed(docker_stack, row["images"]["web"]["image"]) == "one\n"
    deployed = CliRunner().invoke(main, ["deploy", f"{server.url}/myproject.git", "-a", "myproject", "--id"])
    assert deployed.exit_code == 0, deployed.output
    assert apps.get(live, "myproject")["release"] == deployed.stdout
    newest = builds.list_for_app(live, "myproject")[0]
    assert printed(docker_stack, newest["images"]["web"]["image"]) == "two\n"


def test_neither_a_folder_nor_a_url_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["build", str(tmp_path / "nope"), "-a", "x"])
    assert result.exit_code == 2
    assert "is neither a folder nor a git URL" in result.output

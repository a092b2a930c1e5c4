"""`convox build <git URL>[#ref]`: the rack clones the commit from a git server (smart HTTP on loopback),
builds it, and the CLI follows the log and prints the release as for a folder."""

from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import apps
from rack.builds import record as builds
from rack.pipeline import run as pipeline
from tests.helpers import GitHttpServer, LiveRack, git, printed, versioned_repo


@pytest.fixture
def server(tmp_path):
    """myproject.git on a loopback git server: `main` prints `two`; branch `release` prints `one`."""
    work, root = tmp_path / "work", tmp_path / "git"
    work.mkdir()
    root.mkdir()
    first, _ = versioned_repo(work, root / "myproject.git")
    git("branch", "release", first, cwd=root / "myproject.git")
    s = GitHttpServer(root)
    s.first = first  # type: ignore[attr-defined]
    yield s
    s.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def live(docker_stack, tmp_path, monkeypatch):
    """The API over HTTP; each build it enqueues runs on the real pipeline in a thread."""
    env = {**docker_stack.env, "RACK_STORAGE": f"file://{tmp_path}/objects", "RACK_GIT_ALLOW_PRIVATE": "true"}
    live = LiveRack(env, app="myproject", monkeypatch=monkeypatch, config=tmp_path / "cfg")
    r = live.rack
    r.enqueue_build = lambda build_id: live.spawn(pipeline.run_build, r, build_id, process="tests:1")
    yield r
    live.close()


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

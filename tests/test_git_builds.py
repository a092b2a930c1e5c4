"""Builds from git URLs and from push webhooks, end to end on the real stack (local repos)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from rack import apps, objects
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.db import execute
from rack.pipeline import run as pipeline
from tests.helpers import printed, versioned_repo

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def grack(docker_stack):
    """A Rack that may clone local repos, on clean tables; builds it enqueues are kept in `enqueued`."""
    home = Path(tempfile.mkdtemp(prefix="rack-git-"))
    env = {**docker_stack.env, "RACK_STORAGE": f"file://{home}/objects", "RACK_GIT_ALLOW_LOCAL": "true"}
    r = Rack(load_settings(env))
    r.enqueued = []
    r.enqueue_build = r.enqueued.append
    with r.db.transaction() as conn:
        execute(conn, "TRUNCATE apps, builds, releases CASCADE")
    apps.create(r, name="gitapp")
    yield r
    r.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict[str, str]:
    """A bare repo on main: a first commit printing `one`, then a second printing `two`."""
    work, bare = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("bare") / "repo.git"
    first, second = versioned_repo(work, bare)
    return {"url": bare.as_uri(), "first": first, "second": second}


def run(rack: Rack, build_id: str) -> dict:
    row = pipeline.run_build(rack, build_id, process="tests:git")
    assert row is not None
    return row


def log_text(rack: Rack, row: dict) -> str:
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, row["app"], key) as fh:
        return fh.read().decode()


def test_a_branch_url_builds_and_records_the_cloned_commit(grack, repo, docker_stack):
    row = run(grack, builds.create(grack, "gitapp", url=repo["url"] + "#main")["id"])
    assert row["status"] == "complete", row["reason"]
    assert row["git_sha"] == repo["second"]
    assert list(builds.phases(row)) == ["fetch", "build", "push", "release"]  # a clone has no extract
    assert row["release"] and row["manifest"].startswith("services:")
    assert f"Cloning: {repo['url']}#main\n" in log_text(grack, row)
    assert printed(docker_stack, row["images"]["web"]["image"]) == "two\n"


def test_a_commit_sha_builds_that_commit_and_a_given_git_sha_is_kept(grack, repo, docker_stack):
    row = run(grack, builds.create(grack, "gitapp", url=f"{repo['url']}#{repo['first']}")["id"])
    assert row["status"] == "complete", row["reason"]
    assert row["git_sha"] == repo["first"]
    assert printed(docker_stack, row["images"]["web"]["image"]) == "one\n"
    given = run(grack, builds.create(grack, "gitapp", url=repo["url"] + "#main", git_sha="from-ci")["id"])
    assert given["status"] == "complete", given["reason"]
    assert given["git_sha"] == "from-ci"


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("#no-such-branch", "user:source: git clone failed: "),
        ("#" + "de" * 20, "user:source: git checkout failed: "),
    ],
)
def test_a_missing_ref_fails_clearly(grack, repo, ref, reason):
    row = run(grack, builds.create(grack, "gitapp", url=repo["url"] + ref)["id"])
    assert row["status"] == "failed"
    assert row["reason"].startswith(reason), row["reason"]
    assert ref[1:] in row["reason"]
    assert row["git_sha"] == "" and row["release"] == ""
    assert f"ERROR: {row['reason'].removeprefix('user:source: ')}" in log_text(grack, row)


def test_local_repos_are_refused_unless_the_rack_allows_them(grack, repo):
    strict = Rack(dataclasses.replace(grack.settings, git_allow_local=False), enqueue_build=lambda _: None)
    try:
        row = run(strict, builds.create(strict, "gitapp", url=repo["url"] + "#main")["id"])
    finally:
        strict.close()
    assert row["status"] == "failed"
    assert row["reason"] == (
        f"user:source: git url '{repo['url']}#main' is not supported: use https://host/repo.git#ref"
    )


def test_a_push_webhook_builds_and_promotes(grack, repo):
    from rack_api import create_app

    client = create_app(rack=grack).test_client()
    password = grack.settings.password
    hook = client.post(
        "/apps/gitapp/webhooks",
        data={"repo": repo["url"], "branch": "main", "promote": "true"},
        auth=("convox", password),
    ).get_json()
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": repo["second"],
            "repository": {"clone_url": "https://elsewhere.example.com/x.git"},
            "head_commit": {"id": repo["second"], "message": "Second version\n\nWith a body."},
        }
    ).encode()
    signature = "sha256=" + hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
    grack.enqueued.clear()
    resp = client.post(
        hook["url"],
        data=body,
        content_type="application/json",
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signature},
    )
    assert resp.status_code == 202, resp.data
    assert grack.enqueued == [resp.get_json()["build"]["id"]]
    row = run(grack, grack.enqueued[0])
    assert row["status"] == "complete", row["reason"]
    assert row["description"] == f"push {repo['second'][:7]} Second version"
    assert row["git_sha"] == repo["second"]
    assert apps.get(grack, "gitapp")["release"] == row["release"]


def test_a_locked_app_is_not_promoted_by_its_builds_and_the_events_say_what_happened(
    grack, repo, monkeypatch
):
    from rack import events

    sent: list[str] = []
    monkeypatch.setattr(grack, "send_event", lambda hook_id, body: sent.append(json.loads(body)["action"]))
    hook = events.add(grack, "https://example.com/events", app="gitapp")
    before = apps.get(grack, "gitapp")["release"]
    apps.update(grack, "gitapp", lock=True)
    try:
        row = run(grack, builds.create(grack, "gitapp", url=repo["url"] + "#main", promote=True)["id"])
        assert row["status"] == "complete", row["reason"]
        assert apps.get(grack, "gitapp")["release"] == before  # released, not promoted
        assert sent == ["build:create", "build:complete", "release:create"]
    finally:
        apps.update(grack, "gitapp", lock=False)
    sent.clear()
    row = run(grack, builds.create(grack, "gitapp", url=repo["url"] + "#main", promote=True)["id"])
    assert apps.get(grack, "gitapp")["release"] == row["release"]
    assert sent == ["build:create", "build:complete", "release:create", "release:promote"]
    events.remove(grack, hook["id"], app="gitapp")

"""Push webhooks through the API and the CLI: add, list, delete, and every kind of delivery."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from urllib.parse import quote

import pytest
import requests
from click.testing import CliRunner

from cli.main import main
from rack import giturl, webhooks
from rack.config import ConfigError, load_settings
from rack.db import execute, fetchall
from rack.sql import builds as builds_sql

REPO = "https://git.example.com/org/myapp.git"
SHA = "0123456789abcdef0123456789abcdef01234567"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push(ref: str = "refs/heads/main", after: str = SHA, message: str = "Fix the thing\n\nDetails.", **extra):
    payload = {
        "ref": ref,
        "after": after,
        "repository": {"clone_url": REPO},
        "head_commit": {"id": after, "message": message},
    }
    return json.dumps({**payload, **extra}).encode()


@pytest.fixture
def hook(client):
    client.post("/apps", data={"name": "myapp"})
    resp = client.post("/apps/myapp/webhooks", data={"repo": REPO, "branch": "main"})
    assert resp.status_code == 200, resp.data
    return resp.get_json()


@pytest.fixture
def anonymous(app):
    """A client with no rack password, as GitHub is."""
    return app.test_client()


def deliver(anonymous, hook, body: bytes, *, event: str = "push", headers: dict | None = None, secret=None):
    sent = {"X-GitHub-Event": event, "X-Hub-Signature-256": sign(secret or hook["secret"], body)}
    sent.update(headers or {})
    sent = {k: v for k, v in sent.items() if v is not None}
    return anonymous.post(hook["url"], data=body, headers=sent, content_type="application/json")


def test_add_shows_the_secret_once_then_list_and_delete(client, hook):
    assert re.fullmatch(r"W[A-Z]{10}", hook["id"])
    assert hook["url"] == f"/webhooks/{hook['id']}"
    assert re.fullmatch(r"[0-9a-f]{64}", hook["secret"])
    assert (hook["app"], hook["repo"], hook["branch"], hook["promote"]) == ("myapp", REPO, "main", False)
    listed = client.get("/apps/myapp/webhooks").get_json()
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    assert listed[0]["url"] == hook["url"]
    assert client.delete(f"/apps/myapp/webhooks/{hook['id']}").data == b"ok\n"
    assert client.get("/apps/myapp/webhooks").get_json() == []
    assert client.delete(f"/apps/myapp/webhooks/{hook['id']}").status_code == 404
    assert client.get("/apps/ghost/webhooks").status_code == 404


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "repo is required"),
        ({"repo": "git@github.com:org/app.git"}, "is not supported"),
        ({"repo": "ssh://git@example.com/app.git"}, "is not supported"),
        ({"repo": "ext::sh -c touch /tmp/x"}, "is not a URL"),
        ({"repo": "--upload-pack=x"}, "is not a URL"),
        ({"repo": REPO + "#main"}, "has a #ref"),
        ({"repo": "file:///srv/app.git"}, "RACK_GIT_ALLOW_LOCAL is off"),
        ({"repo": REPO, "branch": "-x"}, "is not a valid git branch name"),
        ({"repo": REPO, "branch": "a..b"}, "is not a valid git branch name"),
        ({"repo": REPO, "branch": "has space"}, "is not a valid git branch name"),
    ],
)
def test_add_refuses_bad_repos_and_branches(client, hook, data, message):
    resp = client.post("/apps/myapp/webhooks", data=data)
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]


def test_add_needs_an_app_and_the_password(client, anonymous, hook):
    assert client.post("/apps/ghost/webhooks", data={"repo": REPO}).status_code == 404
    assert anonymous.post("/apps/myapp/webhooks", data={"repo": REPO}).status_code == 401
    assert anonymous.get("/apps/myapp/webhooks").status_code == 401
    assert anonymous.delete(f"/apps/myapp/webhooks/{hook['id']}").status_code == 401
    assert anonymous.get(hook["url"]).status_code == 401  # only POST deliveries skip the password


def test_credentials_in_the_repo_are_kept_sealed_and_never_shown(client, anonymous, hook, enqueued, rack):
    resp = client.post("/apps/myapp/webhooks", data={"repo": "https://bot:tok3n@git.example.com/org/a.git"})
    made = resp.get_json()
    assert made["repo"] == "https://***@git.example.com/org/a.git"
    assert "tok3n" not in client.get("/apps/myapp/webhooks").get_data(as_text=True)
    with rack.db.transaction() as conn:
        (stored,) = [r for r in fetchall(conn, "SELECT * FROM webhooks") if r["id"] == made["id"]]
    assert stored["repo"] == "https://git.example.com/org/a.git"
    assert "tok3n" not in json.dumps(stored, default=str)  # sealed with the rack's password
    build = deliver(anonymous, made, push()).get_json()["build"]
    with rack.db.transaction() as conn:
        row = builds_sql.get(conn, app="myapp", id=build["id"])
    assert row["source_url"] == f"https://git.example.com/org/a.git#{SHA}"
    assert giturl.unseal(rack.settings.password, row["options"]["git_credentials"]) == ("bot", "tok3n")
    with rack.db.transaction() as conn:  # sealed under another rack password: refused with what to do
        execute(
            conn,
            "UPDATE webhooks SET credentials = %s WHERE id = %s",
            (giturl.seal("other", "a", "b"), made["id"]),
        )
    refused = deliver(anonymous, made, push(after="1" * 40))
    assert refused.status_code == 409
    assert "delete the webhook and add it again" in refused.get_json()["error"]


def test_a_push_to_the_branch_builds_the_registered_repo_at_the_pushed_sha(anonymous, hook, enqueued, rack):
    # the payload names another repository: the rack still clones the one registered
    body = push(repository={"clone_url": "https://evil.example.com/x.git"})
    resp = deliver(anonymous, hook, body)
    assert resp.status_code == 202, resp.data
    build = resp.get_json()["build"]
    assert enqueued == [build["id"]]
    assert build["description"] == "push 0123456 Fix the thing"
    assert build["git-sha"] == SHA
    with rack.db.transaction() as conn:
        row = builds_sql.get(conn, app="myapp", id=build["id"])
    assert row["source_url"] == f"{REPO}#{SHA}"
    assert "promote" not in row["options"]


def test_a_promoting_webhook_marks_its_builds_to_promote(client, anonymous, hook, enqueued, rack):
    made = client.post("/apps/myapp/webhooks", data={"repo": REPO, "promote": "true"}).get_json()
    assert made["promote"] is True and made["branch"] == "main"
    build = deliver(anonymous, made, push()).get_json()["build"]
    with rack.db.transaction() as conn:
        assert builds_sql.get(conn, app="myapp", id=build["id"])["options"]["promote"] is True


def test_gitlab_token_and_form_encoded_github_payloads_are_accepted(anonymous, hook, enqueued):
    gitlab = {"X-GitHub-Event": None, "X-Hub-Signature-256": None}
    gitlab |= {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": hook["secret"]}
    body = json.dumps(
        {"ref": "refs/heads/main", "after": SHA, "commits": [{"id": SHA, "message": "From GitLab"}]}
    ).encode()
    resp = deliver(anonymous, hook, body, headers=gitlab)
    assert resp.status_code == 202, resp.data
    assert resp.get_json()["build"]["description"] == "push 0123456 From GitLab"
    form = b"payload=" + quote(push(message="Form").decode()).encode()
    resp = anonymous.post(
        hook["url"],
        data=form,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(hook["secret"], form)},
        content_type="application/x-www-form-urlencoded",
    )
    assert resp.status_code == 202, resp.data
    assert len(enqueued) == 2


@pytest.mark.parametrize(
    ("body", "event", "note"),
    [
        (b'{"zen": "Keep it logically awesome.", "hook_id": 1}', "ping", "pong: webhook"),
        (push(ref="refs/heads/feature"), "push", "push to feature ignored: this webhook builds main"),
        (push(after="0" * 40, deleted=True), "push", "branch main was deleted"),
        (push(ref="refs/tags/v1"), "push", "refs/tags/v1 is not a branch"),
        (b'{"action": "opened"}', "pull_request", "event 'pull_request' ignored"),
    ],
)
def test_deliveries_that_build_nothing_answer_with_a_note(anonymous, hook, enqueued, body, event, note):
    resp = deliver(anonymous, hook, body, event=event)
    assert resp.status_code == 200, resp.data
    assert note in resp.get_json()["note"]
    assert enqueued == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "invalid signature"),
        ({"X-Hub-Signature-256": "sha256=ünïcode"}, "invalid signature"),
        ({"X-Hub-Signature-256": None, "X-Gitlab-Token": "wrong"}, "invalid token"),
        ({"X-Hub-Signature-256": None}, "unsigned delivery"),
    ],
)
def test_bad_signatures_are_refused(anonymous, hook, enqueued, headers, message):
    resp = deliver(anonymous, hook, push(), headers=headers)
    assert resp.status_code == 401
    assert message in resp.get_json()["error"]
    assert enqueued == []


def test_a_signature_made_with_another_secret_or_body_is_refused(anonymous, hook, enqueued):
    assert deliver(anonymous, hook, push(), secret="not-the-secret").status_code == 401
    body = push()
    resp = anonymous.post(
        hook["url"],
        data=push(after="f" * 40),
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(hook["secret"], body)},
    )
    assert resp.status_code == 401
    assert enqueued == []


def test_unknown_webhooks_are_404(anonymous, hook):
    for path in ("/webhooks/WAAAAAAAAAA", "/webhooks/nope", "/webhooks/" + "W" * 300):
        resp = anonymous.post(path, data=push(), headers={"X-Hub-Signature-256": "sha256=00"})
        assert resp.status_code == 404, path
        assert "webhook not found" in resp.get_json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'["a list"]', "not a JSON object"),
        (b'{"after": "' + SHA.encode() + b'"}', 'no "ref"'),
        (b'{"ref": "refs/heads/main", "after": "HEAD"}', 'no "after" commit sha'),
    ],
)
def test_malformed_pushes_are_400(anonymous, hook, enqueued, body, message):
    resp = deliver(anonymous, hook, body)
    assert resp.status_code == 400, resp.data
    assert message in resp.get_json()["error"]
    assert enqueued == []


def test_a_delivery_over_1_mib_is_413(anonymous, hook, enqueued, live_server):
    body = push(padding="x" * webhooks.MAX_BODY)
    assert deliver(anonymous, hook, body).status_code == 413

    def chunks():  # chunked, with no Content-Length: the limit holds while reading
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    signature = {"X-Hub-Signature-256": sign(hook["secret"], body)}
    resp = requests.post(live_server.url + hook["url"], data=chunks(), headers=signature, timeout=30)
    assert resp.status_code == 413
    assert "larger than 1048576 bytes" in resp.json()["error"]
    small = push()
    signature = {"X-Hub-Signature-256": sign(hook["secret"], small)}
    resp = requests.post(live_server.url + hook["url"], data=iter([small]), headers=signature, timeout=30)
    assert resp.status_code == 202, resp.text
    assert len(enqueued) == 1


def test_a_hostile_commit_message_makes_a_tidy_description(anonymous, hook, enqueued):
    message = "\x00\ud800 evil\x1b[31m " + "y" * 500 + "\nsecond line"
    resp = deliver(anonymous, hook, push(message=message))
    assert resp.status_code == 202, resp.data
    description = resp.get_json()["build"]["description"]
    assert description.startswith("push 0123456  evil[31m yyy")
    assert len(description) < 220 and "second" not in description


def test_deleting_the_app_deletes_its_webhooks(client, anonymous, hook):
    assert client.delete("/apps/myapp").status_code == 200
    assert deliver(anonymous, hook, push()).status_code == 404


def test_git_allow_local_setting_reads_booleans(stack):
    for raw, value in [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False)]:
        assert load_settings({**stack.env, "RACK_GIT_ALLOW_LOCAL": raw}).git_allow_local is value
    assert load_settings(stack.env).git_allow_local is False
    with pytest.raises(ConfigError, match="RACK_GIT_ALLOW_LOCAL must be true or false"):
        load_settings({**stack.env, "RACK_GIT_ALLOW_LOCAL": "maybe"})


# ---- CLI


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_add_list_delete(cli_env, live_server):
    assert cli("apps", "create", "myapp").exit_code == 0
    result = cli("webhooks", "add", "myapp", "--branch", "main", "--repo", REPO, "--promote")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Adding webhook to myapp... OK"
    fields = dict(line.split(None, 1) for line in lines[1:] if line and not line.startswith("The secret"))
    webhook_id = fields["Id"]
    assert fields["Url"] == f"{live_server.url}/webhooks/{webhook_id}"
    assert re.fullmatch(r"[0-9a-f]{64}", fields["Secret"])
    assert (fields["Repo"], fields["Branch"], fields["Promote"]) == (REPO, "main", "yes")
    assert "shown only now" in result.output
    alias = cli("apps", "webhook", "myapp", "--repo", REPO, "--branch", "develop")
    assert alias.exit_code == 0, alias.output
    listed = cli("webhooks", "list", "myapp").output.splitlines()
    assert listed[0].split() == ["ID", "BRANCH", "PROMOTE", "REPO", "URL"]
    assert [row.split()[1:3] for row in listed[1:]] == [["develop", "no"], ["main", "yes"]]
    assert fields["Secret"] not in "\n".join(listed)
    assert cli("webhooks", "delete", "myapp", webhook_id).output == f"Deleting webhook {webhook_id}... OK\n"
    assert len(cli("webhooks", "list", "myapp").output.splitlines()) == 2
    bad = CliRunner().invoke(main, ["webhooks", "add", "myapp", "--repo", "git@github.com:o/r.git"])
    assert bad.exit_code == 1 and "is not supported" in bad.output


def test_a_redelivery_builds_nothing_and_answers_with_the_first_build(anonymous, hook, enqueued, rack):
    body = push()
    first = deliver(anonymous, hook, body, headers={"X-GitHub-Delivery": "d-1"})
    assert first.status_code == 202, first.data
    built = first.get_json()["build"]["id"]
    again = deliver(anonymous, hook, body, headers={"X-GitHub-Delivery": "d-1"})
    assert again.status_code == 200, again.data
    assert again.get_json()["build"]["id"] == built
    assert again.get_json()["note"].startswith("delivery already received at ")
    assert again.get_json()["note"].endswith(f"it built {built}")
    assert enqueued == [built]
    # The same signed body replayed under another delivery id (or none) is the same delivery.
    for headers in ({"X-GitHub-Delivery": "d-forged"}, {}):
        replay = deliver(anonymous, hook, body, headers=headers)
        assert (replay.status_code, replay.get_json()["build"]["id"]) == (200, built)
    # GitLab's event UUID names a delivery just as well, whatever the body.
    gitlab = {"X-GitHub-Event": None, "X-Hub-Signature-256": None, "X-Gitlab-Event": "Push Hook"}
    gitlab |= {"X-Gitlab-Token": hook["secret"], "X-Gitlab-Event-UUID": "u-1"}
    other = push(after="1" * 40)
    made = deliver(anonymous, hook, other, headers=gitlab).get_json()["build"]["id"]
    resent = deliver(anonymous, hook, push(after="1" * 40, note="resent"), headers=gitlab)
    assert (resent.status_code, resent.get_json()["build"]["id"]) == (200, made)
    with rack.db.transaction() as conn:
        assert len(builds_sql.list_for_app(conn, app="myapp", limit=100)) == 2
    assert enqueued == [built, made]


def test_the_same_push_to_two_webhooks_builds_for_each(client, anonymous, hook, enqueued):
    second = client.post("/apps/myapp/webhooks", data={"repo": REPO}).get_json()
    body = push()
    headers = {"X-GitHub-Delivery": "same"}
    assert deliver(anonymous, hook, body, headers=headers).status_code == 202
    assert deliver(anonymous, second, body, headers=headers).status_code == 202
    assert len(enqueued) == 2


def test_ping_is_answered(anonymous, hook, enqueued):
    resp = deliver(anonymous, hook, b'{"zen": "Keep it logically awesome."}', event="ping")
    assert resp.status_code == 200
    assert resp.get_json() == {"note": f"pong: webhook {hook['id']} builds pushes to main"}
    assert enqueued == []


def test_a_push_during_a_running_build_waits_then_runs_after_it(anonymous, hook, enqueued, rack):
    from rack.errors import Busy
    from rack.pipeline import run as pipeline

    first = deliver(anonymous, hook, push(after="a" * 40)).get_json()["build"]["id"]
    assert pipeline.claim(rack, first, process="tests:1") is not None  # the first push builds
    second = deliver(anonymous, hook, push(after="b" * 40)).get_json()["build"]["id"]
    third = deliver(anonymous, hook, push(after="c" * 40)).get_json()["build"]["id"]
    assert enqueued == [first, second, third]  # queued, none dropped
    for waiting, behind in ((second, first), (third, first)):
        with pytest.raises(Busy, match=f"build {waiting} waits for build {behind} of the same webhook"):
            pipeline.claim(rack, waiting, process="tests:2")
    with rack.db.transaction() as conn:
        assert builds_sql.get_by_id(conn, id=second)["status"] == "created"
        builds_sql.finish(conn, id=first, status="complete")
    with pytest.raises(Busy, match=f"waits for build {second}"):  # in the order of the pushes
        pipeline.claim(rack, third, process="tests:2")
    claimed = pipeline.claim(rack, second, process="tests:2")
    assert claimed is not None and claimed[0]["status"] == "running"
    with rack.db.transaction() as conn:
        builds_sql.finish(conn, id=second, status="failed", reason="cancelled: test")
    assert pipeline.claim(rack, third, process="tests:2") is not None

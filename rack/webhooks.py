"""Push webhooks: watch an app's git branch and build each push delivered to `/webhooks/<id>`."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from rack import apps, giturl
from rack.builds import record as builds
from rack.context import Rack
from rack.errors import Conflict, Invalid, NotFound, TooLarge, Unauthorized
from rack.ids import check_id, new_id
from rack.scrub import scrub
from rack.sql import webhooks as sql
from rack.timefmt import rfc3339

MAX_BODY = 1024 * 1024
_BRANCH = re.compile(r"[A-Za-z0-9._/+-]{1,200}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha1, or sha256 object format
_DESCRIPTION_MAX = 200


def serialize(row: dict, *, secret: bool = False) -> dict:
    """Shape a webhook row as JSON; the secret only when asked (once, at creation)."""
    out = {
        "id": row["id"],
        "app": row["app"],
        "repo": scrub(giturl.with_credentials(row["repo"], "***", "") if row["credentials"] else row["repo"]),
        "branch": row["branch"],
        "promote": row["promote"],
        "url": f"/webhooks/{row['id']}",
        "created": rfc3339(row["created"]),
    }
    if secret:
        out["secret"] = row["secret"]
    return out


def _clone_url(rack: Rack, hook: dict) -> str:
    """The registered repo with its credentials unsealed (the build seals them again beside itself)."""
    if not hook["credentials"]:
        return hook["repo"]
    try:
        user, password = giturl.unseal(rack.settings.password, hook["credentials"])
    except ValueError as exc:
        raise Conflict(
            f"webhook {hook['id']}: its git credentials cannot be read ({exc}); delete the webhook and add"
            " it again with the repository's credentials"
        ) from None
    return giturl.with_credentials(hook["repo"], user, password)


def check_repo(rack: Rack, repo: str) -> str:
    """Accept an http(s) git URL without a ref (file:// too when the rack allows local repos)."""
    repo = (repo or "").strip()
    if not repo:
        raise Invalid("repo is required: the git URL to clone, like https://github.com/org/app.git")
    if any(ch.isspace() or not ch.isprintable() for ch in repo) or repo.startswith("-"):
        raise Invalid(f"repo {repo!r} is not a URL")
    if "#" in repo:
        raise Invalid(f"repo {scrub(repo)!r} has a #ref: the commit comes from each push")
    parts = urlsplit(repo)
    if parts.scheme == "file":
        if not rack.settings.git_allow_local:
            raise Invalid("file:// repositories are refused on this rack (RACK_GIT_ALLOW_LOCAL is off)")
        if not parts.path.strip("/"):
            raise Invalid(f"repo {repo!r} names no repository")
        return repo
    if parts.scheme not in ("https", "http") or not parts.hostname or not parts.path.strip("/"):
        raise Invalid(f"repo {scrub(repo)!r} is not supported: use https://host/org/repo.git")
    if not rack.settings.git_allow_private:
        builds.check_public_git_url(repo)
    return repo


def check_branch(branch: str) -> str:
    """Accept a branch name git would accept (a `refs/heads/` prefix is dropped)."""
    name = (branch or "").strip().removeprefix("refs/heads/")
    if (
        not _BRANCH.fullmatch(name)
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
        or "/." in name
    ):
        raise Invalid(f"branch {branch!r} is not a valid git branch name")
    return name


def create(rack: Rack, app: str, *, repo: str, branch: str = "main", promote: bool = False) -> dict:
    """Register a webhook for an app with a new secret; the returned row holds that secret."""
    repo, branch = check_repo(rack, repo), check_branch(branch)
    repo, user, password = giturl.split_credentials(repo)  # kept sealed, as a build's are
    credentials = giturl.seal(rack.settings.password, user, password) if user or password else ""
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        return sql.insert(
            conn,
            id=new_id("W"),
            app=app,
            repo=repo,
            credentials=credentials,
            branch=branch,
            secret=secrets.token_hex(32),
            promote=bool(promote),
        )


def list_for_app(rack: Rack, app: str) -> list[dict]:
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        return sql.list_for_app(conn, app=app)


def delete(rack: Rack, app: str, webhook_id: str) -> None:
    check_id("webhook", webhook_id)
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        if not sql.delete(conn, app=app, id=webhook_id):
            raise NotFound(f"webhook not found: {webhook_id}")


def deliver(rack: Rack, webhook_id: str, *, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
    """Verify a delivery and build the pushed commit if it is for the watched branch; return status, JSON."""
    check_id("webhook", webhook_id)
    with rack.db.transaction() as conn:
        hook = sql.get(conn, id=webhook_id)
    if hook is None:
        raise NotFound(f"webhook not found: {webhook_id}")
    if len(body) > MAX_BODY:
        raise TooLarge(f"the delivery is larger than {MAX_BODY} bytes")
    headers = {k.lower(): v for k, v in headers.items()}
    verify(hook["secret"], body, headers)
    event = _event(headers)
    if event == "ping":
        return 200, {"note": f"pong: webhook {hook['id']} builds pushes to {hook['branch']}"}
    if event != "push":
        return 200, {"note": f"event {event!r} ignored: only pushes build"}
    payload = _payload(body, headers.get("content-type", ""))
    ref, sha = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not ref:
        raise Invalid('the push has no "ref": expected {"ref": "refs/heads/<branch>", "after": "<sha>"}')
    if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
        raise Invalid('the push has no "after" commit sha (40 or 64 hex digits)')
    sha = sha.lower()
    if not ref.startswith("refs/heads/"):
        return 200, {"note": f"{ref} is not a branch: nothing to build"}
    branch = ref.removeprefix("refs/heads/")
    if branch != hook["branch"]:
        return 200, {"note": f"push to {branch} ignored: this webhook builds {hook['branch']}"}
    if not sha.strip("0") or payload.get("deleted") is True:
        return 200, {"note": f"branch {branch} was deleted: nothing to build"}
    description = f"push {sha[:7]} {_first_line(_message(payload, sha))}".rstrip()
    delivery = _delivery_id(headers)
    digest = hashlib.sha256(body).hexdigest()

    def remember(conn, row: dict) -> None:
        if not sql.add_delivery(
            conn, webhook=hook["id"], delivery=delivery, body_sha256=digest, build=row["id"]
        ):
            raise _Seen()  # rolls the new build back: the first delivery's build answers

    try:
        row = builds.create(
            rack,
            hook["app"],
            url=f"{_clone_url(rack, hook)}#{sha}",  # the registered repo: a payload cannot point elsewhere
            description=description,
            git_sha=sha,
            promote=hook["promote"],
            webhook=hook["id"],
            also=remember,
        )
    except _Seen:
        with rack.db.transaction() as conn:
            seen = sql.find_delivery(conn, webhook=hook["id"], delivery=delivery, body_sha256=digest)
        assert seen is not None  # a delivery row is only ever removed with its webhook or build
        first = builds.get(rack, hook["app"], seen["build"])
        note = f"delivery already received at {rfc3339(seen['created'])}: it built {first['id']}"
        return 200, {"note": note, "build": builds.serialize(first)}
    return 202, {"note": f"building {sha[:7]} of {branch}", "build": builds.serialize(row)}


class _Seen(Exception):
    """This delivery (its id, or the very same signed body) was received before."""


def _delivery_id(headers: Mapping[str, str]) -> str:
    """The sender's id of this delivery (kept when it redelivers it), cut to a sane length."""
    value = headers.get("x-github-delivery") or headers.get("x-gitlab-event-uuid") or ""
    return value.strip()[:200]


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Accept GitHub's HMAC-SHA256 signature of the body, or GitLab's token; refuse anything else."""
    signature = headers.get("x-hub-signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            return
        raise Unauthorized(
            "invalid signature: X-Hub-Signature-256 is not the HMAC-SHA256 of this body"
            " with the webhook's secret"
        )
    token = headers.get("x-gitlab-token")
    if token is not None:
        if hmac.compare_digest(token.encode(), secret.encode()):
            return
        raise Unauthorized("invalid token: X-Gitlab-Token is not the webhook's secret")
    raise Unauthorized(
        "unsigned delivery: send X-Hub-Signature-256 (GitHub, Gitea) or X-Gitlab-Token (GitLab)"
        " made with the webhook's secret"
    )


def _event(headers: Mapping[str, str]) -> str:
    """Name the event as GitHub does; a sender that names none is taken to send pushes."""
    if "x-github-event" in headers:
        return headers["x-github-event"].strip().lower()
    if "x-gitlab-event" in headers:
        name = headers["x-gitlab-event"].strip()
        return "push" if name == "Push Hook" else name
    return "push"


def _payload(body: bytes, content_type: str) -> dict:
    """Read the JSON body (or GitHub's form-encoded `payload=` field) as an object."""
    try:
        if content_type.startswith("application/x-www-form-urlencoded"):
            body = parse_qs(body.decode("utf-8")).get("payload", [""])[0].encode("utf-8")
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise Invalid("the delivery is not valid JSON") from None
    if not isinstance(payload, dict):
        raise Invalid("the delivery is not a JSON object")
    return payload


def _message(payload: dict, sha: str) -> str:
    """Find the pushed commit's message: GitHub's head_commit, else the matching GitLab commit."""
    head = payload.get("head_commit")
    if isinstance(head, dict) and isinstance(head.get("message"), str):
        return head["message"]
    commits = payload.get("commits")
    for commit in commits if isinstance(commits, list) else []:
        if isinstance(commit, dict) and commit.get("id") == sha and isinstance(commit.get("message"), str):
            return commit["message"]
    return ""


def _first_line(message: str) -> str:
    """Keep the first line of a message, printable and short enough for a build description."""
    line = (message.strip().splitlines() or [""])[0]
    line = "".join(ch for ch in line if unicodedata.category(ch)[0] != "C")
    return line if len(line) <= _DESCRIPTION_MAX else line[: _DESCRIPTION_MAX - 1] + "…"

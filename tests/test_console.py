"""The web console's server side: sign-in, the session cookie, CSRF, pages and their escaping, actions."""

from __future__ import annotations

import re

import pytest

from rack import apps, logins, releases
from rack.sql import apps as apps_sql
from rack.sql import builds as builds_sql
from tests.helpers import SimBuild, make_build

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def browser(app):
    """A client without Basic auth, as a browser comes."""
    return app.test_client()


def token(page) -> str:
    match = TOKEN.search(page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)[:500]
    return match.group(1)


def sign_in(browser, password: str):
    form = browser.get("/console/login")
    return browser.post("/console/login", data={"password": password, "csrf_token": token(form)})


@pytest.fixture
def signed_in(browser, settings):
    assert sign_in(browser, settings.password).status_code == 302
    return browser


@pytest.fixture
def myapp(rack):
    apps.create(rack, name="myapp")
    return "myapp"


def cookie_header(response) -> str:
    cookies = [v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("rack_console=")]
    assert cookies, response.headers
    return cookies[-1]


def test_pages_ask_to_sign_in_and_only_the_rack_password_opens_them(browser, settings, myapp):
    first = browser.get("/console/apps/myapp")
    assert first.status_code == 302
    assert first.headers["Location"] == "/console/login?next=/console/apps/myapp"
    wrong = sign_in(browser, "not-the-password")
    assert wrong.status_code == 401
    assert "That is not the rack's password." in wrong.get_data(as_text=True)
    assert browser.get("/console/apps/myapp").status_code == 302
    form = browser.get("/console/login?next=/console/apps/myapp")
    good = browser.post(
        "/console/login",
        data={"password": settings.password, "csrf_token": token(form), "next": "/console/apps/myapp"},
    )
    assert good.status_code == 302 and good.headers["Location"] == "/console/apps/myapp"
    page = browser.get("/console/apps/myapp")
    assert page.status_code == 200 and "<h1>myapp</h1>" in page.get_data(as_text=True)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls(browser, app, settings):
    cookie = cookie_header(sign_in(browser, settings.password))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    direct = app.test_client()
    form = direct.get("/console/login", base_url="https://rack.example")
    done = direct.post(
        "/console/login",
        base_url="https://rack.example",
        data={"password": settings.password, "csrf_token": token(form)},
    )
    assert "; Secure" in cookie_header(done)
    proxied = app.test_client()
    headers = {"X-Forwarded-Proto": "https"}
    form = proxied.get("/console/login", headers=headers)
    done = proxied.post(
        "/console/login", headers=headers, data={"password": settings.password, "csrf_token": token(form)}
    )
    assert "; Secure" in cookie_header(done)


def test_every_form_needs_its_csrf_token(browser, settings, rack, myapp):
    browser.get("/console/login")
    refused = browser.post("/console/login", data={"password": settings.password})
    assert refused.status_code == 400
    assert "csrf_token is missing or out of date" in refused.get_data(as_text=True)
    assert browser.get("/console").status_code == 302  # not signed in
    assert sign_in(browser, settings.password).status_code == 302

    release = releases.create(rack, "myapp", build=make_build(rack, "myapp")["id"])["id"]
    confirm = browser.get(f"/console/apps/myapp/releases/{release}/promote")
    assert confirm.status_code == 200
    action = f"/console/apps/myapp/releases/{release}/promote"
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "x" * 43}):
        assert browser.post(action, data=data).status_code == 400
        assert apps.get(rack, "myapp")["release"] == ""
    done = browser.post(action, data={"csrf_token": token(confirm)})
    assert done.status_code == 302 and done.headers["Location"] == "/console/apps/myapp/releases"
    assert apps.get(rack, "myapp")["release"] == release
    page = browser.get("/console/apps/myapp/releases").get_data(as_text=True)
    assert f"Release {release} is now the active release of myapp." in page

    assert browser.post("/console/logout").status_code == 400
    assert browser.get("/console").status_code == 200  # still signed in
    assert browser.post("/console/logout", data={"csrf_token": token(confirm)}).status_code == 302
    assert browser.get("/console").status_code == 302


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(app, browser, settings, myapp):
    cookie = cookie_header(sign_in(browser, settings.password)).split(";", 1)[0].split("=", 1)[1]
    copy = app.test_client()  # the same cookie, carried off elsewhere
    copy.set_cookie("rack_console", cookie)
    assert copy.get("/console/apps/myapp").status_code == 200
    page = browser.get("/console")
    assert browser.post("/console/logout", data={"csrf_token": token(page)}).status_code == 302
    assert browser.get("/console/apps/myapp").status_code == 302
    refused = copy.get("/console/apps/myapp")
    assert (refused.status_code, refused.headers["Location"]) == (
        302,
        "/console/login?next=/console/apps/myapp",
    )
    assert sign_in(browser, settings.password).status_code == 302  # a new sign-in is a new session
    assert browser.get("/console/apps/myapp").status_code == 200
    assert copy.get("/console/apps/myapp").status_code == 302


def test_a_csrf_token_from_another_session_is_refused(app, settings, rack, myapp):
    alice, mallory = app.test_client(), app.test_client()
    assert sign_in(alice, settings.password).status_code == 302
    assert sign_in(mallory, settings.password).status_code == 302
    theirs = token(mallory.get("/console"))
    build = SimBuild(rack, "myapp")
    refused = alice.post(f"/console/apps/myapp/builds/{build.id}/cancel", data={"csrf_token": theirs})
    assert refused.status_code == 400
    with rack.db.transaction() as conn:
        assert builds_sql.get_by_id(conn, id=build.id)["status"] == "created"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/apps", "/console\\@evil"])
def test_after_sign_in_it_goes_only_to_console_pages(browser, settings, target):
    form = browser.get("/console/login")
    done = browser.post(
        "/console/login", data={"password": settings.password, "csrf_token": token(form), "next": target}
    )
    assert done.headers["Location"] == "/console"


def test_the_session_opens_no_json_api_and_logs_only_from_its_own_pages(signed_in, rack, myapp):
    assert signed_in.get("/apps").status_code == 401
    assert signed_in.post("/apps", data={"name": "other"}).status_code == 401
    build = SimBuild(rack, "myapp")
    build.start()
    build.write("hello\n")
    build.finish()
    path = f"/apps/myapp/builds/{build.id}/logs"
    assert signed_in.get(path, headers={"Origin": "http://evil.example"}).status_code == 401
    own = signed_in.get(path, headers={"Origin": "http://localhost"})
    assert own.status_code == 200 and own.data == b"hello\n"


def test_pages_escape_what_builds_and_releases_carry(signed_in, rack, myapp):
    hostile = '<img src=x onerror="alert(1)">'
    release = releases.create(rack, "myapp", build=make_build(rack, "myapp", description=hostile)["id"])
    failed = make_build(rack, "myapp", status="failed", reason=f"user:step: {hostile}", description=hostile)
    pages = [
        "/console",
        "/console/apps/myapp",
        f"/console/apps/myapp/builds/{failed['id']}",
        "/console/apps/myapp/releases",
        f"/console/apps/myapp/releases/{release['id']}/promote",
    ]
    for path in pages:
        text = signed_in.get(path).get_data(as_text=True)
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in text, path
        assert "<img" not in text, path


def test_the_builds_page_pages_charts_phases_and_marks_failures(signed_in, rack, myapp):
    made = []
    for i in range(23):
        phases = {"fetch": 0.1, "extract": 0.2, "build": 1.0 + i, "push": 0.5, "release": 0.1}
        status = "failed" if i == 7 else "complete"
        made.append(
            make_build(rack, "myapp", status=status, reason="user:step: no" if i == 7 else "", phases=phases)
        )
    first = signed_in.get("/console/apps/myapp").get_data(as_text=True)
    ids = re.findall(r'<td><a href="/console/apps/myapp/builds/(B[A-Z]{10})"', first)
    assert len(ids) == 20 and set(ids) <= {b["id"] for b in made}
    assert 'rel="next" href="/console/apps/myapp?page=2"' in first and 'rel="prev"' not in first
    second = signed_in.get("/console/apps/myapp?page=2").get_data(as_text=True)
    rest = re.findall(r'<td><a href="/console/apps/myapp/builds/(B[A-Z]{10})"', second)
    assert len(rest) == 3 and not set(rest) & set(ids)
    assert 'rel="prev"' in second and 'rel="next"' not in second
    # the chart: a bar per build with a segment per phase, and one failure mark
    assert first.count('class="phase-build"') == 23
    assert first.count('class="phase-push"') == 23
    assert first.count('class="failed-mark" x=') == 1
    for bad in ("0", "abc", "1001", "-1"):
        resp = signed_in.get(f"/console/apps/myapp?page={bad}")
        assert resp.status_code == 400 and "page must be a whole number" in resp.get_data(as_text=True)


def test_unknown_apps_and_builds_are_404_pages(signed_in, myapp):
    for path in (
        "/console/apps/nope",
        "/console/apps/myapp/builds/BAAAAAAAAAA",
        "/console/apps/nope/releases",
    ):
        resp = signed_in.get(path)
        assert resp.status_code == 404 and resp.mimetype == "text/html", path
        assert "not found" in resp.get_data(as_text=True)


def test_cancel_asks_first_then_cancels(signed_in, rack, myapp):
    build = SimBuild(rack, "myapp")
    page = signed_in.get(f"/console/apps/myapp/builds/{build.id}").get_data(as_text=True)
    assert f'href="/console/apps/myapp/builds/{build.id}/cancel"' in page
    ask = signed_in.get(f"/console/apps/myapp/builds/{build.id}/cancel")
    assert "Cancel build" in ask.get_data(as_text=True)
    with rack.db.transaction() as conn:
        assert builds_sql.get_by_id(conn, id=build.id)["status"] == "created"  # asking did nothing
    done = signed_in.post(f"/console/apps/myapp/builds/{build.id}/cancel", data={"csrf_token": token(ask)})
    assert done.status_code == 302
    with rack.db.transaction() as conn:
        row = builds_sql.get_by_id(conn, id=build.id)
    assert row["status"] == "failed" and row["reason"].startswith("cancelled")
    after = signed_in.get(f"/console/apps/myapp/builds/{build.id}").get_data(as_text=True)
    assert "/cancel" not in after and "cancelled" in after


def test_roll_back_to_an_older_release(signed_in, rack, myapp):
    old = releases.create(rack, "myapp", build=make_build(rack, "myapp")["id"])
    new = releases.create(rack, "myapp", build=make_build(rack, "myapp")["id"])
    releases.promote(rack, "myapp", new["id"])
    page = signed_in.get("/console/apps/myapp/releases").get_data(as_text=True)
    assert f"Roll back to {old['id']}" in page and f"Promote {new['id']}" not in page
    ask = signed_in.get(f"/console/apps/myapp/releases/{old['id']}/rollback")
    done = signed_in.post(
        f"/console/apps/myapp/releases/{old['id']}/rollback", data={"csrf_token": token(ask)}
    )
    assert done.status_code == 302
    with rack.db.transaction() as conn:
        active = apps_sql.get(conn, name="myapp")["release"]
    assert active not in (old["id"], new["id"])
    copy = releases.get(rack, "myapp", active)
    assert copy["build"] == old["build"] and copy["description"] == f"rollback to {old['id']}"


def test_wrong_passwords_are_limited_per_address(app, settings):
    guesser, other = app.test_client(), app.test_client()
    here, there = {"REMOTE_ADDR": "10.9.0.1"}, {"REMOTE_ADDR": "10.9.0.2"}
    for i in range(logins.MAX_FAILURES):
        form = guesser.get("/console/login", environ_overrides=here)
        data = {"password": f"guess-{i}", "csrf_token": token(form)}
        assert guesser.post("/console/login", data=data, environ_overrides=here).status_code == 401
    form = guesser.get("/console/login", environ_overrides=here)
    data = {"password": settings.password, "csrf_token": token(form)}
    refused = guesser.post("/console/login", data=data, environ_overrides=here)
    assert refused.status_code == 429  # even the right password, until the window ends
    assert "too many wrong passwords from this address: try again in" in refused.get_data(as_text=True)
    form = other.get("/console/login", environ_overrides=there)
    data = {"password": settings.password, "csrf_token": token(form)}
    assert other.post("/console/login", data=data, environ_overrides=there).status_code == 302


def test_a_password_longer_than_the_limit_is_wrong_not_an_error(browser):
    form = browser.get("/console/login")
    data = {"password": "x" * (logins.MAX_PASSWORD + 10), "csrf_token": token(form)}
    assert browser.post("/console/login", data=data).status_code == 401

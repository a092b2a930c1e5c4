"""The console in a real browser (Debian's chromium driven by Playwright) against the real pipeline.

A build started with the `convox` CLI runs on the Docker engine in this process (the worker task's own
domain call), so its log grows in the page while it runs. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from rack import apps, objects
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.db import execute
from rack.pipeline import run as pipeline
from rack_api import create_app
from tests.helpers import LiveServer, tarball, wait_for, write_app

pytestmark = pytest.mark.docker

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CONVOX = Path(sys.executable).parent / "convox"
# the elements that stick out past the right edge of the screen, for the failure message
WIDER_THAN_THE_SCREEN = (
    "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth)"
    ".map(e => e.tagName + '.' + e.className + ' ' + e.textContent.slice(0, 40)).slice(0, 5)"
)


def slow_app() -> dict[str, str]:
    """An app whose one step prints a line every 0.4 s, different each time so no cache skips it."""
    return {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"FROM busybox\nRUN echo {uuid.uuid4().hex}; "
        "for i in $(seq 1 10); do echo tick $i; sleep 0.4; done\n",
    }


HOSTILE = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\n"
    "RUN printf '<script>window.pwned=1</script>\\n\\033[31mred alert\\033[0m \\033[1;38;5;82mbright\\033[0m"
    "\\033]0;title\\007 \\033[2Kcleared\\n<b>not bold</b>\\n' && exit 3\n",
}


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: run deploy/local/install (it is in the test extra)")
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (deploy/local/install installs Debian's chromium)")
    return sync_playwright


@pytest.fixture(scope="module")
def chromium(sync_playwright):
    """One headless browser for the module."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def crack(docker_stack):
    """A Rack whose builds run on the Docker stack in threads of this process, as a worker runs them."""
    home = Path(tempfile.mkdtemp(prefix="rack-console-"))
    r = Rack(load_settings({**docker_stack.env, "RACK_STORAGE": f"file://{home}/objects"}))
    threads: list[threading.Thread] = []

    def enqueue(build_id: str) -> None:
        thread = threading.Thread(
            target=pipeline.run_build, args=(r, build_id), kwargs={"process": "console:1"}
        )
        thread.start()
        threads.append(thread)

    r.enqueue_build = enqueue
    with r.db.transaction() as conn:
        execute(conn, "TRUNCATE apps, builds, releases CASCADE")
    yield r
    for thread in threads:
        thread.join(60)
    r.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(crack):
    s = LiveServer(create_app(rack=crack), crack.settings.password)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def context(chromium, server, crack):
    """A browser context signed in once for the module's tests."""
    ctx = chromium.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto("/console/login")
    page.fill("#password", crack.settings.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/console")
    page.close()
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    p = context.new_page()
    dialogs: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.dialogs = dialogs  # type: ignore[attr-defined]
    yield p
    p.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def status_of(rack: Rack, app: str, build_id: str) -> str:
    return builds.get(rack, app, build_id)["status"]


def test_sign_in_with_the_rack_password(chromium, server, crack):
    ctx = chromium.new_context(base_url=server.url)
    page = ctx.new_page()
    page.goto("/console/apps/anything")
    assert "/console/login" in page.url
    page.fill("#password", "wrong")
    page.keyboard.press("Enter")
    assert page.text_content("#wrong") == "That is not the rack's password."
    page.fill("#password", crack.settings.password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/apps/anything")
    assert "app not found: anything" in page.text_content("main")
    cookie = next(c for c in ctx.cookies() if c["name"] == "rack_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    page.goto("/console")
    assert "/console/login" in page.url
    ctx.close()


def test_a_build_started_from_the_cli_appears_and_its_log_grows_while_it_runs(page, crack, server, tmp_path):
    apps.create(crack, name="live")
    folder = write_app(tmp_path / "live", slow_app())
    env = {**os.environ, "RACK_URL": server.rack_url, "CONVOX_CONFIG": str(tmp_path / "config")}
    cli = subprocess.Popen(
        [str(CONVOX), "build", str(folder), "-a", "live", "--description", "from the cli"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        page.goto("/console/apps/live")

        def listed():
            page.reload()
            return page.query_selector("table.builds a")

        link = wait_for(listed, timeout=30, what="the CLI's build on the app's page")
        assert "from the cli" in page.text_content("table.builds")
        link.click()
        page.wait_for_url("**/console/apps/live/builds/B*")
        build_id = page.url.rsplit("/", 1)[1]
        wait_for(
            lambda: "tick 1\n" in page.text_content("#log"), timeout=60, what="the first line in the page"
        )
        assert status_of(crack, "live", build_id) == "running"
        early = page.text_content("#log").count("tick ")
        assert page.is_visible("text=Cancel")  # offered while it runs
        wait_for(
            lambda: "tick 10\n" in page.text_content("#log"), timeout=60, what="the last line in the page"
        )
        assert page.text_content("#log").count("tick ") > early
        page.wait_for_selector("#log[data-complete=true]", timeout=60000)
        wait_for(lambda: page.text_content("#status") == "complete", timeout=30, what="the status to show")
        assert page.is_checked("#follow")
        log = page.query_selector("#log")
        assert log.evaluate("e => e.scrollHeight - e.scrollTop - e.clientHeight") < 8  # followed to the end
        assert "Running: docker push" in page.text_content("#log")
        assert page.query_selector("table.images code.digest").text_content().startswith("sha256:")
        assert "build" in page.text_content("ul.phases") and "push" in page.text_content("ul.phases")
        assert not page.is_visible("text=Cancel")
        screenshot(page, "console-build")
        page.set_viewport_size({"width": 375, "height": 800})
        page.reload()
        page.wait_for_selector("#log[data-complete=true]")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than a phone
        screenshot(page, "console-build-phone")
    finally:
        output = cli.communicate(timeout=120)[0].decode()
    assert cli.returncode == 0, output
    assert "tick 10" in output


def test_a_failed_build_shows_its_reason_and_its_log_only_as_text(page, crack):
    apps.create(crack, name="hostile")
    url = objects.put(crack, "hostile", "tmp/src.tgz", io.BytesIO(tarball(HOSTILE)))
    row = builds.create(crack, "hostile", url=url)
    wait_for(lambda: status_of(crack, "hostile", row["id"]) == "failed", timeout=60, what="the build to fail")
    reason = builds.get(crack, "hostile", row["id"])["reason"]
    assert reason.startswith("user:step: ") and "<script>" in reason

    page.goto("/console")
    assert reason in page.text_content("table")
    page.goto(f"/console/apps/hostile/builds/{row['id']}")
    page.wait_for_selector("#log[data-complete=true]")
    assert page.text_content("#reason") == reason
    text = page.text_content("#log")
    assert "<script>window.pwned=1</script>\n" in text
    assert "<b>not bold</b>" in text
    assert "red alert bright cleared\n" in text  # colours applied, the title and erase sequences dropped
    assert "\x1b" not in text and "\x07" not in text
    assert page.evaluate("window.pwned") is None
    assert page.query_selector_all("#log script, #log b, main script") == []
    red = page.query_selector("#log span.ansi-fg-1")
    assert red.text_content() == "red alert"
    assert red.evaluate("e => getComputedStyle(e).color") == "rgb(255, 107, 107)"
    bright = page.query_selector("#log span.ansi-bold")
    assert bright.text_content() == "bright"
    assert bright.evaluate("e => e.style.color") == "rgb(95, 255, 0)"  # 256-colour 82
    assert page.dialogs == []  # type: ignore[attr-defined]

    page.click("#follow")  # stop following, scroll to the top, then jump
    page.evaluate("document.getElementById('log').scrollTop = 0")
    page.click("#first-error")
    error = page.query_selector("#log .line.error-line")  # the first of them
    assert "ERROR: " in error.text_content() and "target" in error.get_attribute("class")
    box, line = page.query_selector("#log").bounding_box(), error.bounding_box()
    assert box["y"] <= line["y"] and line["y"] + line["height"] <= box["y"] + box["height"]
    screenshot(page, "console-failed-build")


def test_promote_asks_needs_its_csrf_token_and_changes_the_release(page, crack):
    release = builds.list_for_app(crack, "live", limit=1)[0]["release"]
    assert release and apps.get(crack, "live")["release"] == ""
    page.goto("/console/apps/live/releases")
    page.click(f"text=Promote {release}")
    assert page.text_content("h1") == f"Promote release {release} of live?"
    assert apps.get(crack, "live")["release"] == ""  # asking changed nothing
    page.evaluate("document.querySelector('form.confirm input[name=csrf_token]').remove()")
    page.click("form.confirm button")
    assert "csrf_token is missing" in page.text_content("main")
    assert apps.get(crack, "live")["release"] == ""
    page.go_back()
    page.reload()
    page.focus("form.confirm button")
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/apps/live/releases")
    assert page.text_content("#active-release") == release
    assert apps.get(crack, "live")["release"] == release
    screenshot(page, "console-releases")
    page.goto("/console/apps/live")
    assert page.query_selector_all("svg.chart-svg rect.phase-build")  # the chart has the build's bar
    screenshot(page, "console-app")


def test_cancel_from_the_build_page_stops_the_running_build(page, crack):
    url = objects.put(crack, "live", "tmp/slow.tgz", io.BytesIO(tarball(slow_app())))
    row = builds.create(crack, "live", url=url, description="to cancel")
    page.goto(f"/console/apps/live/builds/{row['id']}")
    wait_for(lambda: "tick 1\n" in page.text_content("#log"), timeout=60, what="the build to run")
    page.click("#meta a:has-text('Cancel')")
    assert page.text_content("h1") == f"Cancel build {row['id']} of live?"
    page.click("form.confirm button")
    page.wait_for_url(f"**/console/apps/live/builds/{row['id']}")
    page.wait_for_selector("#log[data-complete=true]", timeout=60000)
    wait_for(lambda: page.text_content("#status") == "failed", timeout=30, what="the status to show")
    assert page.text_content("#reason").startswith("cancelled")
    assert "tick 10" not in page.text_content("#log")
    # the worker still times the phase the cancel stopped, though the cancel ended the build
    wait_for(lambda: "build" in builds.phases(builds.get(crack, "live", row["id"])), what="the build phase")


def test_every_page_fits_a_phone_and_works_by_keyboard(chromium, server, context, crack):
    phone = chromium.new_context(base_url=server.url, viewport={"width": 375, "height": 740})
    phone.add_cookies(context.cookies())
    page = phone.new_page()
    failed = builds.list_for_app(crack, "hostile", limit=1)[0]["id"]
    for path in (
        "/console",
        "/console/apps/live",
        "/console/apps/live/releases",
        f"/console/apps/hostile/builds/{failed}",
    ):
        page.goto(path)
        wide = page.evaluate(WIDER_THAN_THE_SCREEN)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, (path, wide)
    page.goto("/console")
    for _ in range(20):  # Tab from the top of the page to the app's link, then follow it with Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "live":
            break
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/apps/live")
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert "Releases" in focused and "Sign out" in focused
    screenshot(page, "console-app-phone")
    phone.close()


def test_under_gunicorn_the_page_follows_a_log_as_lines_arrive(chromium, gunicorn_server, sim):
    """The production server (gunicorn, gevent): session cookie on the log websocket, lines as they come."""
    build = sim()
    build.start()
    build.write("\x1b[32mfirst line\x1b[0m\n")
    ctx = chromium.new_context(base_url=gunicorn_server.url)
    page = ctx.new_page()
    try:
        page.goto(f"/console/apps/logs/builds/{build.id}")
        page.fill("#password", gunicorn_server.password)
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/console/apps/logs/builds/{build.id}")
        wait_for(lambda: "first line\n" in page.text_content("#log"), timeout=30, what="the first line")
        assert page.text_content("#log span.ansi-fg-2") == "first line"
        build.write("second line\n")
        wait_for(
            lambda: "second line\n" in page.text_content("#log"), timeout=30, what="a line written later"
        )
        assert page.get_attribute("#log", "data-complete") is None  # still following
        build.finish("failed", reason="user:step: it broke")
        page.wait_for_selector("#log[data-complete=true]", timeout=30000)
        wait_for(lambda: page.text_content("#status") == "failed", timeout=30, what="the final status")
        assert page.text_content("#reason") == "user:step: it broke"
    finally:
        ctx.close()

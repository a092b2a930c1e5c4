"""`convox build` and `convox deploy` against the live API, with a stand-in worker that ends each build."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import apps, objects, releases
from rack.builds import record as builds
from rack.sources import contents
from rack.sql import builds as builds_sql
from tests.helpers import LiveServer

MANIFEST = "services:\n  web:\n    build: .\n"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "myapp"
LOG = b"Step 1/2 : FROM busybox\nStep 2/2 : RUN echo hi\nhi\n"


def run(*args: str, **kw):
    return CliRunner().invoke(main, list(args), **kw)


class StandInWorker:
    """Take the place of the queue: end each build at once, as complete or as told to fail."""

    def __init__(self, rack, enqueued: list[str]) -> None:
        self.rack, self.enqueued = rack, enqueued
        self.fail_with = ""
        self.log = LOG

    def __call__(self, build_id: str) -> None:
        self.enqueued.append(build_id)
        with self.rack.db.transaction() as conn:
            app = builds_sql.get_by_id(conn, id=build_id)["app"]
        logs = objects.put_bytes_stream(self.rack, app, f"build/{build_id}/logs", io.BytesIO(self.log))
        with self.rack.db.transaction() as conn:
            builds_sql.update(conn, id=build_id, fields={"manifest": MANIFEST, "logs": logs})
            if self.fail_with:
                builds_sql.finish(conn, id=build_id, status="failed", reason=self.fail_with)
                return
            release = releases.create_in(conn, app=app, build=build_id)
            builds_sql.finish(conn, id=build_id, status="complete", fields={"release": release["id"]})


@pytest.fixture
def worker(rack, enqueued, monkeypatch):
    w = StandInWorker(rack, enqueued)
    monkeypatch.setattr(rack, "enqueue_build", w)
    return w


@pytest.fixture
def project(tmp_path, rack):
    """A folder named like its app, with a .dockerignore exercising Docker's rules."""
    root = tmp_path / "myapp"
    files = {
        "convox.yml": MANIFEST,
        "Dockerfile": "FROM busybox\nCOPY . /app\n",
        "app.sh": "echo hi\n",
        "docs/guide.md": "ignored\n",
        "docs/KEEP.md": "kept by an exception\n",
        "cache/a/b/c.tmp": "ignored at any depth\n",
        "src/main.tmp": "ignored at any depth\n",
        "src/main.sh": "kept\n",
        ".env": "SECRET=1\n",
        ".dockerignore": "# build context rules\n\ndocs\n!docs/KEEP.md\n**/*.tmp\n.env\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    apps.create(rack, name="myapp")
    return root


GIT_ENV = {f"GIT_{who}_{what}": "t" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}


def git(root, *args: str) -> str:
    cmd = ["git", "-C", str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=GIT_ENV, check=True).stdout.strip()


def uploaded(rack, row) -> dict[str, bytes]:
    """The files of a build's source: a tree of stored contents, or an uploaded archive."""
    if row["source_url"].startswith("manifest://"):
        out = {}
        for entry in contents.load_tree(rack, row["source_url"]):
            if entry.kind == "file":
                with contents.open_content(rack, row["app"], entry.sha256) as fh:
                    out[entry.path] = fh.read()
        return out
    app, key = objects.parse_url(row["source_url"])
    with rack.store.open(f"{app}/{key}") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_build_uploads_source_and_sends_every_option(cli_env, rack, worker, project):
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "first: a subject with spaces")
    result = run(
        "build", str(project), "--build-args", "A=1", "--build-args", "B=x=y z", "--no-cache", "--development"
    )
    assert result.exit_code == 0, result.output
    (build_id,) = worker.enqueued
    row = builds.get(rack, "myapp", build_id)
    head, sent, rest = result.stdout.partition("Starting build... OK\n")
    assert re.fullmatch(
        r"Hashing source\.\.\. OK \([\d,]+ files, [\d.]+ KB\)\n"
        r"Uploading source\.\.\. OK \(sent [\d,]+ of [\d,]+ files, [\d.]+ KB of [\d.]+ KB\)\n",
        head,
    ), head
    assert sent and rest == LOG.decode() + f"Build:   {build_id}\nRelease: {row['release']}\n"
    assert row["description"] == "build " + git(project, "log", "-n1", "--pretty=%h %s", "--abbrev=10")
    assert row["description"].endswith(" first: a subject with spaces")
    assert row["git_sha"] == git(project, "rev-parse", "HEAD")
    options = {
        "build_args": ["A=1", "B=x=y z"],
        "manifest": "convox.yml",
        "no_cache": True,
        "development": True,
    }
    assert row["options"] == options
    assert re.fullmatch(r"manifest://myapp/[0-9a-f]{64}", row["source_url"])


@pytest.mark.parametrize("rack_kind", ["tree", "archives only"])
def test_uploaded_source_honours_dockerignore(
    rack, worker, project, app, rack_kind, monkeypatch, tmp_path, settings
):
    def archives_only(environ, start_response):  # a rack without the content-addressed routes
        if environ["PATH_INFO"].endswith(("/sources", "/contents")):
            start_response("404 NOT FOUND", [("Content-Type", "application/json")])
            return [b'{"error": "not found"}']
        return app(environ, start_response)

    server = LiveServer(app if rack_kind == "tree" else archives_only, settings.password)
    monkeypatch.setenv("RACK_URL", server.rack_url)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "convox-config"))
    try:
        result = run("build", str(project))
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    row = builds.get(rack, "myapp", worker.enqueued[0])
    assert (row["description"], row["git_sha"], row["options"]["no_cache"]) == ("", "", False)  # not git
    assert row["source_url"].startswith("manifest://" if rack_kind == "tree" else "object://")
    assert ("Packaging source... OK" in result.output) is (rack_kind != "tree")
    files = uploaded(rack, row)
    kept = {"convox.yml", "Dockerfile", "app.sh", "docs/KEEP.md", "src/main.sh", ".dockerignore"}
    assert set(files) == kept
    assert files["docs/KEEP.md"] == b"kept by an exception\n"


def test_git_description_only_for_a_clean_tree_and_never_over_the_flag(cli_env, rack, worker, project):
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "first")
    (project / "app.sh").write_text("echo changed\n")
    assert run("build", str(project)).exit_code == 0
    assert run("build", str(project), "-d", "my own words").exit_code == 0
    dirty, described = (builds.get(rack, "myapp", b) for b in worker.enqueued)
    assert dirty["description"] == ""
    assert dirty["git_sha"] == described["git_sha"] == git(project, "rev-parse", "HEAD")
    assert described["description"] == "my own words"


def test_app_comes_from_flag_then_convox_app_file_then_folder(cli_env, rack, worker, project, monkeypatch):
    apps.create(rack, name="other")
    apps.create(rack, name="pinned")
    assert run("build", str(project), "-a", "other").exit_code == 0
    (project / ".convox").mkdir()
    (project / ".convox" / "app").write_text("pinned\n")
    monkeypatch.chdir(project)
    assert run("build").exit_code == 0
    first, second = worker.enqueued
    assert builds.get(rack, "other", first)["app"] == "other"  # builds.get raises for another app's build
    assert builds.get(rack, "pinned", second)["app"] == "pinned"


def test_missing_app_fails_before_packaging(cli_env, rack, worker, tmp_path):
    (tmp_path / "ghost").mkdir()
    result = run("build", str(tmp_path / "ghost"))
    assert result.exit_code == 1
    assert result.output == "Error: app not found: ghost\n"


def test_failed_build_exits_non_zero_with_its_reason(cli_env, rack, worker, project):
    worker.fail_with = "user:build: step RUN false returned 1"
    result = run("build", str(project))
    assert result.exit_code == 1
    assert result.stdout.endswith(LOG.decode())
    assert result.stderr == "Error: build failed: user:build: step RUN false returned 1\n"


def test_a_log_without_a_final_newline_still_ends_its_line(cli_env, rack, worker, project):
    worker.log = b"step 1\nhalf a line"
    result = run("build", str(project))
    assert result.exit_code == 0
    assert "half a line\nBuild:   B" in result.stdout


def test_id_prints_only_the_release_on_stdout(cli_env, rack, worker, project):
    result = run("build", str(project), "--id")
    assert result.exit_code == 0, result.output
    release = builds.get(rack, "myapp", worker.enqueued[0])["release"]
    assert result.stdout == release
    assert "Uploading source... OK" in result.stderr and LOG.decode() in result.stderr


def test_source_over_the_rack_limit_is_refused_before_upload(cli_env, rack, worker, project, monkeypatch):
    (project / "big.bin").write_bytes(os.urandom(16384))
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, max_upload_bytes=2000))
    result = run("build", str(project))
    assert result.exit_code == 1
    assert "Error: the file big.bin is 16.0 KiB" in result.output and "at most 2.0 KiB" in result.output
    assert "Uploading" not in result.output
    assert worker.enqueued == []
    stored = Path(urlparse(rack.settings.storage).path) / "myapp"
    assert not stored.exists() or not [p for p in stored.rglob("*") if p.is_file()]


def test_build_args_with_commas_are_refused(cli_env, rack, worker, project):
    result = run("build", str(project), "--build-args", "A=1,2")
    assert result.exit_code == 2 and "values cannot contain commas" in result.output


def test_upload_progress_shows_on_a_terminal(cli_env, rack, worker, project, monkeypatch):
    import click

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    real = click.get_text_stream
    monkeypatch.setattr(
        click, "get_text_stream", lambda name, *a, **k: term if name == "stderr" else real(name)
    )
    assert run("build", str(project)).exit_code == 0
    assert "100%\b\b\b\b" in term.getvalue() and term.getvalue().endswith("    \b\b\b\b")


def test_deploy_builds_and_promotes(cli_env, rack, worker, project):
    result = run("deploy", str(project), "--force")
    assert result.exit_code == 0, result.output
    release = builds.get(rack, "myapp", worker.enqueued[0])["release"]
    assert result.stdout.endswith(f"Release: {release}\nPromoting {release}... OK\n")
    assert apps.get(rack, "myapp")["release"] == release
    again = run("deploy", str(project), "--id")
    assert again.exit_code == 0
    assert again.stdout == apps.get(rack, "myapp")["release"] != release


def test_build_as_a_subprocess_prints_only_the_release_id(cli_env, rack, worker, project):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "build", "--id", str(project)],
        env={**cli_env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"R[A-Z]{10}", proc.stdout)
    assert proc.stdout == builds.get(rack, "myapp", worker.enqueued[0])["release"]
    assert "Starting build... OK" in proc.stderr


@pytest.fixture
def pipeline(docker_stack, rack, monkeypatch):
    """Run each enqueued build on the real pipeline in a thread, as a worker would."""
    from rack.pipeline.run import run_build

    threads: list[threading.Thread] = []

    def enqueue(build_id: str) -> None:
        t = threading.Thread(target=run_build, args=(rack, build_id), kwargs={"process": "test"}, daemon=True)
        t.start()
        threads.append(t)

    monkeypatch.setattr(rack, "enqueue_build", enqueue)
    yield threads
    for t in threads:
        t.join(60)


@pytest.mark.docker
def test_build_and_deploy_the_example_app_end_to_end(pipeline, cli_env, rack, tmp_path):
    root = tmp_path / "myapp"
    shutil.copytree(EXAMPLE, root, symlinks=True)
    apps.create(rack, name="myapp")
    assert run("env", "set", "-a", "myapp", "COLOR=blue").exit_code == 0
    result = run("deploy", str(root), "--build-args", "GREETING=howdy")
    assert result.exit_code == 0, result.output
    assert "baked: greeting=howdy color=blue" in result.stdout
    build_id = re.search(r"^Build:   (B[A-Z]{10})$", result.stdout, re.M).group(1)
    row = builds.get(rack, "myapp", build_id)
    assert row["status"] == "complete" and set(row["images"]) == {"web", "worker", "tools"}
    assert result.stdout.endswith(f"Release: {row['release']}\nPromoting {row['release']}... OK\n")
    assert apps.get(rack, "myapp")["release"] == row["release"]
    files = uploaded(rack, row)
    assert (
        "keep.log" in files and "debug.log" not in files and not any(n.startswith("secrets") for n in files)
    )


@pytest.mark.docker
def test_failing_step_fails_the_command_with_the_reason(pipeline, cli_env, rack, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "convox.yml").write_text(MANIFEST)
    (root / "Dockerfile").write_text("FROM busybox\nRUN echo about to fail && false\n")
    apps.create(rack, name="broken")
    result = run("build", str(root))
    assert result.exit_code == 1
    assert "about to fail" in result.stdout
    # The error is one line, last; before it there may be the note that the build waits for a worker.
    *notes, error = result.stderr.splitlines()
    assert error.startswith("Error: build failed: user:step: Step 2/2 : RUN echo about to fail && false")
    assert all(note.startswith("waiting for a worker to start build") for note in notes), notes

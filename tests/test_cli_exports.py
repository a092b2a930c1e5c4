"""`convox builds export` and `convox builds import` against the live API: files, pipes, terminals, errors."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from docker.utils.build import tar

from cli.main import main
from rack import apps, exports, objects, releases
from rack.builds import record as builds
from rack.pipeline import run as pipeline
from rack.sql import builds as builds_sql
from tests.helpers import printed, rack_env, start_api

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "myapp"
CONVOX = [sys.executable, "-m", "cli"]


def run(*args: str, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def build(rack, app: str, folder: Path, **options) -> dict:
    """Upload a folder, build it on the real pipeline here and return the complete build."""
    url = objects.put(rack, app, "tmp/source.tgz", tar(str(folder), gzip=True))
    row = pipeline.run_build(rack, builds.create(rack, app, url=url, **options)["id"], process="tests:1")
    assert row["status"] == "complete", row["reason"]
    return row


@pytest.fixture
def gunicorn(docker_stack, settings, tmp_path):
    """The API as production runs it (gunicorn, gevent workers), on this test's object store."""
    api = start_api(rack_env(docker_stack.env, storage=settings.storage), log_dir=tmp_path)
    yield api
    api.stop()


@pytest.mark.docker
def test_export_piped_into_import_as_two_processes(docker_stack, rack, gunicorn, tmp_path):
    apps.create(rack, name="myapp")
    apps.create(rack, name="copy")
    original = build(rack, "myapp", EXAMPLE, build_args=["GREETING=piped"])
    url = gunicorn.url.replace("http://", f"http://convox:{rack.settings.password}@")
    env = {"PATH": "/usr/bin:/bin", "RACK_URL": url, "CONVOX_CONFIG": str(tmp_path / "convox")}
    export = subprocess.Popen(
        [*CONVOX, "builds", "export", original["id"], "-a", "myapp"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    imported = subprocess.Popen(
        [*CONVOX, "builds", "import", "-a", "copy", "--id"],
        env=env, stdin=export.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    export.stdout.close()  # the import alone reads the pipe now
    out, err = imported.communicate(timeout=120)
    assert export.wait(timeout=30) == 0, export.stderr.read()
    assert export.stderr.read() == b"Exporting build... OK\n"
    assert imported.returncode == 0, err
    release = out.decode()
    assert re.fullmatch(r"R[A-Z]{10}", release)
    assert err.decode() == f"Importing build... OK, {release}\n"
    new = builds.get(rack, "copy", releases.get(rack, "copy", release)["build"])
    assert new["status"] == "complete" and set(new["images"]) == {"web", "worker", "tools"}
    web = new["images"]["web"]["image"]
    assert web == f"{rack.settings.registry}/copy:web.{new['id']}"
    assert printed(docker_stack, web) == printed(docker_stack, original["images"]["web"]["image"])
    assert printed(docker_stack, web) == "web: greeting=piped color=plain\n"
    garbage = subprocess.run(
        [*CONVOX, "builds", "import", "-a", "copy"], env=env, input=b"garbage!" * 1_000_000,
        capture_output=True, timeout=20,
    )  # fmt: skip
    assert garbage.returncode == 1  # answered while the body still streams in: read to its end, then refused
    assert garbage.stderr.startswith(b"Importing build... Error: the import is not a gzip'd tar")


@pytest.mark.docker
def test_export_to_a_file_then_import_it_with_id(docker_stack, rack, cli_env, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "convox.yml").write_text("services:\n  tools:\n    image: busybox\n")
    apps.create(rack, name="small")
    original = build(rack, "small", tmp_path / "src", description="tools only")
    archive = tmp_path / "small.tgz"
    exported = run("builds", "export", original["id"], "-a", "small", "--file", str(archive))
    assert exported.exit_code == 0, exported.output
    assert (exported.stdout, exported.stderr) == ("", "Exporting build... OK\n")
    imported = run("builds", "import", "-a", "small", "-f", str(archive), "--id")
    assert imported.exit_code == 0, imported.output
    new = builds.list_for_app(rack, "small")[0]
    assert new["id"] != original["id"] and new["description"] == "tools only"
    assert imported.stdout == new["release"]
    assert imported.stderr == f"Importing build... OK, {new['release']}\n"
    plain = run("builds", "import", "-a", "small", "-f", str(archive))
    assert plain.exit_code == 0 and plain.stdout == ""
    assert plain.stderr == f"Importing build... OK, {builds.list_for_app(rack, 'small')[0]['release']}\n"


def test_a_build_that_did_not_complete_is_not_exported_and_no_file_is_left(rack, cli_env, tmp_path):
    apps.create(rack, name="myapp")
    with rack.db.transaction() as conn:
        builds_sql.insert(
            conn, id="BFAILEDBUIL", app="myapp", source_url="", options={}, description="",
            git_sha="", status="failed",
        )  # fmt: skip
    result = run("builds", "export", "BFAILEDBUIL", "-a", "myapp", "-f", str(tmp_path / "out.tgz"))
    assert result.exit_code == 1
    error = "Error: build BFAILEDBUIL is failed: only a complete build can be exported\n"
    assert result.stderr == "Exporting build... " + error
    assert not (tmp_path / "out.tgz").exists()


def test_an_export_cut_short_fails_and_removes_the_partial_file(rack, cli_env, tmp_path, monkeypatch):
    def broken(rack, app, build_id):
        yield b"\x1f\x8b" + b"\0" * 100_000
        raise RuntimeError("the engine went away")

    monkeypatch.setattr(exports, "export", broken)
    apps.create(rack, name="myapp")
    result = run("builds", "export", "BABCDEFGHIJ", "-a", "myapp", "-f", str(tmp_path / "out.tgz"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Exporting build... Error: the export broke off: ")
    assert not (tmp_path / "out.tgz").exists()


def test_garbage_on_stdin_is_refused_with_the_rack_s_message(rack, cli_env):
    apps.create(rack, name="myapp")
    result = run("builds", "import", "-a", "myapp", input=b"not an export\n" * 400_000)  # 5.6 MB, chunked
    assert result.exit_code == 1
    assert result.stderr.startswith("Importing build... Error: the import is not a gzip'd tar")
    assert builds.list_for_app(rack, "myapp") == []


@pytest.mark.parametrize(
    ("args", "tty", "error"),
    [
        (["export", "BABCDEFGHIJ"], "stdout", "pipe this command into a file or specify --file"),
        (["import"], "stdin", "pipe a file into this command or specify --file"),
    ],
)
def test_a_terminal_is_refused_without_file(args, tty, error):
    leader, follower = pty.openpty()
    try:
        streams = {"stdout": subprocess.PIPE, "stdin": subprocess.DEVNULL, tty: follower}
        proc = subprocess.run(
            [*CONVOX, "builds", *args, "-a", "myapp"],
            env={"PATH": "/usr/bin:/bin", "RACK_URL": "http://convox:x@127.0.0.1:9"},
            stderr=subprocess.PIPE, timeout=60, **streams,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"Error: {error}\n"

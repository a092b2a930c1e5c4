"""Several racks from one CLI: `convox login HOST --name`, `convox racks`, `convox switch`, `-r/--rack`.

Two racks are two API processes (gunicorn) with their own database, password and object store.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from docker.utils.build import tar

from cli.main import main
from rack import apps, objects
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.errors import NotFound
from rack.pipeline import run as pipeline
from tests.helpers import own_database, printed, rack_env, start_api

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "myapp"
CONVOX = [sys.executable, "-m", "cli"]


def start_racks(stack_env, settings, tmp_path):
    """rack1 on the test's database and object store; rack2 on a database and store of its own."""
    one = start_api(rack_env(stack_env, storage=settings.storage, name="rack1"), log_dir=tmp_path)
    (tmp_path / "two").mkdir()
    env2 = rack_env(
        stack_env, database_url=own_database(stack_env, "racktwo"), password="second-password",
        storage=f"file://{tmp_path}/two/objects", name="rack2",
    )  # fmt: skip
    two = start_api(env2, log_dir=tmp_path / "two")
    return one, two, env2


@pytest.fixture
def racks(stack, rack, settings, tmp_path, monkeypatch):
    one, two, env2 = start_racks(stack.env, settings, tmp_path)
    for name in ("RACK_URL", "CONVOX_HOST", "CONVOX_PASSWORD", "CONVOX_RACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "cfg"))
    yield one, two, env2
    one.stop()
    two.stop()


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def host(api) -> str:
    return api.url.removeprefix("http://")


def test_login_to_two_racks_list_switch_and_pick_one_per_command(racks, rack, tmp_path, monkeypatch):
    one, two, env2 = racks
    assert cli("login", host(one), "--name", "rack1", "-p", rack.settings.password).exit_code == 0
    wrong = cli("login", host(two), "--name", "rack2", "-p", rack.settings.password)
    assert wrong.exit_code == 1 and "invalid authentication" in wrong.output
    assert cli("login", host(two), "--name", "rack2", "-p", "second-password").exit_code == 0
    cfg = tmp_path / "cfg"
    for name in ("auth", "racks", "current"):
        assert oct((cfg / name).stat().st_mode & 0o777) == "0o600", name
    assert json.loads((cfg / "racks").read_text()) == {"rack1": one.url, "rack2": two.url}
    assert cli("racks").output.splitlines() == [
        "   NAME   URL", f"   rack1  {one.url}", f"*  rack2  {two.url}",
    ]  # fmt: skip
    assert cli("rack").output.splitlines()[0].split() == ["Name", "rack2"]
    assert cli("apps", "create", "only-on-two").exit_code == 0
    # -r picks a rack for one command; the current one stays.
    assert cli("rack", "-r", "rack1").output.splitlines()[0].split() == ["Name", "rack1"]
    assert cli("apps", "-r", "rack1").output.splitlines() == ["APP  STATUS  RELEASE"]
    assert cli("apps", "info", "only-on-two", "--rack", "rack1").exit_code == 1
    assert cli("switch").output == "rack2\n"
    assert cli("switch", "rack1").output == "Switched to rack1\n"
    assert cli("racks").output.splitlines()[1:] == [f"*  rack1  {one.url}", f"   rack2  {two.url}"]
    assert cli("apps").output.splitlines() == ["APP  STATUS  RELEASE"]
    assert "only-on-two" in cli("apps", "-r", "rack2").output
    bad = cli("switch", "rack3")
    assert bad.exit_code == 1 and "no rack named 'rack3' (racks logged in to: rack1, rack2)" in bad.output
    assert "no rack named 'rack3'" in cli("apps", "-r", "rack3").output
    # A rack named in the folder's .convox/rack, and CONVOX_RACK, pick one too; RACK_URL wins over all.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".convox").mkdir()
    (tmp_path / ".convox" / "rack").write_text("rack2\n")
    assert cli("rack").output.splitlines()[0].split() == ["Name", "rack2"]
    monkeypatch.setenv("CONVOX_RACK", "rack1")
    assert cli("rack").output.splitlines()[0].split() == ["Name", "rack1"]
    monkeypatch.setenv("RACK_URL", two.url.replace("http://", "http://convox:second-password@"))
    assert cli("rack", "-r", "rack1").output.splitlines()[0].split() == ["Name", "rack2"]
    # A login without --name is named by the host as given.
    monkeypatch.delenv("RACK_URL")
    monkeypatch.delenv("CONVOX_RACK")
    assert cli("login", host(one), "-p", rack.settings.password).exit_code == 0
    assert f"*  {host(one)}  {one.url}" in cli("racks").output.splitlines()


@pytest.mark.docker
def test_export_from_one_rack_piped_into_import_on_another(docker_stack, rack, settings, tmp_path):
    one, two, env2 = start_racks(docker_stack.env, settings, tmp_path)
    try:
        apps.create(rack, name="app1")
        url = objects.put(rack, "app1", "tmp/source.tgz", tar(str(EXAMPLE), gzip=True))
        created = builds.create(rack, "app1", url=url, build_args=["GREETING=moved"])
        original = pipeline.run_build(rack, created["id"], process="tests:1")
        assert original["status"] == "complete", original["reason"]
        env = {"PATH": "/usr/bin:/bin", "CONVOX_CONFIG": str(tmp_path / "cfg")}
        logins = [("rack1", one, rack.settings.password), ("rack2", two, "second-password")]
        steps = [["login", host(api), "--name", name, "-p", pw] for name, api, pw in logins]
        for step in [*steps, ["apps", "create", "app2"], ["switch", "rack1"]]:  # app2 on rack2, then rack1
            subprocess.run([*CONVOX, *step], env=env, check=True, capture_output=True, timeout=60)
        export = subprocess.Popen(
            [*CONVOX, "builds", "export", original["id"], "-a", "app1", "-r", "rack1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        imported = subprocess.Popen(
            [*CONVOX, "builds", "import", "-a", "app2", "-r", "rack2", "--id"],
            env=env, stdin=export.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        export.stdout.close()
        out, err = imported.communicate(timeout=180)
        assert export.wait(timeout=30) == 0, export.stderr.read()
        assert imported.returncode == 0, err
        release = out.decode()
        assert re.fullmatch(r"R[A-Z]{10}", release)
        assert err.decode() == f"Importing build... OK, {release}\n"
        second = Rack(load_settings(env2))
        try:
            copies = builds.list_for_app(second, "app2")
            assert [b["release"] for b in copies] == [release] and copies[0]["status"] == "complete"
            web = copies[0]["images"]["web"]["image"]
            assert web == f"{second.settings.registry}/app2:web.{copies[0]['id']}"
            assert printed(docker_stack, web) == "web: greeting=moved color=plain\n"
        finally:
            second.close()
        with pytest.raises(NotFound):  # the import went to rack2 alone
            apps.get(rack, "app2")
    finally:
        one.stop()
        two.stop()

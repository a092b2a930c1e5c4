import json
import subprocess
import sys

from click.testing import CliRunner

from cli.main import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_apps_create_list_delete(cli_env):
    assert run("apps", "create", "myapp").output == "Creating myapp... OK\n"
    out = run("apps").output.splitlines()
    assert out[0].split() == ["APP", "STATUS", "RELEASE"]
    assert out[1].split() == ["myapp", "running"]
    assert run("apps", "delete", "myapp").output == "Deleting myapp... OK\n"
    assert run("apps").output.splitlines()[1:] == []


def test_api_errors_are_one_line_and_non_zero(cli_env):
    result = CliRunner().invoke(main, ["apps", "create", "Bad_Name"])
    assert result.exit_code == 1
    assert result.output.startswith("Creating Bad_Name... Error: app name 'Bad_Name' is invalid")
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["apps", "delete", "ghost"])
    assert result.exit_code == 1
    assert result.output == "Deleting ghost... Error: app not found: ghost\n"


def test_wrong_password_says_how_to_fix_it(live_server, monkeypatch, tmp_path):
    monkeypatch.setenv("RACK_URL", f"http://convox:wrong@127.0.0.1:{live_server.server.server_port}")
    result = CliRunner().invoke(main, ["apps"])
    assert result.exit_code == 1
    assert "invalid authentication" in result.output
    assert "convox login" in result.output


def test_login_stores_host_and_password(live_server, monkeypatch, tmp_path):
    monkeypatch.delenv("RACK_URL", raising=False)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "cfg"))
    host = f"127.0.0.1:{live_server.server.server_port}"
    result = CliRunner().invoke(main, ["login", host, "--password", live_server.password])
    assert result.exit_code == 0, result.output
    auth = json.loads((tmp_path / "cfg" / "auth").read_text())
    assert auth == {f"http://{host}": live_server.password}
    assert oct((tmp_path / "cfg" / "auth").stat().st_mode & 0o777) == "0o600"
    # Later commands find the rack from the stored login.
    shown = [line.split() for line in run("rack").output.splitlines()]
    assert shown[0] == ["Name", "local"]
    assert ["Builder", "buildkit"] in shown
    bad = CliRunner().invoke(main, ["login", host, "--password", "nope"])
    assert bad.exit_code == 1
    assert json.loads((tmp_path / "cfg" / "auth").read_text()) == auth


def test_cli_runs_as_a_subprocess(cli_env):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "apps", "create", "subproc"],
        env={**cli_env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Creating subproc... OK\n"


def test_app_build_timeout(cli_env):
    assert run("apps", "create", "slow", "--timeout", "600").exit_code == 0
    assert "BuildTimeout  600" in run("apps", "info", "slow").output
    assert run("apps", "update", "slow", "--timeout", "60").output == "Updating slow... OK\n"
    assert "BuildTimeout  60\n" in run("apps", "info", "slow").output
    bad = CliRunner().invoke(main, ["apps", "update", "slow", "--timeout", "zero"])
    assert bad.exit_code == 1 and "timeout must be a whole number" in bad.output


def test_rack_found_from_env_before_stored_login(live_server, monkeypatch, tmp_path):
    monkeypatch.delenv("RACK_URL", raising=False)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "cfg"))
    host = f"127.0.0.1:{live_server.server.server_port}"
    assert run("login", host, "--password", live_server.password).exit_code == 0
    # CONVOX_HOST/CONVOX_PASSWORD win over the stored login...
    monkeypatch.setenv("CONVOX_HOST", host)
    monkeypatch.setenv("CONVOX_PASSWORD", "wrong")
    assert "invalid authentication" in CliRunner().invoke(main, ["apps"]).output
    # ...and RACK_URL wins over both.
    monkeypatch.setenv("RACK_URL", live_server.rack_url)
    assert CliRunner().invoke(main, ["apps"]).exit_code == 0
    monkeypatch.delenv("RACK_URL")
    monkeypatch.delenv("CONVOX_HOST")
    monkeypatch.delenv("CONVOX_PASSWORD")
    assert CliRunner().invoke(main, ["apps"]).exit_code == 0


def test_no_rack_configured_says_how_to_log_in(monkeypatch, tmp_path):
    for name in ("RACK_URL", "CONVOX_HOST", "CONVOX_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "empty"))
    result = CliRunner().invoke(main, ["apps"])
    assert result.exit_code == 1
    assert "convox login" in result.output


def test_login_file_is_created_private(live_server, monkeypatch, tmp_path):
    import os

    monkeypatch.delenv("RACK_URL", raising=False)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "cfg"))
    old = os.umask(0o022)
    try:
        created = []
        real_open = os.open

        def spy(path, flags, mode=0o777, *a, **kw):
            if str(path).endswith("/auth") and flags & os.O_CREAT:
                created.append(mode)
            return real_open(path, flags, mode, *a, **kw)

        monkeypatch.setattr(os, "open", spy)
        host = f"127.0.0.1:{live_server.server.server_port}"
        assert run("login", host, "--password", live_server.password).exit_code == 0
    finally:
        os.umask(old)
    assert created == [0o600]


def test_apps_lock_unlock_and_params(cli_env):
    assert run("apps", "create", "guarded").exit_code == 0
    assert run("apps", "lock", "guarded").output == "Locking guarded... OK\n"
    assert "Locked      true" in run("apps", "info", "guarded").output
    refused = CliRunner().invoke(main, ["apps", "delete", "guarded"])
    assert refused.exit_code == 1 and "app guarded is locked: can not delete it" in refused.output
    assert run("apps", "unlock", "guarded").output == "Unlocking guarded... OK\n"
    updated = run("apps", "params", "set", "BuildTimeout=900", "-a", "guarded")
    assert updated.output == "Updating parameters... OK\n"
    assert run("apps", "params", "-a", "guarded").output == "BuildTimeout  900\n"
    bad = CliRunner().invoke(main, ["apps", "params", "set", "BuildCpu=1", "-a", "guarded"])
    assert bad.exit_code == 1 and "unknown app parameter: BuildCpu" in bad.output
    assert run("apps", "delete", "guarded").output == "Deleting guarded... OK\n"


def test_starting_the_cli_imports_no_http_or_docker_library():
    """`convox --version` loads neither the HTTP client nor the docker SDK: commands import what they need."""
    heavy = "{'requests', 'urllib3', 'docker'}"
    code = "import sys, cli.main; loaded = {m.split('.')[0] for m in sys.modules}"
    code += f"; print(sorted((loaded & {heavy}) | {{m for m in sys.modules if m.startswith('rack.')}}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "[]\n"), proc.stderr

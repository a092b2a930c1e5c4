"""`convox env`, `releases` and `builds` against the live API and real Postgres."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import apps, releases
from tests.helpers import make_build

MANIFEST = "services:\n  web:\n    build: .\n"


def run(*args: str, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def ok(*args: str, **kw) -> str:
    result = run(*args, **kw)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def myapp(rack, cli_env, tmp_path, monkeypatch):
    """An app named like the working folder, so commands find it without `-a`."""
    folder = tmp_path / "myapp"
    folder.mkdir()
    monkeypatch.chdir(folder)
    apps.create(rack, name="myapp")
    return "myapp"


def built_release(rack, app: str) -> str:
    return releases.create(rack, app, build=make_build(rack, app)["id"])["id"]


def release_of(output: str) -> str:
    return output.rsplit("Release: ", 1)[1].strip()


ODD = {
    "EQ": "a=b==c",
    "SPACES": "  padded value  ",
    "QUOTES": """it's "quoted" and `ticked`""",
    "SHELL": "$HOME ${X} \\n; rm -rf / # not a comment",
    "EMPTY": "",
    "UNICODE": "café ☕",
}


def test_env_set_get_unset_round_trip_odd_values(myapp, rack):
    out = ok("env", "set", *(f"{k}={v}" for k, v in ODD.items()))
    assert out.startswith(f"Setting {', '.join(sorted(ODD))}... OK\nRelease: R")
    assert releases.list_for_app(rack, myapp)[0]["id"] == release_of(out)
    assert ok("env") == "".join(f"{k}={ODD[k]}\n" for k in sorted(ODD))
    for key, value in ODD.items():
        assert ok("env", "get", key) == value + "\n"
    out = ok("env", "unset", "EQ", "EMPTY")
    assert out.startswith("Unsetting EMPTY, EQ... OK\nRelease: R")
    assert ok("env") == "".join(f"{k}={ODD[k]}\n" for k in sorted(ODD) if k not in ("EQ", "EMPTY"))


def test_env_set_merges_and_replace_replaces(myapp):
    ok("env", "set", "A=1", "B=2")
    ok("env", "set", "B=3", "C=4")
    assert ok("env") == "A=1\nB=3\nC=4\n"
    ok("env", "set", "--replace", "Z=9")
    assert ok("env") == "Z=9\n"


def test_env_set_reads_stdin_without_arguments(myapp):
    ok("env", "set", input="# a comment\nA=1\n\nB=two words\n")
    assert ok("env") == "A=1\nB=two words\n"


def test_env_refuses_what_cannot_round_trip(myapp, rack):
    for arg in ("NOVALUE", "=x", "A B=1", "A=line1\nline2", "A=x\u2028y"):
        result = run("env", "set", arg)
        assert result.exit_code == 2, arg
    assert releases.list_for_app(rack, myapp) == []
    missing = run("env", "get", "NOPE")
    assert (missing.exit_code, missing.output) == (1, "Error: env not found: NOPE\n")
    ok("env", "set", "A=1")
    gone = run("env", "unset", "NOPE")
    assert gone.exit_code == 1 and "env not found: NOPE" in gone.output


def test_env_set_promote_and_id(myapp, rack):
    built_release(rack, myapp)
    result = run("env", "set", "A=1", "--promote", "--id")
    assert result.exit_code == 0, result.output
    assert result.stdout == apps.get(rack, myapp)["release"]
    assert "Setting A... OK" in result.stderr and "Promoting R" in result.stderr


def test_env_on_another_app(myapp, rack):
    apps.create(rack, name="other")
    ok("env", "set", "-a", "other", "X=1")
    assert ok("env", "-a", "other") == "X=1\n"
    assert ok("env", "get", "X", "-a", "other") == "1\n"
    assert ok("env") == ""


def test_releases_table_promote_and_rollback(myapp, rack):
    first = built_release(rack, myapp)
    ok("env", "set", "A=1")
    second = releases.list_for_app(rack, myapp)[0]["id"]
    assert ok("releases", "promote") == f"Promoting {second}... OK\n"
    lines = ok("releases").splitlines()
    assert lines[0].split() == ["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"]
    build = releases.get(rack, myapp, first)["build"]
    assert lines[1].split() == [second, "active", build, "0", "seconds", "ago", "env", "add:A"]
    assert lines[2].split() == [first, build, "0", "seconds", "ago", "built"]
    assert lines[0].index("STATUS") == lines[1].index("active")

    older = run("releases", "promote", first)
    assert older.exit_code == 1 and "rollback" in older.output
    out = ok("releases", "rollback", first)
    new = apps.get(rack, myapp)["release"]
    assert out == f"Rolling back to {first}... OK, {new}\n"
    assert releases.get(rack, myapp, new)["env"] == "" and new not in (first, second)
    assert ok("releases", "-l", "1").splitlines()[1].split()[:2] == [new, "active"]

    result = run("releases", "rollback", second, "--id")
    assert result.stdout == apps.get(rack, myapp)["release"]


def test_releases_info_and_manifest(myapp, rack):
    built_release(rack, myapp)
    ok("env", "set", "A=1", "B=x y")
    r = releases.list_for_app(rack, myapp)[0]
    out = ok("releases", "info", r["id"]).splitlines()
    assert out[0] == f"Id           {r['id']}"
    assert out[1].split() == ["Build", r["build"]]
    assert out[2].split() == ["Created", releases.serialize(r)["created"]]
    assert out[3] == "Description  env add:A add:B"
    assert out[4:] == ["Env          A=1", "             B=x y"]
    assert ok("releases", "manifest", r["id"]) == MANIFEST
    missing = run("releases", "info", "RNOPENOPENO")
    assert (missing.exit_code, missing.output) == (1, "Error: release not found: RNOPENOPENO\n")


def test_promote_with_no_releases_says_what_to_do(myapp):
    result = run("releases", "promote")
    assert result.exit_code == 1
    assert "has no releases: run `convox build` first" in result.output


def test_builds_table_and_info(myapp, rack):
    image = {"image": "127.0.0.1:5000/myapp:web.B", "digest": "sha256:" + "a" * 64}
    done = make_build(rack, myapp, images={"web": image})
    failed = make_build(rack, myapp, status="failed", reason="user:build: RUN false returned 1")
    lines = ok("builds").splitlines()
    assert lines[0].split() == ["ID", "STATUS", "RELEASE", "STARTED", "ELAPSED", "DESCRIPTION"]
    assert [line.split()[:2] for line in lines[1:]] == [[failed["id"], "failed"], [done["id"], "complete"]]
    assert lines[1].split()[-1] == "built" and "0s" in lines[1].split()
    assert len(ok("builds", "--limit", "1").splitlines()) == 2

    info = ok("builds", "info", done["id"]).splitlines()
    assert [line.split()[0] for line in info] == [
        "Id",
        "Status",
        "Release",
        "Description",
        "Started",
        "Elapsed",
        "Images",
    ]
    assert info[-1] == f"Images       web=sha256:{'a' * 64}"
    failed_info = ok("builds", "info", failed["id"]).splitlines()
    assert failed_info[-1] == "Reason       user:build: RUN false returned 1"
    missing = run("builds", "info", "BNOPENOPENO")
    assert missing.exit_code == 1 and "build not found" in missing.output


def test_builds_cancel(myapp, rack):
    from rack import objects as objs
    from rack.builds import record as builds

    url = objs.put(rack, myapp, "tmp/s.tgz", io.BytesIO(b"x"))
    queued = builds.create(rack, myapp, url=url)
    assert ok("builds", "cancel", queued["id"]) == f"Cancelling {queued['id']}... OK\n"
    assert builds.get(rack, myapp, queued["id"])["reason"].startswith("cancelled")
    done = make_build(rack, myapp)
    assert ok("builds", "cancel", done["id"]) == f"Cancelling {done['id']}... already complete\n"
    missing = run("builds", "cancel", "BNOPENOPENO")
    assert missing.exit_code == 1 and "build not found" in missing.output


def test_releases_info_masks_env_on_a_terminal_unless_revealed(myapp, rack, monkeypatch):
    import io

    import click

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    ok("env", "set", "TOKEN=s3cret", "A=x=y")
    r = releases.list_for_app(rack, myapp)[0]["id"]
    real = click.get_text_stream
    monkeypatch.setattr(click, "get_text_stream", lambda n, *a, **k: Terminal() if n == "stdout" else real(n))
    masked = ok("releases", "info", r)
    assert "s3cret" not in masked and "TOKEN=****" in masked and "A=****" in masked
    assert "TOKEN=s3cret" in ok("releases", "info", r, "--reveal")

"""Which Dockerfiles the rack writes images for itself, and how it reads their steps (no engine needed)."""

from __future__ import annotations

import pytest

from rack.pipeline.direct import files
from rack.pipeline.direct.plan import Copy, Plan, Setting, Workdir, read


def test_a_copy_only_dockerfile_is_read_step_by_step():
    plan = read(
        "ARG BASE=busybox\nFROM ${BASE}\n# a comment\nWORKDIR /srv\nCOPY --chown=5 . app/\n"
        'COPY ["a b.txt", "c.txt", "/etc/x/"]\nENV A=1 B="two words"\nENV C three words\n'
        'LABEL l=v\nEXPOSE 80 53/udp\nUSER app\nCMD run --fast\nENTRYPOINT ["/bin/run"]\n',
        {"BASE": "other:1"},
    )
    assert isinstance(plan, Plan) and plan.base == "other:1"
    assert plan.steps[0] == Workdir("/srv", "WORKDIR /srv")
    assert plan.steps[1] == Copy((".",), "/srv/app", True, 5, 5, "COPY --chown=5 . app/")
    assert plan.steps[2].sources == ("a b.txt", "c.txt") and plan.steps[2].dest == "/etc/x"
    settings = {s.keyword + str(n): s for n, s in enumerate(plan.steps) if isinstance(s, Setting)}
    assert settings["ENV3"].value == [("A", "1"), ("B", "two words")]
    assert settings["ENV4"].value == [("C", "three words")]
    assert settings["EXPOSE6"].value == ["80/tcp", "53/udp"]
    assert settings["USER7"].value == "app"
    assert settings["CMD8"].value == ["/bin/sh", "-c", "run --fast"] and settings["CMD8"].shell
    assert settings["ENTRYPOINT9"].value == ["/bin/run"] and not settings["ENTRYPOINT9"].shell


def test_a_single_file_copy_names_its_destination():
    plan = read("FROM busybox\nWORKDIR /app\nCOPY run.sh bin/start\n", {})
    assert isinstance(plan, Plan)
    assert plan.steps[1] == Copy(("run.sh",), "/app/bin/start", False, 0, 0, "COPY run.sh bin/start")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("FROM busybox\nRUN echo hi\n", "it has RUN"),
        ("FROM busybox\nADD x.tgz /\n", "it has ADD"),
        ("FROM busybox AS a\nFROM a\nCOPY . /app\n", "it has more than one stage"),
        ("FROM busybox\nCOPY --from=busybox /bin/sh /sh\n", "it reads more than one image"),
        ("FROM busybox\nCOPY --chown=app . /app\n", "its COPY has --chown"),
        ("FROM busybox\nCOPY *.txt /app/\n", "a COPY path has a variable, a wildcard or a URL"),
        ("FROM busybox\nARG D=/app\nCOPY . $D\n", "a COPY path has a variable, a wildcard or a URL"),
        ("FROM busybox\nENV A=$PATH\n", "its ENV has a variable"),
        ("FROM busybox\nCOPY ../x /app\n", "a COPY source '../x' is outside the context"),
        ("# syntax=docker/dockerfile:1\nFROM busybox\nCOPY . /app\n", "it starts with a parser directive"),
        ("FROM busybox\nCOPY <<EOF /x\nhi\nEOF\n", "its COPY has a heredoc"),
        ("FROM scratch\nCOPY . /\n", "it starts from scratch"),
        ("FROM ${UNSET}\nCOPY . /app\n", "its base image is not one image named in the text"),
        ("FROM --platform=linux/arm64 busybox\nCOPY . /app\n", "its FROM has options"),
        ("FROM busybox\nEXPOSE 8000-8002\n", "an EXPOSE port '8000-8002' is not one port"),
    ],
)
def test_what_the_rack_does_not_reproduce_is_named(text, reason):
    assert read(text, {}) == reason


def test_parts_stay_the_same_but_for_the_one_a_changed_file_is_in():
    members = [files.Member(f"app/d{n % 7}/f{n:04d}", "file", 0o644, sha256=f"{n}") for n in range(2000)]
    split = files.parts(members)
    assert 16 <= len(split) <= 64 and sum(map(len, split)) == 2000
    changed = list(members)
    changed[1234] = files.Member(members[1234].path, "file", 0o644, sha256="new")
    keys = [files.key(p) for p in split]
    new_keys = [files.key(p) for p in files.parts(changed)]
    assert len(new_keys) == len(keys) and sum(a != b for a, b in zip(keys, new_keys, strict=True)) == 1
    added = [*members, files.Member("app/d0/zzz", "file", 0o644, sha256="z")]
    assert sum(k not in keys for k in map(files.key, files.parts(added))) == 1
    assert len(files.parts(members[:31])) == 1

"""Reading ARG names and stage names from Dockerfiles, and picking build args."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rack.pipeline.dockerfile import build_args, declared_args, has_target

MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11
FROM ${BASE} AS base
arg VERSION
ARG A=1 B="two words" \\
    C
# ARG COMMENTED
FROM base as Development
ARG DEV_ONLY=1
FROM base
ARG VERSION
RUN echo $VERSION
"""


def test_declared_args_in_every_stage_in_order_once():
    assert declared_args(MULTI_STAGE) == ["BASE", "VERSION", "A", "B", "C", "DEV_ONLY"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ARG X", ["X"]),
        ("  arg   x=1", ["x"]),
        ("ARG\tTABBED=1", ["TABBED"]),
        ("ARG Q='a b' R=\"c d\" S", ["Q", "R", "S"]),
        ('ARG UNBALANCED="oops T', ["UNBALANCED", "T"]),
        ("ARG A \\\n  B \\\n\n  # a comment inside\n  C", ["A", "B", "C"]),
        ("ARG SPLIT\\\nNAME", ["SPLITNAME"]),
        ("ARG LAST \\", ["LAST"]),
        ("#ARG NOPE\nRUN echo ARG NOPE\nENV ARG=1", []),
        ("RUN echo hi \\\n  ARG NOPE", []),
        ("ARG", []),
        ("", []),
        ("ARG =x", []),
    ],
)
def test_declared_args(text, expected):
    assert declared_args(text) == expected


def test_heredoc_bodies_are_not_instructions():
    text = "FROM x\nRUN <<EOF\nARG NOT_AN_ARG\nEOF\n"
    text += "COPY <<-'A' /a <<\"B\" /b\nARG NOPE_A\n\tA\nARG NOPE_B\nB\nARG REAL\n"
    assert declared_args(text) == ["REAL"]


def test_escape_directive():
    text = "# escape=`\nFROM mcr.microsoft.com/windows\nARG A=C:\\path `\n    B\n"
    assert declared_args(text) == ["A", "B"]


def test_directive_only_at_the_top():
    text = "FROM x\n# escape=`\nARG A `\nARG B\n"
    assert declared_args(text) == ["A", "B"]


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        (MULTI_STAGE, "development", True),
        (MULTI_STAGE, "DEVELOPMENT", True),
        (MULTI_STAGE, "base", True),
        (MULTI_STAGE, "production", False),
        ("FROM --platform=$BUILDPLATFORM golang:1.22 AS development", "development", True),
        ("from node:20 as development\n", "development", True),
        ("FROM node:20\n# FROM node AS development\n", "development", False),
        ("RUN echo FROM x AS development", "development", False),
        ("FROM node \\\n  AS development", "development", True),
        ("FROM development", "development", False),
        ("COPY --from=development /a /b", "development", False),
    ],
)
def test_has_target(text, name, expected):
    assert has_target(text, name) is expected


def test_build_args_keep_only_declared_names_present_in_env():
    env = {"VERSION": "1.2", "SECRET": "s3cret", "A": "", "BASE": "python:3.12"}
    assert build_args(declared_args(MULTI_STAGE), env) == {"BASE": "python:3.12", "VERSION": "1.2", "A": ""}
    assert build_args([], env) == {}
    assert build_args(["X"], {}) == {}


@given(st.text(max_size=300))
def test_any_text_parses(text):
    names = declared_args(text)
    assert len(names) == len(set(names))
    assert isinstance(has_target(text, "development"), bool)

"""Property-based fuzzing of every route: whatever comes in, the rack never answers 5xx."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

segment = st.one_of(
    st.sampled_from(["myapp", "BABCDEFGHIJ", "RABCDEFGHIJ", "..", ".", "%2e%2e", "tmp", "' OR 1=1 --", ""]),
    st.text(alphabet=string.printable.replace("/", "").replace("?", "").replace("#", ""), max_size=40),
    st.text(max_size=20).filter(lambda s: "/" not in s and "?" not in s and "#" not in s),
)
form_value = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["true", "false", "object://myapp/tmp/src.tgz", "object://myapp/../x", "A=1,B=2", "-1"]),
)
form = st.dictionaries(
    st.sampled_from(
        [
            "name",
            "url",
            "build-args",
            "description",
            "manifest",
            "no-cache",
            "development",
            "git-sha",
            "limit",
            "build",
            "env",
            "parent-release",
            "status",
            "started",
            "ended",
            "entrypoint",
            "logs",
            "release",
            "generation",
            "follow",
            "offset",
        ]
    ),
    form_value,
    max_size=6,
)
ROUTES = [
    ("POST", "/apps"),
    ("GET", "/apps/{0}"),
    ("DELETE", "/apps/{0}"),
    ("POST", "/apps/{0}/objects/{1}"),
    ("GET", "/apps/{0}/objects/{1}/{2}"),
    ("HEAD", "/apps/{0}/objects/{1}"),
    ("DELETE", "/apps/{0}/objects/{1}"),
    ("POST", "/apps/{0}/builds"),
    ("GET", "/apps/{0}/builds"),
    ("GET", "/apps/{0}/builds/{1}"),
    ("PUT", "/apps/{0}/builds/{1}"),
    ("POST", "/apps/{0}/builds/{1}/cancel"),
    ("GET", "/apps/{0}/builds/{1}/logs"),
    ("POST", "/apps/{0}/releases"),
    ("GET", "/apps/{0}/releases"),
    ("GET", "/apps/{0}/releases/{1}"),
    ("POST", "/apps/{0}/releases/{1}/promote"),
]


@pytest.fixture
def seeded(client):
    client.post("/apps", data={"name": "myapp"})
    client.post("/apps/myapp/objects/tmp/src.tgz", data=b"junk")
    return client


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(ROUTES),
    parts=st.tuples(segment, segment, segment),
    data=form,
    query=form,
    body=st.binary(max_size=200),
)
def test_no_route_answers_5xx(seeded, route, parts, data, query, body):
    method, template = route
    path = template.format(*parts)
    if method == "POST" and "/objects/" in template:
        resp = seeded.open(path, method=method, data=body, query_string=query)
    else:
        resp = seeded.open(path, method=method, data=data, query_string=query)
    assert resp.status_code < 500, (method, path, data, resp.data)

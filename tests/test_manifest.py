"""Parsing convox.yml: Convox's defaults, interpolation, required env and hostile documents."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rack.errors import BuildUserError
from rack.pipeline.manifest import MAX_NODES, Manifest, Service, load

EXAMPLE = """
environment: [ "SHARED=default", "REQUIRED" ]
services:
  web:
    build: ./web
    command: bin/web
  api:
    build: { path: ., manifest: Dockerfile.prod, args: [A=1] }
    environment: [ "FOO=bar", "SECRET", "*" ]
  redis:
    image: redis:7
  worker:
    command: [bin/worker, --queue, default]
  again:
    build: ./web/
"""


def refused(text: str, env: dict[str, str] | None = None, **kw) -> str:
    with pytest.raises(BuildUserError) as caught:
        load(text, env or {}, **kw)
    assert caught.value.code == "user:manifest"
    return caught.value.message


def test_convox_example():
    manifest = load(EXAMPLE, {"REQUIRED": "1", "SECRET": "s"})
    shared = ["SHARED=default", "REQUIRED"]
    assert manifest == Manifest(
        services=[
            Service("web", "web", "Dockerfile", None, shared, "bin/web"),
            Service("api", ".", "Dockerfile.prod", None, [*shared, "FOO=bar", "SECRET", "*"], None, ["A=1"]),
            Service("redis", None, None, "redis:7", shared),
            Service("worker", ".", "Dockerfile", None, shared, ["bin/worker", "--queue", "default"]),
            Service("again", "web", "Dockerfile", None, shared),
        ],
        environment=shared,
    )
    assert manifest.service("redis").image == "redis:7"


def test_build_key_groups_identical_builds():
    manifest = load(EXAMPLE, {"REQUIRED": "1", "SECRET": "s"})
    keys = {s.name: s.build_key for s in manifest.services}
    assert keys == {
        "web": ("web", "Dockerfile"),
        "api": (".", "Dockerfile.prod"),
        "redis": None,
        "worker": (".", "Dockerfile"),
        "again": ("web", "Dockerfile"),
    }
    text = "services:\n  a: {build: {path: ./x/, manifest: ./Dockerfile}}\n  b: {build: x}\n"
    text += "  c: {build: {path: x}}\n"
    assert len({s.build_key for s in load(text, {}).services}) == 1


@pytest.mark.parametrize(
    ("body", "path", "dockerfile", "image"),
    [
        ("{}", ".", "Dockerfile", None),
        ("", ".", "Dockerfile", None),
        ("{build: sub}", "sub", "Dockerfile", None),
        ("{build: {manifest: Dockerfile.dev}}", ".", "Dockerfile.dev", None),
        ("{build: {path: sub, manifest: ../Dockerfile}}", "sub", "../Dockerfile", None),
        ("{build: sub, image: 'nginx:1'}", None, None, "nginx:1"),
        ("{image: ''}", ".", "Dockerfile", None),
    ],
)
def test_build_defaults(body, path, dockerfile, image):
    (service,) = load(f"services:\n  web: {body}\n", {}).services
    assert (service.build_path, service.dockerfile, service.image) == (path, dockerfile, image)


def test_services_keep_file_order():
    names = [f"s{i}" for i in (5, 3, 9, 1, 7)]
    text = "services:\n" + "".join(f"  {name}: {{}}\n" for name in names)
    assert [s.name for s in load(text, {}).services] == names


def test_interpolation_happens_before_parsing():
    text = "services:\n  web:\n    image: ${REPO}:${TAG}\n    environment: [X=${MISSING}]\n"
    (service,) = load(text, {"REPO": "nginx", "TAG": "1.25"}).services
    assert service.image == "nginx:1.25"
    assert service.environment == ["X="]


def test_interpolation_can_change_structure_like_convox():
    (service,) = load("services:\n  web: ${BODY}\n", {"BODY": "{image: redis}"}).services
    assert service.image == "redis"


def test_required_env():
    text = "environment: [B, SHARED=1]\nservices:\n  web:\n    environment: [A, C=x, '*']\n  api: {}\n"
    assert refused(text) == "required env: A, B"
    assert refused(text, {"B": "1"}) == "required env: A"
    assert load(text, {"A": "", "B": "2"}).services[0].environment == ["B", "SHARED=1", "A", "C=x", "*"]


@pytest.mark.parametrize("name", ["Web_1", "1web", "-web", "web_1", "WEB", "web.1", "web\n", "1"])
def test_bad_service_names(name):
    message = refused(f"services:\n  {json.dumps(name)}: {{}}\n")
    rule = "must contain only lowercase alphanumeric and dashes"
    assert message == f"convox.yml: service name {json.dumps(name)} invalid, {rule}"


def test_good_service_names():
    assert [s.name for s in load("services: {a: {}, web-1: {}, x9-y: {}}", {}).services] == [
        "a",
        "web-1",
        "x9-y",
    ]


@pytest.mark.parametrize(
    ("build", "kind"), [("[a, b]", "list"), ("1", "int"), ("true", "bool"), ("1.5", "float")]
)
def test_unknown_build_type(build, kind):
    message = refused(f"services:\n  web:\n    build: {build}\n")
    assert message == f"convox.yml: service web: unknown type for service build: {kind}"


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        ("../other", 'build path "../other" is outside the source'),
        ("a/../../b", 'build path "a/../../b" is outside the source'),
        ("/etc", 'build path "/etc" must be a relative path inside the source'),
        ("{manifest: ../Dockerfile}", 'build manifest "../Dockerfile" is outside the source'),
        ("{path: a, manifest: ../../D}", 'build manifest "../../D" is outside the source'),
        ("{manifest: /etc/passwd}", 'build manifest "/etc/passwd" must be a relative path'),
        ("{path: [x]}", "build path must be a string, not a list"),
    ],
)
def test_paths_stay_inside_the_source(build, fragment):
    message = refused(f"services:\n  web:\n    build: {build}\n")
    assert message.startswith("convox.yml: service web: ") and fragment in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "convox.yml has no services"),
        ("# nothing\n", "convox.yml has no services"),
        ("services:\n", "convox.yml has no services"),
        ("services: {}\n", "convox.yml has no services"),
        ("environment: [A=1]\n", "convox.yml has no services"),
        ("- web\n", "convox.yml must be a map with a services section, not a list"),
        ("services: [web]\n", "convox.yml: services must be a map of names to services, not a list"),
        ("services: {web: [x]}\n", "convox.yml: service web must be a map, not a list"),
        ("services: {web: {image: [x]}}\n", "convox.yml: service web: image must be a string, not a list"),
        (
            "services: {web: {environment: A=1}}\n",
            "convox.yml: service web: environment must be a list of strings",
        ),
        ("environment: [1]\nservices: {web: {}}\n", "convox.yml: environment must be a list of strings"),
        (
            "services: {web: {command: {a: 1}}}\n",
            "convox.yml: service web: command must be a list of strings",
        ),
    ],
)
def test_structure_errors(text, message):
    assert refused(text) == message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("services:\n  web: {image: [1}\n", "but got '}' at line 2"),
        ("services:\n  web:\n    image: x\n   build: y\n", "at line 4"),
        ("services:\n  web: {}\n  web: {}\n", 'duplicate key "web"'),
        ("services:\n\tweb: {}\n", "at line 2"),
        ("services: {web: {image: !!python/object:os.system x}}\n", "could not determine a constructor"),
        ("services: {web: *nope}\n", "undefined alias"),
        ("a: 1\n---\nb: 2\n", "but found another document"),
        ("when: 2024-13-45\nservices: {web: {}}\n", "month must be in 1..12"),
    ],
)
def test_invalid_yaml(text, fragment):
    message = refused(text)
    assert message.startswith("convox.yml is not valid YAML: ") and fragment in message


def test_filename_appears_in_messages():
    assert refused("", filename="convox.prod.yml") == "convox.prod.yml has no services"


def test_anchors_and_merge_keys_are_fine():
    text = "x-base: &base\n  build: ./app\n  environment: [A=1]\n"
    text += "services:\n  web: *base\n  api:\n    <<: *base\n"
    services = load(text, {}).services
    assert [(s.name, s.build_path, s.environment) for s in services] == [
        ("web", "app", ["A=1"]),
        ("api", "app", ["A=1"]),
    ]


def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"services:\n  web:\n    environment: *a{levels}")
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_fast_in_bounded_memory():
    tracemalloc.start()
    started = time.monotonic()
    try:
        message = refused(billion_laughs())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message == f"convox.yml expands to more than {MAX_NODES} YAML nodes (too many aliases?)"
    assert time.monotonic() - started < 2
    assert peak < 20 * 1024 * 1024


def test_many_aliases_within_the_limit_are_fine():
    text = "base: &b [A=1]\nservices:\n" + "".join(f"  s{i}: {{environment: *b}}\n" for i in range(200))
    assert len(load(text, {}).services) == 200


def test_deep_nesting_is_refused():
    assert refused("services: " + "[" * 5000 + "]" * 5000) == "convox.yml nests deeper than 64 levels"


def test_size_limit():
    text = "services: {web: {}}\n" + "# padding\n" * 200
    assert refused(text, max_bytes=1000) == "convox.yml is larger than 1000 bytes"
    assert load(text, {}, max_bytes=len(text)).services[0].name == "web"
    grow = "services: {web: {}}\n# " + "${X}" * 100 + "\n"
    assert refused(grow, {"X": "x" * 100}, max_bytes=2000) == (
        "convox.yml is larger than 2000 bytes once ${VAR}s are filled in"
    )


def test_default_size_limit_is_one_mib():
    assert refused("#" * (1024 * 1024 + 1)) == "convox.yml is larger than 1048576 bytes"


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab:-[]{}&*!|>'\"#\n ,?%@`$\t") | st.characters(), max_size=200))
def test_any_text_either_loads_or_is_refused_with_a_user_error(text):
    try:
        manifest = load(text, {})
    except BuildUserError as exc:
        assert exc.code == "user:manifest" and exc.message
    else:
        assert manifest.services

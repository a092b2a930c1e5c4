"""The Docker engine wrapper: streamed builds, error mapping, push digests, interrupting a build."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from rack.config import load_settings
from rack.context import Rack
from rack.errors import BuildPlatformError, BuildUserError
from rack.pipeline.engine.classic import Engine, Progress, drain, split_image
from rack.pipeline.steps import open_engine
from rack.reasons import Reason
from tests.helpers import registry_open


def test_split_image():
    assert split_image("busybox") == ("busybox", "latest")
    assert split_image("busybox:1.36") == ("busybox", "1.36")
    assert split_image("127.0.0.1:5000/app:web.B1") == ("127.0.0.1:5000/app", "web.B1")
    assert split_image("127.0.0.1:5000/app") == ("127.0.0.1:5000/app", "latest")
    assert split_image("reg/app@sha256:abc") == ("reg/app", "sha256:abc")


def test_progress_is_one_line_per_layer_status_change():
    p = Progress()
    events = [
        {"status": "The push refers to repository [r/app]"},
        {"status": "Preparing", "id": "a1"},
        {"status": "Pushing", "id": "a1", "progress": "[=>  ] 1kB/9kB"},
        {"status": "Pushing", "id": "a1", "progress": "[==> ] 5kB/9kB"},
        {"status": "Pushed", "id": "a1"},
        {"aux": {"Digest": "sha256:x"}},
    ]
    lines = [line for e in events if (line := p.line(e))]
    assert lines == [
        "The push refers to repository [r/app]\n",
        "a1: Preparing\n",
        "a1: Pushing\n",
        "a1: Pushed\n",
    ]


def test_unreachable_engine_is_a_platform_error(tmp_path):
    settings = load_settings({"RACK_PASSWORD": "x", "RACK_DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    with pytest.raises(BuildPlatformError) as info:
        with Engine(settings) as engine:
            engine.has_image("busybox")
    assert info.value.code == "platform:engine"
    assert str(tmp_path) in info.value.message


@pytest.fixture(scope="module")
def engine_settings(docker_stack):
    return load_settings(docker_stack.env)


@pytest.fixture(params=["buildkit", "classic"])
def engine(request, engine_settings, docker_stack):
    """An engine session building with each builder (RACK_BUILDER), pulling and pushing alike."""
    rack = Rack(dataclasses.replace(engine_settings, builder=request.param))
    with open_engine(rack) as e:
        yield e
    rack.close()


@pytest.fixture
def classic_engine(engine_settings):
    with Engine(engine_settings) as e:
        yield e


def _context(tmp_path, dockerfile: str):
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path


@pytest.mark.docker
def test_build_streams_output_and_returns_the_image_id(engine, engine_settings, tmp_path):
    ctx = _context(tmp_path, 'FROM busybox\nARG WHO=nobody\nRUN echo "built by $WHO"\n')
    tag = f"{engine_settings.registry}/enginetest:web.B1"
    chunks: list[str] = []
    image_id = drain(
        engine.build(context=ctx, dockerfile="Dockerfile", tag=tag, buildargs={"WHO": "tests"}, nocache=True),
        chunks.append,
    )
    text = "".join(chunks)
    assert {"classic": "Step 3/3 : RUN echo", "buildkit": "[2/2] RUN echo"}[engine.builder] in text
    assert "built by tests\n" in text
    assert image_id.startswith("sha256:")
    assert engine.image_id(tag) == image_id
    assert engine.entrypoint(tag) == ""


@pytest.mark.docker
def test_failing_step_names_the_step(engine, tmp_path):
    ctx = _context(tmp_path, "FROM busybox\nRUN true\nRUN echo failing; exit 3\n")
    with pytest.raises(BuildUserError) as info:
        drain(engine.build(context=ctx, dockerfile="Dockerfile", tag="enginetest:fail", buildargs={}), print)
    assert info.value.code == "user:step"
    command = "The command '/bin/sh -c echo failing; exit 3' returned a non-zero code: 3"
    assert info.value.message == f"Step 3/3 : RUN echo failing; exit 3: {command}"


@pytest.mark.docker
@pytest.mark.parametrize(
    ("dockerfile", "code", "words"),
    [
        ("FROM busybox\nFROBNICATE now\n", "user:dockerfile", "unknown instruction"),
        ("FROM nosuch-base:1\nRUN true\n", "user:base-image", "Step 1/2 : FROM nosuch-base:1: the image"),
        ("FROM busybox\nCOPY missing.txt /\n", "user:step", "Step 2/2 : COPY missing.txt /"),
    ],
)
def test_build_errors_are_user_errors(engine, tmp_path, dockerfile, code, words):
    ctx = _context(tmp_path, dockerfile)
    with pytest.raises(BuildUserError) as info:
        drain(engine.build(context=ctx, dockerfile="Dockerfile", tag="enginetest:bad", buildargs={}), print)
    assert info.value.code == code
    assert words in info.value.message


@pytest.mark.docker
def test_push_returns_the_registry_digest(engine, engine_settings):
    tag = f"{engine_settings.registry}/enginetest:tools.B2"
    engine.tag("busybox:latest", tag)
    lines: list[str] = []
    digest = drain(engine.push(tag), lines.append)
    assert digest.startswith("sha256:")
    assert lines[0].startswith("The push refers to repository")
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    with registry_open(
        engine_settings, "enginetest/manifests/tools.B2", method="HEAD", accept=accept
    ) as response:
        assert response.headers["Docker-Content-Digest"] == digest


@pytest.mark.docker
def test_push_to_a_dead_registry_is_a_registry_error(docker_stack, engine_settings):
    dead = load_settings({**docker_stack.env, "RACK_REGISTRY": "127.0.0.1:9"})
    with Engine(dead) as engine:
        engine.tag("busybox:latest", "127.0.0.1:9/enginetest:web.B3")
        with pytest.raises(BuildPlatformError) as info:
            drain(engine.push("127.0.0.1:9/enginetest:web.B3"), lambda line: None)
    assert info.value.code == "platform:registry"


@pytest.mark.docker
def test_pull_of_a_missing_image_is_a_user_error(engine, engine_settings):
    with pytest.raises(BuildUserError) as info:
        drain(engine.pull(f"{engine_settings.registry}/enginetest:nosuch"), lambda line: None)
    assert info.value.code == "user:image"


@pytest.mark.docker
def test_interrupt_stops_a_running_step_and_leaves_no_container(classic_engine, tmp_path):
    engine = classic_engine
    ctx = _context(tmp_path, "FROM busybox\nRUN echo started; sleep 60\n")
    stop = threading.Event()
    seen: list[str] = []

    def check():
        if stop.is_set():
            raise BuildUserError(Reason.CANCELLED, "the build was cancelled")

    def on_line(line: str) -> None:
        if line.startswith(" ---> Running in "):
            seen.append(line.split()[-1])
        if line == "started\n":
            threading.Timer(0.2, lambda: (stop.set(), engine.interrupt())).start()

    began = time.monotonic()
    with pytest.raises(BuildUserError) as info:
        drain(
            engine.build(
                context=ctx,
                dockerfile="Dockerfile",
                tag="enginetest:slow",
                buildargs={},
                nocache=True,
                check=check,
            ),
            on_line,
        )
    assert info.value.code == "cancelled"
    assert time.monotonic() - began < 20
    assert seen

    def left() -> list[dict]:
        return engine.api.containers(all=True, filters={"id": seen[0]})

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == [], json.dumps(left())[:500]


@pytest.mark.docker
def test_memory_and_cpu_limits_apply_to_build_steps(docker_stack, tmp_path):
    limited = load_settings(
        {**docker_stack.env, "RACK_BUILD_MEMORY": str(32 * 1024 * 1024), "RACK_BUILD_CPUS": "1"}
    )
    ctx = _context(
        tmp_path,
        "FROM busybox\nRUN cat /sys/fs/cgroup/memory/memory.limit_in_bytes; nproc\n"
        "RUN dd if=/dev/zero bs=64M count=1 of=/dev/null\n",
    )
    lines: list[str] = []
    with Engine(limited) as engine, pytest.raises(BuildUserError) as info:
        drain(
            engine.build(context=ctx, dockerfile="Dockerfile", tag="enginetest:limits", buildargs={}),
            lines.append,
        )
    # The engine may hand both lines over in one chunk: look at the output, not at its chunks.
    output = "".join(lines)
    assert "\n33554432\n1\n" in output
    assert info.value.code == Reason.MEMORY
    assert "RUN dd if=/dev/zero" in info.value.message
    assert info.value.message.endswith(
        "returned a non-zero code: 137 (killed: the step used more than the build's memory limit)"
    )

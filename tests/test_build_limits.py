"""RACK_BUILD_MEMORY and RACK_BUILD_CPUS under BuildKit: the engine's cgroup bounds the steps it runs."""

from __future__ import annotations

import random
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from rack import apps
from rack.config import load_settings
from rack.context import Rack
from rack.db import execute
from rack.pipeline.engine.limits import EngineCgroup
from tests.helpers import build, build_log, write_app

pytestmark = pytest.mark.docker
MEMORY = 64 * 1024 * 1024
CPUS = 0.5
APP = "bk-limits"


@pytest.fixture(scope="module")
def limited(docker_stack):
    """A Rack building with BuildKit under a 64 MiB memory limit and half a CPU."""
    home = Path(tempfile.mkdtemp(prefix="rack-limits-"))
    env = {
        **docker_stack.env,
        "RACK_STORAGE": f"file://{home}/objects",
        "RACK_BUILD_MEMORY": str(MEMORY),
        "RACK_BUILD_CPUS": str(CPUS),
    }
    r = Rack(load_settings(env), enqueue_build=lambda build_id: None)
    with r.db.transaction() as conn:
        execute(conn, "DELETE FROM apps WHERE name = %s", (APP,))
    apps.create(r, name=APP)
    yield r
    r.close()
    EngineCgroup(r.settings.build_cgroup).apply(memory=0, cpus=0)  # the engine serves other tests next
    shutil.rmtree(home, ignore_errors=True)


def dockerfile(step: str) -> dict[str, str]:
    return {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"FROM busybox\nRUN echo {random.random()} && {step}\n",
    }


def test_a_step_past_the_memory_limit_fails_as_user_memory(limited, tmp_path):
    row = build(limited, APP, write_app(tmp_path, dockerfile("dd if=/dev/zero bs=128M count=1 of=/dev/null")))
    assert row["status"] == "failed"
    reason = row["reason"]
    assert reason.startswith("user:memory: Step 2/2 : RUN echo "), reason
    assert "dd if=/dev/zero bs=128M" in reason and "returned a non-zero code: 137" in reason
    assert reason.endswith(f"RACK_BUILD_MEMORY={MEMORY} (64 MiB))"), reason
    assert "Note: RACK_BUILD_MEMORY" not in build_log(limited, row)


def test_steps_under_the_limits_pass_and_share_the_engines_cpu_quota(limited, tmp_path):
    cgroup = EngineCgroup(limited.settings.build_cgroup)
    throttled = _throttled(cgroup)
    spin = 'timeout 2 sh -c "while :; do :; done"'
    step = (
        "dd if=/dev/zero bs=16M count=1 of=/dev/null && grep -E ':(memory|cpu):' /proc/self/cgroup && "
        f"a=$(cat /sys/fs/cgroup/cpuacct/cpuacct.usage); ({spin} &); {spin}; "
        'echo "used $(( $(cat /sys/fs/cgroup/cpuacct/cpuacct.usage) - a )) ns of CPU"'
    )
    row = build(limited, APP, write_app(tmp_path, dockerfile(step)))
    assert row["status"] == "complete", row["reason"]
    text = build_log(limited, row)
    # The step ran below the engine's cgroup, whose quota is half of each period, in both hierarchies.
    for controller in ("memory", "cpu"):
        assert re.search(rf":{controller}:/{cgroup.name}/buildkit/\w+$", text, re.M), text
    assert (cgroup.cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cgroup.memory / "memory.limit_in_bytes").read_text().strip() == str(MEMORY)
    # Two loops spinning for 2 s would use up to 4 CPU-seconds on two cores; the quota held them back.
    used = int(re.findall(r"used (\d+) ns of CPU", text)[0]) / 1e9
    print(f"\ntwo spinning loops under RACK_BUILD_CPUS={CPUS} used {used:.2f} CPU-seconds in 2 s")
    assert _throttled(cgroup) > throttled
    assert used < 2 * CPUS * 1.5


def _throttled(cgroup: EngineCgroup) -> int:
    stat = dict(line.split() for line in (cgroup.cpu / "cpu.stat").read_text().splitlines())
    return int(stat["nr_throttled"])

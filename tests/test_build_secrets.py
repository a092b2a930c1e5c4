"""Secret-named build args never become ARGs: not in the image's history, the registry or an export."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from rack import apps, exports, objects, releases
from rack.builds import record as builds
from rack.pipeline.run import run_build
from tests.helpers import tarball

TOKEN = "tok-in-history-7f3a"
PASSWORD = "pw-in-history-91c2"

pytestmark = pytest.mark.docker


def test_secret_named_args_stay_out_of_history_and_export(docker_stack, rack):
    apps.create(rack, name="secretive")
    releases.set_env(rack, "secretive", set_vars={"DB_PASSWORD": PASSWORD, "COLOR": "teal"})
    source = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": "FROM busybox\nARG API_TOKEN\nARG DB_PASSWORD\nARG COLOR\nARG GREETING\n"
        'RUN echo "token=[$API_TOKEN] pw=[$DB_PASSWORD] color=$COLOR greeting=$GREETING" > /seen\n',
    }
    url = objects.put(rack, "secretive", "tmp/src.tgz", io.BytesIO(tarball(source)))
    row = builds.create(rack, "secretive", url=url, build_args=[f"API_TOKEN={TOKEN}", "GREETING=hello"])
    row = run_build(rack, row["id"], process="tests:1")
    assert row["status"] == "complete", row["reason"]
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, "secretive", key) as fh:
        log = fh.read().decode()
    for name in ("API_TOKEN", "DB_PASSWORD"):
        assert f"Not passing build arg {name}: its name looks secret" in log
        assert f"RUN --mount=type=secret,id={name}" in log

    client = docker_stack.docker()
    image = row["images"]["web"]["image"]
    history = json.dumps(client.api.history(image))
    seen = client.containers.run(image, ["cat", "/seen"], remove=True, network_mode="none").decode()
    client.close()
    # Non-secret args pass as before; the secret-named ones arrive empty.
    assert seen == "token=[] pw=[] color=teal greeting=hello\n"
    assert "COLOR=teal" in history and "GREETING=hello" in history
    assert TOKEN not in history and PASSWORD not in history

    stream = exports.export(rack, "secretive", row["id"])
    archive = gzip.decompress(b"".join(stream))
    assert b"GREETING=hello" in archive  # the image config (its history) is in the export
    assert TOKEN.encode() not in archive and PASSWORD.encode() not in archive

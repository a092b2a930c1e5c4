"""Every input has a limit, enforced before it costs memory or disk: manifests' ${VAR}s, form fields,
environments, websocket frames, compression bombs, cut-short uploads."""

from __future__ import annotations

import gzip
import io
import os
import socket
import tarfile
import time
import tracemalloc

import pytest
import requests
import websocket

from rack.errors import BuildUserError
from rack.pipeline import manifest
from rack.pipeline.source import extract_tarball
from tests.helpers import PeakRss, SimBuild, basic

MiB = 1024 * 1024
GiB = 1024 * MiB


def test_a_var_expansion_bomb_is_refused_before_it_is_expanded():
    env = {"V": "x" * 60_000}
    text = "services:\n  web:\n    build: .\n    environment:\n" + "      - A=${V}${V}${V}${V}\n" * 1000
    assert len(text) < 40_000  # a ~30 KB manifest that would expand to 240 MB
    tracemalloc.start()
    try:
        with pytest.raises(BuildUserError, match=r"larger than 1048576 bytes once \$\{VAR\}s are filled in"):
            manifest.load(text, env)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"peak {peak} bytes"


def test_a_var_expansion_within_the_limit_still_works():
    loaded = manifest.load("services:\n  web:\n    image: ${IMG}\n", {"IMG": "busybox:1.36"})
    assert loaded.service("web").image == "busybox:1.36"


def post_raw(
    url: str, path: str, password: str, head: bytes, body_parts: list[bytes], *, reset=False
) -> bytes:
    """Send a request by hand (headers, then body parts), half-close or reset, and return the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    auth = basic(password)["Authorization"]
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n".encode() + head + b"\r\n")
    for part in body_parts:
        sock.sendall(part)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        return b""
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return answer


def test_forms_and_environments_past_their_limits_are_refused_without_reading_them(gunicorn_server, rack):
    api, auth = gunicorn_server.url, basic(gunicorn_server.password)
    assert requests.post(f"{api}/apps", data={"name": "lim"}, headers=auth).status_code == 200
    big = "K=" + "v" * (50 * MiB)
    with PeakRss(gunicorn_server.pid) as rss:
        resp = requests.post(f"{api}/apps/lim/releases", data={"env": big}, headers=auth)
        assert resp.status_code == 413
        assert "larger than the limit of 1048576" in resp.json()["error"]

        def chunks():
            for _ in range(50):
                yield b"env=K%3D" + b"v" * MiB

        chunked = requests.post(
            f"{api}/apps/lim/releases",
            data=chunks(),
            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert chunked.status_code == 413
    print(
        f"API RSS {rss.start / MiB:.0f} MiB before, {rss.peak / MiB:.0f} MiB at most during 2 x 50 MB forms"
    )
    assert rss.peak - rss.start < 20 * MiB

    one = requests.post(f"{api}/apps/lim/releases", data={"env": "K=" + "v" * 70_000}, headers=auth)
    assert one.status_code == 413
    assert one.json()["error"] == "the value of K is 70000 bytes, larger than the limit of 65536"
    many = "\n".join(f"K{i}=" + "v" * 60_000 for i in range(9))
    total = requests.post(f"{api}/apps/lim/releases", data={"env": many}, headers=auth)
    assert total.status_code == 413
    assert total.json()["error"].startswith("the environment is 540")
    fine = requests.post(f"{api}/apps/lim/releases", data={"env": "K=" + "v" * 60_000}, headers=auth)
    assert fine.status_code == 200
    assert fine.json()["env"] == "K=" + "v" * 60_000


def test_a_websocket_takes_no_messages_and_a_flood_costs_no_memory(gunicorn_server, rack, sim):
    build: SimBuild = sim()
    build.start()
    build.write("first line\n")
    url = gunicorn_server.url.replace("http", "ws") + f"/apps/logs/builds/{build.id}/logs"
    auth = basic(gunicorn_server.password)["Authorization"]
    conn = websocket.create_connection(url, header=[f"Authorization: {auth}"], timeout=10)
    assert conn.recv() == "first line\n"
    conn.ping("still there?")
    assert conn.recv_data_frame(control_frame=True)[1].opcode == websocket.ABNF.OPCODE_PONG
    sent = 0
    with PeakRss(gunicorn_server.pid) as rss:
        try:
            while sent < 50 * MiB:
                conn.send_binary(b"\x00" * MiB)
                sent += MiB
        except (OSError, websocket.WebSocketConnectionClosedException):
            pass
    assert sent < 50 * MiB  # the server stopped reading and closed long before
    frame = None
    try:
        while (frame := conn.recv_data_frame(control_frame=True)[1]).opcode != websocket.ABNF.OPCODE_CLOSE:
            pass
    except (websocket.WebSocketConnectionClosedException, OSError):
        pass
    if frame is not None and frame.opcode == websocket.ABNF.OPCODE_CLOSE:
        assert int.from_bytes(frame.data[:2], "big") == 1008  # policy violation
    conn.close()
    print(f"API RSS grew {(rss.peak - rss.start) / MiB:.1f} MiB while a client sent {sent / MiB:.0f} MiB")
    assert rss.peak - rss.start < 20 * MiB
    assert requests.get(gunicorn_server.url + "/check").status_code == 200


def bomb(size: int, *, files: int = 1) -> bytes:
    """A .tgz of `files` files of `size` zero bytes each, compressed as far as gzip goes."""
    out = io.BytesIO()
    zeros = bytes(MiB)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        for i in range(files):
            info = tarfile.TarInfo(f"zeros-{i}")
            info.size = size
            gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
            for _ in range(size // MiB):
                gz.write(zeros)
            gz.write(bytes(-size % tarfile.BLOCKSIZE))
        gz.write(bytes(2 * tarfile.BLOCKSIZE))
    return out.getvalue()


def written(root) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def test_a_gzip_bomb_stops_at_a_multiple_of_its_size(tmp_path):
    body = bomb(16 * MiB, files=64)  # 1 GiB in about 1 MB
    assert len(body) < 2 * MiB
    dest = tmp_path / "src"
    dest.mkdir()
    with pytest.raises(
        BuildUserError, match=rf"of {len(body)} bytes expands to more than 100 times its size"
    ):
        extract_tarball(
            io.BytesIO(body), dest, max_bytes=8 * GiB, max_entries=100, max_ratio=100, packed_size=len(body)
        )
    print(f"a {len(body)}-byte bomb of 1 GiB wrote {written(dest) / MiB:.0f} MiB before it was refused")
    assert 0 < written(dest) <= 100 * len(body)  # not the 8 GiB absolute limit


def test_an_archive_within_its_ratio_extracts(tmp_path):
    body = bomb(10 * MiB)  # ~10 KB that expands 1000 times, under the 64 MiB floor
    (tmp_path / "src").mkdir()
    extract_tarball(
        io.BytesIO(body),
        tmp_path / "src",
        max_bytes=GiB,
        max_entries=10,
        max_ratio=100,
        packed_size=len(body),
    )
    assert written(tmp_path / "src") == 10 * MiB


def test_cut_uploads_and_resets_answer_400_not_500(gunicorn_server, rack):
    api, password = gunicorn_server.url, gunicorn_server.password
    assert requests.post(f"{api}/apps", data={"name": "cut"}, headers=basic(password)).status_code == 200
    path = "/apps/cut/objects/tmp/src.tgz"
    chunked = b"Transfer-Encoding: chunked\r\n"
    cut = post_raw(api, path, password, chunked, [b"10000\r\n", b"x" * 1000])
    assert cut.startswith(b"HTTP/1.1 400"), cut[:200]
    assert b"cut short" in cut
    bad = post_raw(api, path, password, chunked, [b"zz\r\nxx\r\n0\r\n\r\n"])
    assert bad.startswith(b"HTTP/1.1 400"), bad[:200]
    short = post_raw(api, path, password, b"Content-Length: 5000\r\n", [b"x" * 100])
    assert short.startswith(b"HTTP/1.1 400"), short[:200]
    post_raw(api, path, password, chunked, [b"10000\r\n", b"x" * 1000], reset=True)
    time.sleep(0.5)
    assert requests.get(f"{api}/check").status_code == 200
    log = gunicorn_server.text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-2000:]
    assert requests.head(f"{api}{path}", headers=basic(password)).status_code == 404  # nothing kept

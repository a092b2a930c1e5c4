"""Build logs: `GET /apps/{app}/builds/{id}/logs`, as a websocket (Convox's protocol) or chunked text.

Options come from the query string or, as Convox's client sends them on a websocket, from headers:
`offset` (bytes of the log to skip, default 0) and `follow` (default true; `false` stops at what exists).
Both carry notices for a person, such as "waiting for a worker" (a websocket does so in Convox too), unless
the request names an offset: a client that counts bytes to resume passes `offset` (even 0) and receives
log bytes only. `X-Build-Status` on a chunked answer tells the build's status when it began.
Websocket frames are text: the log is decoded as UTF-8 (a character split across reads is kept whole;
invalid bytes become U+FFFD), so resume a websocket at a character boundary, as counting the bytes of
whole frames received always gives.
"""

from __future__ import annotations

import codecs
import functools
import logging
import select
import socket
import ssl
import threading

from flask import Blueprint, Flask, Response, request, stream_with_context
from simple_websocket import ConnectionClosed, Server
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason, FrameProtocol
from wsproto.utilities import LocalProtocolError

from rack.errors import AtCapacity, Invalid, RackError
from rack.logs import reader, tail
from rack_api.params import param, rack

log = logging.getLogger(__name__)

bp = Blueprint("logs", __name__)
FRAME = 64 * 1024
_DECODER = functools.partial(codecs.getincrementaldecoder("utf-8"), "replace")
PING_INTERVAL = 30  # seconds: a websocket client that stops answering pings is dropped
# A follower looks for a client gone every BLOCK_MS; the process's one reader of a build's stream looks at
# the build row every POLL_MS (an end its worker could not write).
POLL_MS = 2_000
BLOCK_MS = 1_000


def logs(app: str, build_id: str):
    """Stream a build's log: websocket frames on an upgrade, chunked text otherwise."""
    upgrade = request.url_rule is not None and request.url_rule.websocket  # werkzeug saw `Upgrade: websocket`
    client = _Client()
    # past the cap a plain 503 with Retry-After, even to a websocket handshake: clients retry that
    release = _FOLLOWERS.take(rack().settings.log_followers_max)
    try:
        offset_given = param("offset", header=True)
        offset = _offset(offset_given)
        follow = (param("follow", "true", header=True) or "true").lower() != "false"
    except RackError as exc:
        release()
        if upgrade:  # as Convox does: upgrade, then `ERROR: …` and the end frame (not a bad handshake)
            return _websocket_error(exc.message)
        raise
    try:
        stream = reader.read_log(
            rack(),
            app,
            build_id,
            offset=offset,
            follow=follow,
            stop=client.gone,
            poll_ms=POLL_MS,
            block_ms=BLOCK_MS,
        )
    except RackError as exc:
        release()
        if upgrade:
            return _websocket_error(exc.message)
        raise
    except BaseException:
        release()
        raise
    notices = offset_given is None
    if upgrade:
        try:
            return _websocket(stream, client, notices)
        finally:
            release()
    client.sock = _http_socket(request.environ)
    body = stream_with_context(_chunks(stream, notices))
    headers = {"X-Build-Status": stream.build["status"], "Cache-Control": "no-store"}
    headers["X-Accel-Buffering"] = "no"  # a proxy such as nginx passes each line on as it comes
    response = Response(body, mimetype="text/plain", headers=headers)
    response.call_on_close(release)
    return response


class _Followers:
    """Count this process's open log streams, refusing one past the limit with 503 and Retry-After."""

    def __init__(self) -> None:
        self.open = 0
        self._lock = threading.Lock()

    def take(self, limit: int):
        with self._lock:
            if self.open >= limit:
                raise AtCapacity(f"this API process already streams {self.open} logs; try again shortly")
            self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released, self.open = True, self.open - 1

        return release


_FOLLOWERS = _Followers()


def _offset(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise Invalid(f"offset must be a byte count of 0 or more, got {raw!r}")
    return int(raw)


class _Client:
    """Tell whether the client went away, so a follower of a quiet log does not outlive it."""

    def __init__(self) -> None:
        self.ws: Server | None = None
        self.sock: socket.socket | None = None

    def gone(self) -> bool:
        if self.ws is not None:
            return not self.ws.connected
        return self.sock is not None and _peer_closed(self.sock)


def _http_socket(environ: dict) -> socket.socket | None:
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    # Peeking needs a plain socket; behind TLS a gone client is noticed at the next write instead.
    return sock if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket) else None


def _peer_closed(sock: socket.socket) -> bool:
    """Tell whether the peer closed its end: the socket reads as EOF (a pipelined request is not EOF)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


def _chunks(stream: reader.LogStream, notices: bool):
    yield b""  # sends the headers now: a build waiting for a worker may not log anything for a while
    try:
        for chunk in stream:
            if not isinstance(chunk, reader.Notice):
                yield chunk
            elif notices:  # for a person (curl); a client that counts bytes names an offset and gets none
                yield str(chunk).encode()
    except RackError as exc:
        # Cut the response short (no last chunk): the client sees a broken stream, never a complete log.
        log.warning("log of build %s cut short: %s", stream.build["id"], exc.message)
        raise
    finally:
        stream.close()


def _upgrade() -> _SendOnly:
    environ = dict(request.environ)
    for key in ("werkzeug.socket", "gunicorn.socket"):
        if key in environ:
            # a follower may stay quiet for as long as the build does: pings, not a read timeout, keep
            # the connection honest
            environ[key].settimeout(None)
            environ[key] = _SerialSocket(environ[key])
    return _SendOnly(environ, ping_interval=PING_INTERVAL)


def _websocket_error(message: str) -> Response:
    """Upgrade, send `ERROR: <message>` and the empty binary frame that ends the stream."""
    ws = _upgrade()
    try:
        ws.send(f"ERROR: {message}\n")
        ws.send(b"")
        ws.close()
    except (ConnectionClosed, OSError):
        pass
    return _Upgraded(ws.mode)


def _websocket(stream: reader.LogStream, client: _Client, notices: bool) -> Response:
    """Upgrade, send the log as text frames, then an empty binary frame (Convox's end of stream)."""
    ws = _upgrade()
    client.ws = ws
    decoder = _DECODER()  # keeps a character split across chunks whole
    try:
        try:
            for chunk in stream:
                if isinstance(chunk, reader.Notice):
                    if notices:
                        ws.send(str(chunk))
                    continue
                _send_frames(ws, _frames(decoder, chunk))
            if text := decoder.decode(b"", final=True):
                ws.send(text)
        except RackError as exc:
            ws.send(f"ERROR: {exc.message}\n")
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("sending the log of build %s failed", stream.build["id"])
            ws.send("ERROR: internal error: the rack logged the details\n")
        ws.send(b"")
        ws.close()
    except (ConnectionClosed, OSError):
        pass  # the client left; nothing more to tell it
    finally:
        stream.close()
    return _Upgraded(ws.mode)


_FRAMER = FrameProtocol(client=False, extensions=[])  # a server's frames: unmasked, no compression


def _frames(decoder: codecs.IncrementalDecoder, chunk: bytes) -> bytes:
    """Return the text frames that send `chunk` after what `decoder` has decoded, and advance it.

    A piece shared by a build's followers is framed once per decoder state (for all but those that split a
    character across pieces, the same state): the others take those same bytes.
    """
    if not isinstance(chunk, tail.Piece):
        return _encode(decoder, chunk)
    state = decoder.getstate()
    made = chunk.memo.get(("websocket", state))
    if made is None:
        own = _DECODER()
        own.setstate(state)
        made = chunk.memo[("websocket", state)] = (_encode(own, chunk), own.getstate())
    decoder.setstate(made[1])
    return made[0]


def _encode(decoder: codecs.IncrementalDecoder, data: bytes) -> bytes:
    view = memoryview(data)
    texts = (decoder.decode(view[start : start + FRAME]) for start in range(0, len(data), FRAME))
    return b"".join(_FRAMER.send_data(text, fin=True) for text in texts if text)


def _send_frames(ws: _SendOnly, frames: bytes) -> None:
    """Send frames made beforehand, as `ws.send` would send each (the connection's own state unchanged)."""
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    if frames:
        ws.sock.send(frames)


class _SendOnly(Server):
    """A websocket that answers pings and a close, and takes no messages: one ends the connection."""

    # simple_websocket would queue whatever a client sends, without bound, for a receive() that this
    # route never calls; and it offers per-message compression, whose input could expand without bound.

    def _handle_events(self) -> bool:
        out = b""
        keep_going = True
        try:
            for event in self.ws.events():
                if isinstance(event, Request):
                    out += self.ws.send(AcceptConnection())
                elif isinstance(event, Ping):
                    out += self.ws.send(event.response())
                elif isinstance(event, Pong):
                    self.pong_received = True
                elif isinstance(event, CloseConnection):
                    out += self.ws.send(event.response())
                    self.close_reason, self.close_message = event.code, event.reason
                    keep_going = False
                    break
                elif isinstance(event, (TextMessage, BytesMessage)):
                    reason = "this websocket sends the log and takes no messages"
                    out += self.ws.send(CloseConnection(CloseReason.POLICY_VIOLATION, reason))
                    self.close_reason, self.close_message = CloseReason.POLICY_VIOLATION, reason
                    keep_going = False
                    break
        except LocalProtocolError:
            keep_going = False
        if not keep_going:
            self.connected = False
            self.event.set()
        if out:
            self.sock.send(out)
        return keep_going


class _SerialSocket:
    """A socket whose sends go out whole and one at a time."""

    # simple_websocket sends from two threads (ours: frames; its reader: pongs, close replies). A blocking
    # send() may return before it wrote everything, so two senders could interleave frames' bytes.

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _Upgraded(Response):
    """The response after a websocket ended: the connection is spent, so tell the server to drop it."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ, start_response):
        if self.mode == "gunicorn":
            raise StopIteration()  # gunicorn's signal to close the connection without writing a response
        return super().__call__(environ, start_response)


PATH = "/apps/<app>/builds/<build_id>/logs"
bp.add_url_rule(PATH, view_func=logs, methods=["GET"])
# werkzeug matches an upgrade request only to a websocket rule: the same view serves both.
bp.add_url_rule(PATH, endpoint="logs_websocket", view_func=logs, methods=["GET"], websocket=True)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

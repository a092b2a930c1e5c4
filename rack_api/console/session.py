"""The console's session: a signed cookie, sign in and out, and a CSRF token checked on every form."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from urllib.parse import urlparse

from flask import Flask, abort, request, session
from flask.sessions import SecureCookieSessionInterface

from rack import logins
from rack_api.params import rack

COOKIE = "rack_console"
LIFETIME = timedelta(hours=12)
MAX_NEXT = 2048


class ConsoleSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure when the request came over TLS (directly or via a proxy)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def init_app(app: Flask) -> None:
    # Keyed by the rack password: changing the password signs every console session out.
    password = rack_password(app)
    app.secret_key = hmac.new(password.encode(), b"rack console session", hashlib.sha256).hexdigest()
    app.session_interface = ConsoleSessions()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=LIFETIME,
    )


def rack_password(app: Flask) -> str:
    return app.extensions["rack"].settings.password


def signed_in() -> bool:
    """A signed-in session that has not signed out (a copy of its cookie is refused after sign-out)."""
    sid = session.get("sid")
    if session.get("signed_in") is not True or not isinstance(sid, str):
        return False
    return not logins.session_ended(rack(), sid)


def csrf_token() -> str:
    """The session's CSRF token, made on first use (before sign-in too: the sign-in form carries one)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Refuse a form whose csrf_token is missing or is not this session's (400)."""
    given = request.form.get("csrf_token", "")
    token = session.get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(given.encode(), token.encode()):
        abort(400, "the form's csrf_token is missing or out of date: reload the page and try again")


def sign_in(password: str) -> bool:
    """Start a signed-in session when the password is the rack's (wrong guesses are limited per address)."""
    if not logins.check_password(rack(), client=request.remote_addr or "", password=password):
        return False
    session.clear()  # a new session: nothing from before sign-in carries over (fixation)
    session.permanent = True
    session["signed_in"] = True
    session["sid"] = secrets.token_urlsafe(24)
    csrf_token()
    return True


def sign_out() -> None:
    """End the session here and for every copy of its cookie, then clear it."""
    sid = session.get("sid")
    if isinstance(sid, str):
        logins.end_session(rack(), sid, lifetime=int(LIFETIME.total_seconds()))
    session.clear()


def reads_logs() -> bool:
    """Let a signed-in console page read a log: same origin only (a websocket is not bound by CORS)."""
    return signed_in() and same_origin()


def same_origin() -> bool:
    """Tell whether a browser request comes from this rack's own pages (the Origin, when sent, is ours)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlparse(origin).netloc == request.host


def local_next(raw: str | None) -> str:
    """Where to go after sign-in: a console path only, never another site."""
    if raw and len(raw) <= MAX_NEXT and raw.startswith("/console") and "\\" not in raw:
        parsed = urlparse(raw)
        if not parsed.scheme and not parsed.netloc:
            return raw
    return "/console"

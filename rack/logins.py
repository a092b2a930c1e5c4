"""People signing in with the rack password (the web console), with a limit on wrong guesses per client,
and the sessions they signed out of (refused from then on, wherever a copy of the cookie is)."""

from __future__ import annotations

import hmac

import redis

from rack.context import Rack
from rack.errors import TooMany, Unavailable

MAX_FAILURES = 10  # wrong passwords per client per window; then every attempt is refused until it ends
WINDOW = 600
MAX_PASSWORD = 1024
MAX_CLIENT = 100


def check_password(rack: Rack, *, client: str, password: str) -> bool:
    """Tell whether `password` is the rack's (in constant time), counting wrong ones per client in Redis."""
    key = f"rack:signin-failures:{client[:MAX_CLIENT]}"
    try:
        reads = rack.redis.pipeline()
        reads.get(key)
        reads.ttl(key)
        failures, ttl = reads.execute()
        if int(failures or 0) >= MAX_FAILURES:
            wait = max(1, int(ttl))
            raise TooMany(f"too many wrong passwords from this address: try again in {wait} s")
        given = password.encode()[: MAX_PASSWORD + 1]
        if len(given) <= MAX_PASSWORD and hmac.compare_digest(given, rack.settings.password.encode()):
            return True
        pipe = rack.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW, nx=True)
        pipe.execute()
        return False
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable("the sign-in store (Redis) is unreachable; try again shortly") from exc


def _ended_key(session_id: str) -> str:
    return f"rack:signed-out:{session_id[:MAX_CLIENT]}"


def end_session(rack: Rack, session_id: str, *, lifetime: int) -> None:
    """Remember that a session signed out, for as long as its cookie could still be presented."""
    try:
        rack.redis.set(_ended_key(session_id), b"1", ex=max(1, lifetime))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable("the sign-in store (Redis) is unreachable: sign out again shortly") from exc


def session_ended(rack: Rack, session_id: str) -> bool:
    """Tell whether a session signed out (so its cookie opens nothing, even copied elsewhere)."""
    try:
        return bool(rack.redis.exists(_ended_key(session_id)))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable("the sign-in store (Redis) is unreachable; try again shortly") from exc

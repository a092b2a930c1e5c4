"""The database's transaction scope on the real Postgres: a connection whose transaction could not be
ended (its ROLLBACK interrupted, as a killed greenlet or a signal interrupts it) is never pooled, so the
next user never starts inside someone else's open transaction."""

from __future__ import annotations

import pytest

import rack.db
from rack.db import Database, fetchone


def test_a_connection_left_inside_its_transaction_is_dropped_not_pooled(stack, monkeypatch):
    db = Database(stack.env["RACK_DATABASE_URL"], maxconn=1)  # one connection: the next user gets it
    try:
        with db.transaction() as conn:
            first = fetchone(conn, "SELECT pg_backend_pid() AS pid")
        assert first is not None
        ended = rack.db._end

        def rollback_interrupted(conn, statement: str) -> None:
            if statement == "ROLLBACK":
                raise KeyboardInterrupt("interrupted while rolling back")
            ended(conn, statement)

        monkeypatch.setattr(rack.db, "_end", rollback_interrupted)
        with pytest.raises(KeyboardInterrupt):
            with db.transaction() as conn:
                assert fetchone(conn, "SELECT pg_backend_pid() AS pid") == first  # the pooled one
                fetchone(conn, "SELECT set_config('rack.left_open', 'yes', true) AS v")  # transaction-local
                raise ValueError("the caller's own failure")
        monkeypatch.undo()

        with db.transaction() as conn:
            row = fetchone(
                conn, "SELECT pg_backend_pid() AS pid, current_setting('rack.left_open', true) AS v"
            )
        assert row is not None
        assert row["pid"] != first["pid"]  # a new connection, not the one left in its transaction
        assert not row["v"]  # and nothing of the interrupted transaction is seen
    finally:
        db.close()

"""Postgres access: a small connection pool and a transaction scope that owns the commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras
import psycopg2.pool

from rack.errors import Unavailable

POOL_WAIT = 30.0  # seconds a transaction waits for a free connection


class _LazyPool(psycopg2.pool.ThreadedConnectionPool):
    """Open connections only when needed, and keep every one handed back for reuse.

    psycopg2 closes returned connections beyond `minconn`, and opens `minconn` of them up front.
    """

    def __init__(self, maxconn: int, *args, **kwargs) -> None:
        super().__init__(0, maxconn, *args, **kwargs)
        self.minconn = maxconn


class Database:
    """Hand out connections from a lazily created pool; never connect at import time."""

    def __init__(self, url: str, *, maxconn: int = 20) -> None:
        self.url = url
        self.maxconn = maxconn
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()
        # psycopg2's pool raises when all its connections are out; wait for one instead (hundreds of
        # greenlets may want one at once), but not for ever
        self._free = threading.BoundedSemaphore(maxconn)

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = _LazyPool(self.maxconn, self.url, connect_timeout=5)
            return self._pool

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.connection]:
        """Yield a connection in a transaction: commit on success, roll back on error."""
        if not self._free.acquire(timeout=POOL_WAIT):
            raise Unavailable(f"all {self.maxconn} database connections stayed busy for {POOL_WAIT}s")
        try:
            try:
                pool = self._get_pool()
                conn = self._live_connection(pool)
            except psycopg2.OperationalError as exc:
                raise Unavailable(f"the database is unreachable: {_first_line(exc)}") from exc
            broken = False
            try:
                try:
                    yield conn
                except BaseException:
                    _end(conn, "ROLLBACK")
                    raise
                _end(conn, "COMMIT")
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                broken = True
                raise Unavailable(f"the database is unreachable: {_first_line(exc)}") from exc
            finally:
                # a transaction left open (its end interrupted) would be the next user's: drop the connection
                pool.putconn(conn, close=broken or conn.closed != 0 or not _idle(conn))
        finally:
            self._free.release()

    def _live_connection(self, pool):
        """Take a pooled connection that answers, in a new transaction; drop those a database restart broke.

        The transaction is begun and ended by statements of our own (the connection in autocommit mode),
        so `BEGIN` both opens it and proves the connection alive: one round trip, where psycopg2's own
        transactions would take three more (a `SELECT 1` to check, its `ROLLBACK`, then `BEGIN`). A
        request waits for each round trip in turn, behind every greenlet the hub runs meanwhile.
        """
        for _ in range(self.maxconn + 1):
            conn = pool.getconn()
            try:
                if not conn.autocommit:
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("BEGIN")
                return conn
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                pool.putconn(conn, close=True)
            except BaseException:  # interrupted (a greenlet killed): the connection goes, not its slot
                pool.putconn(conn, close=True)
                raise
        raise psycopg2.OperationalError("no working database connection")

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None


def _end(conn, statement: str) -> None:
    """End the connection's transaction with COMMIT or ROLLBACK (a closed connection has none to end)."""
    if statement == "ROLLBACK" and conn.closed:
        return
    with conn.cursor() as cur:
        cur.execute(statement)


def _idle(conn) -> bool:
    """Tell whether the connection is in no transaction (asked of libpq: no round trip)."""
    return conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def fetchone(conn, sql: str, params: dict | tuple = ()) -> dict | None:
    """Run a query and return its first row as a dict, or None."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        return dict(row) if row is not None else None


def returning(conn, sql: str, params: dict | tuple = ()) -> dict:
    """Run an INSERT or UPDATE ... RETURNING that always yields a row, and return that row as a dict."""
    row = fetchone(conn, sql, params)
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row


def fetchall(conn, sql: str, params: dict | tuple = ()) -> list[dict]:
    """Run a query and return every row as a dict."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        return [dict(r) for r in cur.fetchall()]


def execute(conn, sql: str, params: dict | tuple = ()) -> int:
    """Run a statement and return the number of rows it touched."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.rowcount

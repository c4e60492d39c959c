"""PostgreSQL connections for PgStore: psycopg 3, errors as StorageError, transactions.

Every connection is in autocommit mode: a read outside `transaction()` is a statement of its
own; `transaction()` (psycopg's `Connection.transaction`, a savepoint when nested) makes the
writes of one Store method one transaction. Where a method decides from what it read (a
channel's subscription limit, a burst's plan), it takes `lock(key)`: a transaction-level
advisory lock on that key, so two processes deciding about the same thing take turns, as
SQLite's single write lock makes them do, while writers about different things run side by
side. A write waits at most the busy timeout for a lock (lock_timeout), then StorageBusy.
"""

from __future__ import annotations

import logging
import select
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row

from bot.errors import StorageBusy, StorageError

log = logging.getLogger(__name__)

Params = Sequence[Any] | dict[str, Any] | None

# An advisory lock's number for a name (one %s parameter): advisory locks are the whole
# server's, so the name is taken with the schema the bot's tables are in (the first of
# search_path): two bots (or two test runs) in two schemas of one database never share one.
LOCK_KEY = "hashtextextended(current_schema() || ' ' || %s, 0)"


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://?"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


def is_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def storage_error(exc: BaseException, where: str) -> StorageError:
    """The one-line StorageError for a failure of PostgreSQL (or the connection) at `where`."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled, pg_errors.DeadlockDetected,
                        pg_errors.SerializationFailure)):
        return StorageBusy(f"the database {where} is busy (another papers-bot process is writing); try again", where)
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorageError(f"the database {where} refused papers-bot ({text}): grant the user of [storage] url "
                            "the rights to create and write tables in its schema", where)
    if isinstance(exc, pg_errors.DiskFull):
        return StorageError(f"the disk of the PostgreSQL server {where} is full: free some space", where)
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(f"cannot use the PostgreSQL server {where} ({text}): check that it runs and that "
                            "[storage] url names it, its user and database", where)
    return StorageError(f"the database {where} failed: {text}", where)


def connect(url: str, *, busy_timeout: float) -> psycopg.Connection:
    """A new autocommit connection; StorageError if the server cannot be reached."""
    where = redacted(url)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(busy_timeout)),
                               row_factory=tuple_row)
        # A write waits this long for another's lock, then fails (StorageBusy), as SQLite's busy timeout does.
        conn.execute(f"SET lock_timeout = {int(busy_timeout * 1000)}")
        conn.execute("SET TIME ZONE 'UTC'")
    except psycopg.ProgrammingError as exc:  # libpq cannot read the URL; its message quotes it, password and all
        text = str(exc).strip().splitlines()[0].replace(url, where) if str(exc).strip() else type(exc).__name__
        raise StorageError(f"[storage] url is not a connection URL PostgreSQL can read ({text}): write it as "
                           "postgresql://USER@HOST:PORT/DATABASE", where) from None
    except psycopg.Error as exc:
        raise storage_error(exc, where) from None
    return conn


class Database:
    """One connection and the few things the mixins do with it: execute, transaction, lock."""

    def __init__(self, url: str, *, busy_timeout: float, session: Sequence[str] = (), reconnect: bool = False):
        self.url = url
        self.where = redacted(url)
        self.busy_timeout = busy_timeout
        self.session = list(session)  # what every new connection runs first (SET ...)
        # Off for a connection whose session holds what a new one would not (roles.py's leases):
        # that one fails, rather than carry on without its locks.
        self.reconnect = reconnect
        self.on_reconnect: list[Callable[[], None]] = []  # called after the connection was replaced
        self._depth = 0  # transaction() blocks open
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection:
        conn = connect(self.url, busy_timeout=self.busy_timeout)
        try:
            for statement in self.session:
                conn.execute(statement)
        except psycopg.Error as exc:
            conn.close()
            raise storage_error(exc, self.where) from None
        return conn

    def ready(self) -> None:
        """Outside a transaction: replace a connection the server closed (StorageError if no
        new one can be made). Cheap: a look at the socket, a round trip only if the server
        sent something while the connection was idle (the notice of its end, say)."""
        if not self.reconnect or self._depth or not (self.conn.closed or self._went_away()):
            return
        old, self.conn = self.conn, self._connect()
        old.close()
        log.warning("the connection to the PostgreSQL server %s was closed; using a new one", self.where)
        for callback in self.on_reconnect:
            callback()

    def _went_away(self) -> bool:
        try:
            if not select.select([self.conn.fileno()], [], [], 0)[0]:
                return False  # nothing came while idle: as it was
            self.conn.execute("SELECT 1")  # what came (the server's last words, or a notification)
        except (OSError, ValueError, psycopg.OperationalError):
            return True
        return False

    def execute(self, sql: str, params: Params = None) -> psycopg.Cursor:
        self.ready()
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any] | dict[str, Any]]) -> None:
        self.ready()
        with self.conn.cursor() as cur:
            cur.executemany(sql, rows)

    def one(self, sql: str, params: Params = None) -> tuple | None:
        row: tuple | None = self.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Params = None) -> list[tuple]:
        rows: list[tuple] = self.execute(sql, params).fetchall()
        return rows

    def scalar(self, sql: str, params: Params = None) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """All of it or nothing; a savepoint when nested."""
        self.ready()
        self._depth += 1
        try:
            with self.conn.transaction():
                yield self
        finally:
            self._depth -= 1

    def lock(self, key: str) -> None:
        """Inside a transaction: wait (at most the busy timeout) for the advisory lock on `key`,
        held until the transaction ends. Two transactions locking the same key take turns."""
        self.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})", [key])

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.conn.close()


class ThreadConnections:
    """A connection per thread, for the reads the bot makes from worker threads ("any thread"
    in storage/contract.py): psycopg connections may be shared, but not a transaction."""

    def __init__(self, url: str, *, busy_timeout: float):
        self.url = url
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[Database] = []
        self._guard = threading.Lock()
        self._closed = False  # then get() fails: a closed connection is not reopened, nor a new one kept

    def get(self) -> Database:
        if self._closed:  # a worker thread's write after the store closed (a sweep left running)
            raise StorageError(f"the database {redacted(self.url)} is closed", redacted(self.url))
        db = getattr(self._local, "db", None)
        if db is not None:
            db.ready()
        else:
            db = Database(self.url, busy_timeout=self.busy_timeout, reconnect=True)
            self._local.db = db
            with self._guard:
                if self._closed:
                    db.close()
                    raise StorageError(f"the database {redacted(self.url)} is closed", redacted(self.url))
                self._all.append(db)
        return db

    def close(self) -> None:
        with self._guard:
            self._closed = True
            for db in self._all:
                db.close()
            self._all.clear()


def utc(moment: datetime) -> datetime:
    """Aware UTC to the second, as the contract stores times."""
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def from_db(moment: datetime | None) -> datetime | None:
    """A timestamptz read back: aware UTC."""
    return None if moment is None else moment.astimezone(timezone.utc)
